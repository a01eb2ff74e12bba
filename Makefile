# Two commands do everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-avx2 test-deps docs setup-jetson jetson-venv lint lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,docs]"  # docs: tests/test_docs.py builds the site
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

# The suite as on an AVX2-only x86 CPU (no VNNI / AMX), on any x86 CPU: tests/avx2_only/sitecustomize.py
# hides the int8 dot-product flags from vlaedge, so it quantizes with 7-bit weights as it does there.
test-avx2: setup test-deps
	PYTHONPATH=$(CURDIR)/tests/avx2_only $(BIN)/pytest

# The documentation site (docs/, mkdocs.yml): the generated reference pages rewritten from the code, then
# built in strict mode (a broken link or a missing page fails) into site/.
docs: setup
	$(BIN)/python -m vlaedge.docs_reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# System packages some tests use: openssh-server (tests/test_remote.py starts its own sshd on 127.0.0.1),
# chromium (tests/test_report_browser.py opens report.html in headless Chromium), and gcc + binutils
# (tests/test_trt_api.py compiles stub libraries for the real TensorRT bindings, fetched here once into
# .cache/trt-bindings). Installed only as root with apt-get; otherwise those tests skip with the reason.
test-deps:
	@if command -v gcc >/dev/null 2>&1 && command -v readelf >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends gcc libc6-dev binutils >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends gcc libc6-dev binutils >/dev/null 2>&1; } || \
	  echo "test-deps: could not install gcc/binutils: tests/test_trt_api.py will skip its bindings checks"; \
	else echo "test-deps: not root or no apt-get: no gcc, tests/test_trt_api.py will skip its bindings checks"; fi
	@if [ -x $(BIN)/python ]; then for v in 10.3 10.13; do \
	  $(BIN)/python tests/trt_api/bindings.py --install $$v || echo "test-deps: tests/test_trt_api.py will skip $$v"; \
	done; fi
	@if [ -x /usr/sbin/sshd ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1; } || \
	  echo "test-deps: could not install openssh-server: tests/test_remote.py will skip"; \
	else echo "test-deps: not root or no apt-get: openssh-server not installed, tests/test_remote.py will skip"; fi
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } || \
	  echo "test-deps: could not install chromium: tests/test_report_browser.py will skip"; \
	else echo "test-deps: not root or no apt-get: chromium not installed, tests/test_report_browser.py will skip"; fi

# On a Jetson (JetPack 6.x): a venv that keeps JetPack's CUDA torch (NVIDIA's wheel) and TensorRT (apt's
# python3-libnvinfer), seen through --system-site-packages. pip gets torch pinned to the installed version
# (jetpack-pins.txt), so it can never replace it with the registry's torch (no CUDA on aarch64); the repo's
# constraints.txt (an x86 Python 3.11 lock) is not used. Then: JETSON_VENV/bin/vlaedge device-check RUN_DIR.
JETSON_VENV ?= .venv-jetson
JETSON_PINS = $(JETSON_VENV)/jetpack-pins.txt
JETSON_NEEDS = $(PYTHON) cannot import torch and tensorrt: install JetPack's (sudo apt install nvidia-jetpack) \
  and NVIDIA's torch wheel for it first

setup-jetson: jetson-venv
	$(JETSON_VENV)/bin/pip install --quiet -c $(JETSON_PINS) -e ".[dev]"
	$(JETSON_VENV)/bin/python -c "import torch, tensorrt; print('torch', torch.__version__, 'CUDA', \
	  torch.cuda.is_available(), 'TensorRT', tensorrt.__version__); assert torch.cuda.is_available()"

jetson-venv:
	@$(PYTHON) -c "import torch, tensorrt" 2>/dev/null || { echo "setup-jetson: $(JETSON_NEEDS)" >&2; exit 2; }
	$(PYTHON) -m venv --system-site-packages $(JETSON_VENV)
	$(JETSON_VENV)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(JETSON_PINS)
	@echo "setup-jetson: pinned $$(cat $(JETSON_PINS)) (JetPack's) in $(JETSON_PINS)"

lint: setup
	$(BIN)/ruff check vlaedge tests benchmarks

lock: setup
	{ head -2 constraints.txt; $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache site
