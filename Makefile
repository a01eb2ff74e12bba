# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-deps lint lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# The main job on the built-in default: its closed-loop success, then compress -> verify -> profile -> gate
# with the CPU INT8 recipe; the reports land in runs/demo/ (report.md, report.html, junit.xml).
demo: setup
	$(BIN)/vlaedge info
	$(BIN)/vlaedge rollout --episodes 100
	$(BIN)/vlaedge compress --recipe cpu-int8 --out runs/demo --force
	@echo "reports: runs/demo/report.md runs/demo/report.html runs/demo/junit.xml"

test: setup test-deps
	$(BIN)/pytest

# System packages some tests use: openssh-server (tests/test_remote.py starts its own sshd on 127.0.0.1).
# Installed only as root with apt-get; otherwise that test skips with the reason.
test-deps:
	@if [ -x /usr/sbin/sshd ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1; } || \
	  echo "test-deps: could not install openssh-server: tests/test_remote.py will skip"; \
	else echo "test-deps: not root or no apt-get: openssh-server not installed, tests/test_remote.py will skip"; fi

lint: setup
	$(BIN)/ruff check vlaedge tests benchmarks

lock: setup
	$(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
