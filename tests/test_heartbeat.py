"""progress.heartbeat: a long single call (torch.onnx.export, ONNX Runtime's quantizer) says it started, that
it is still running every few seconds, and how long it took; a short call and --quiet print nothing."""

from __future__ import annotations

import time

import pytest

from vlaedge import progress


@pytest.fixture
def err_log(monkeypatch, capsys):
    """What the heartbeat printed on stderr (nothing ever goes to stdout)."""
    monkeypatch.setattr(progress, "quiet", False)
    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.02)

    def printed() -> str:
        out, err = capsys.readouterr()
        assert out == ""
        return err

    return printed


def test_heartbeat_prints_while_a_slow_call_runs(err_log):
    with progress.heartbeat("export: tracing the model", every=0.05):
        time.sleep(0.4)  # the slow call: no output of its own
    lines = err_log().splitlines()
    assert lines[0] == "export: tracing the model ..."
    still = [ln for ln in lines if "still running" in ln]
    assert len(still) >= 3, lines
    assert all(ln.startswith("export: tracing the model: still running, ") for ln in still)
    assert lines[-1].startswith("export: tracing the model: done in ")
    assert len(lines) == len(still) + 2


def test_heartbeat_stops_with_the_call_and_says_it_failed(err_log):
    with pytest.raises(KeyboardInterrupt), progress.heartbeat("quantize: calibration", every=0.05):
        time.sleep(0.15)
        raise KeyboardInterrupt
    assert err_log().splitlines()[-1].startswith("quantize: calibration: failed after ")
    time.sleep(0.2)  # the thread is gone: nothing more arrives
    assert err_log() == ""


def test_short_call_and_quiet_print_nothing(err_log, monkeypatch):
    with progress.heartbeat("export: checking the graph", every=0.01):
        pass
    monkeypatch.setattr(progress, "quiet", True)
    with progress.heartbeat("export: tracing the model", every=0.01):
        time.sleep(0.1)
    assert err_log() == ""
