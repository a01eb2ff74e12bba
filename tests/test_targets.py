"""Target profiles: capability fields agree with each other and with the hardware facts (FACTS.md)."""

from __future__ import annotations

import re

import pytest

from vlaedge.errors import VlaedgeError
from vlaedge.targets import PRECISIONS, TARGETS, format_targets, get_target

ORIN = [n for n, t in TARGETS.items() if t.kind == "jetson" and t.gpu_arch == "Ampere"]
GPUS = [n for n, t in TARGETS.items() if t.runtime == "tensorrt"]


def test_the_expected_targets_exist():
    assert list(TARGETS) == [
        "orin-nano-4gb", "orin-nano-4gb-super", "orin-nano-8gb", "orin-nano-8gb-super", "orin-nx-8gb",
        "orin-nx-8gb-super", "orin-nx-16gb", "orin-nx-16gb-super", "agx-orin-32gb", "agx-orin-64gb",
        "agx-orin-64gb-50w", "agx-orin-64gb-30w", "agx-orin-64gb-15w",
        "agx-thor", "thor-t4000", "x86-ampere", "x86-ada", "x86-hopper", "cpu"]
    assert len(ORIN) == 13


@pytest.mark.parametrize("name", list(TARGETS))
def test_capability_fields_are_consistent(name):
    t = TARGETS[name]
    assert t.name == name
    assert t.kind in ("jetson", "x86-gpu", "cpu")
    assert t.runtime == ("onnxruntime" if t.kind == "cpu" else "tensorrt")
    assert {"fp32", "int8"} <= t.precisions <= set(PRECISIONS)
    assert t.weight_only <= {"int8", "int4"}
    assert t.source and t.confidence and t.description
    assert (t.fp8_tflops is not None) == ("fp8" in t.precisions)
    assert (t.fp4_tflops is not None) == ("fp4" in t.precisions)
    if t.kind == "cpu":
        assert t.compute_capability is None and t.gpu_arch is None
        assert not t.sparsity_2_4 and t.dla_count == 0 and not t.weight_only
        assert t.memory_gb is None and t.fp16_tflops is None and t.int8_tops is None
        return
    assert re.fullmatch(r"\d+\.\d", t.compute_capability)
    assert t.sparsity_2_4 and t.weight_only == {"int8", "int4"}
    assert {"fp16", "bf16"} <= t.precisions
    assert t.memory_gb > 0 and t.memory_bw_gbs > 0
    assert 0 < t.fp32_tflops < t.fp16_tflops <= t.int8_tops  # dense tensor peaks above CUDA-core FP32
    if t.fp8_tflops is not None:
        assert t.fp8_tflops == pytest.approx(2 * t.fp16_tflops, rel=0.02)
    assert (t.dla_int8_tops > 0) == (t.dla_count > 0)
    assert t.power_modes
    assert (t.min_jetpack is not None) == (t.kind == "jetson")


@pytest.mark.parametrize("name", ORIN)
def test_orin_is_ampere_sm87_without_fp8_or_fp4(name):
    t = TARGETS[name]
    assert t.compute_capability == "8.7" and t.label == "Ampere, sm_87"
    assert "fp8" not in t.precisions and "fp4" not in t.precisions
    assert t.fp8_tflops is None and t.fp4_tflops is None


def test_fp8_and_fp4_where_the_hardware_has_them():
    with_fp8 = {n for n, t in TARGETS.items() if "fp8" in t.precisions}
    with_fp4 = {n for n, t in TARGETS.items() if "fp4" in t.precisions}
    assert with_fp8 == {"agx-thor", "thor-t4000", "x86-ada", "x86-hopper"}
    assert with_fp4 == {"agx-thor", "thor-t4000"}
    assert TARGETS["agx-thor"].label == "Blackwell, sm_110"


def test_dla_counts():
    dla = {n: t.dla_count for n, t in TARGETS.items() if t.dla_count}
    assert dla == {"orin-nx-8gb": 1, "orin-nx-8gb-super": 1, "orin-nx-16gb": 2, "orin-nx-16gb-super": 2,
                   "agx-orin-32gb": 2, "agx-orin-64gb": 2, "agx-orin-64gb-50w": 2, "agx-orin-64gb-30w": 2,
                   "agx-orin-64gb-15w": 2}


def test_super_mode_raises_clocks_not_memory():
    for base in ("orin-nano-4gb", "orin-nano-8gb", "orin-nx-8gb", "orin-nx-16gb"):
        t, s = TARGETS[base], TARGETS[f"{base}-super"]
        assert s.memory_gb == t.memory_gb and s.dla_count == t.dla_count
        assert s.int8_tops > t.int8_tops and s.min_jetpack == "6.2"


def test_agx_orin_power_modes_scale_gpu_peaks_by_the_published_tops():
    maxn = TARGETS["agx-orin-64gb"]
    for mode, gpu_sparse_tops in (("50w", 109), ("30w", 41), ("15w", 14)):  # DLA README, MAXN = 171
        t = TARGETS[f"agx-orin-64gb-{mode}"]
        assert t.int8_tops == pytest.approx(maxn.int8_tops * gpu_sparse_tops / 171, rel=0.01)
        assert t.fp16_tflops == pytest.approx(t.int8_tops / 2, rel=0.01)
        assert t.memory_gb == maxn.memory_gb and t.precisions == maxn.precisions
    assert TARGETS["agx-orin-64gb-30w"].memory_bw_gbs == maxn.memory_bw_gbs  # EMC not capped in 30W
    assert TARGETS["agx-orin-64gb-15w"].memory_bw_gbs == pytest.approx(204.8 * 2133 / 3199, abs=0.1)


@pytest.mark.parametrize("name", GPUS)
def test_estimate_efficiencies_are_fractions_with_a_source(name):
    e = TARGETS[name].efficiency
    assert e is not None and e.source
    for p in ("fp16", "int8", "fp8", "fp4"):
        assert 0 < e.compute(p) <= 1
    assert 0 < e.memory <= 1 and e.kernel_floor_us >= 0 and e.fixed_ms >= 0
    assert (e.fp8 is not None) == (TARGETS[name].gpu_arch == "Blackwell")
    assert TARGETS["cpu"].efficiency is None


def test_get_target_suggests_the_closest_name():
    assert get_target("agx-orin-64gb").memory_gb == 64
    with pytest.raises(VlaedgeError) as e:
        get_target("agx-orin-64")
    assert e.value.message.startswith("target: unknown target 'agx-orin-64'")
    assert "x86-hopper" in e.value.message  # the known names are listed
    assert e.value.hint == "did you mean agx-orin-64gb?"  # not its power modes too
    with pytest.raises(VlaedgeError) as e:
        get_target("agx-orin-64gb-30")
    assert e.value.hint.startswith("did you mean agx-orin-64gb-30w")
    with pytest.raises(VlaedgeError) as e:
        get_target("orin-nano-8gb-supr")
    assert "orin-nano-8gb-super" in e.value.hint


def test_format_targets_rows():
    rows = format_targets()
    assert [r["name"] for r in rows] == list(TARGETS)
    assert all(isinstance(v, str) for r in rows for v in r.values())
    orin = rows[list(TARGETS).index("agx-orin-64gb")]
    assert orin["precisions"] == "fp32 fp16 bf16 int8" and orin["DLA"] == "2" and orin["fp8 TFLOPS"] == "-"
    assert orin["2:4"] == "yes" and orin["memory GB"] == "64" and orin["BW GB/s"] == "204.8"
    assert rows[-1]["runtime"] == "onnxruntime" and rows[-1]["2:4"] == "no"
