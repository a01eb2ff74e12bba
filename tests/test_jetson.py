"""Jetson telemetry parsers on real-format tegrastats / nvpmodel / jetson_clocks output (JetPack 5/6)."""

from __future__ import annotations

from vlaedge.deploy.jetson import (
    PowerMonitor,
    is_jetson,
    parse_jetson_clocks_show,
    parse_nvpmodel,
    parse_tegrastats_line,
    read_device_state,
    summarize_power,
    total_power_mw,
)

# AGX Orin, JetPack 6 (two GPCs in GR3D_FREQ, no VDD_IN rail: the total is the sum)
AGX = (
    "08-04-2024 10:10:10 RAM 2448/62841MB (lfb 14624x4MB) SWAP 0/31421MB (cached 0MB) "
    "CPU [0%@729,1%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 12%@[1300,1300] VIC_FREQ 729 APE 174 CV0@-256C CPU@47.843C "
    "Tboard@37C SOC2@43.843C Tdiode@39.25C SOC0@44.312C CV1@-256C GPU@-256C tj@47.843C SOC1@43.531C "
    "CV2@-256C VDD_GPU_SOC 3178mW/3178mW VDD_CPU_CV 794mW/794mW VIN_SYS_5V0 3223mW/3223mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 302mW/302mW NC 0mW/0mW"
)
# Orin Nano, JetPack 6 (VDD_IN is the module input: it is the total)
NANO = (
    "RAM 2136/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@1510,0%@1510,0%@1510,0%@1510,"
    "off,off] EMC_FREQ 3%@3199 GR3D_FREQ 45%@[1020] NVDEC off NVJPG off VIC off OFA off APE 200 "
    "cpu@48.5C soc2@47.5C soc0@47.968C gpu@48.343C tj@48.5C soc1@48.187C VDD_IN 7868mW/5120mW "
    "VDD_CPU_GPU_CV 2654mW/1500mW VDD_SOC 1432mW/1400mW"
)
# Xavier NX, JetPack 4 (no mW unit, single GPU clock)
XAVIER = (
    "RAM 1622/7772MB (lfb 1x4MB) SWAP 0/3886MB (cached 0MB) CPU [2%@1190,1%@1190] EMC_FREQ 0%@1600 "
    "GR3D_FREQ 0%@114 APE 150 MTS fg 0% bg 0% AO@36C GPU@35.5C PMIC@100C AUX@35C CPU@36.5C "
    "thermal@35.85C VDD_IN 3789/3789 VDD_CPU_GPU_CV 434/434 VDD_SOC 1118/1118"
)


def test_tegrastats_agx_orin():
    s = parse_tegrastats_line(AGX)
    assert s["rails_mw"] == {
        "VDD_GPU_SOC": 3178,
        "VDD_CPU_CV": 794,
        "VIN_SYS_5V0": 3223,
        "VDDQ_VDD2_1V8AO": 302,
    }
    assert s["gpu_util"] == 12 and s["gpu_freq_mhz"] == 1300
    assert s["emc_util"] == 0 and s["emc_freq_mhz"] == 2133
    assert (s["ram_used_mb"], s["ram_total_mb"]) == (2448, 62841)
    assert total_power_mw(s["rails_mw"]) == 3178 + 794 + 3223 + 302


def test_tegrastats_orin_nano_takes_the_instant_value_and_vdd_in_as_total():
    s = parse_tegrastats_line(NANO)
    assert s["rails_mw"] == {"VDD_IN": 7868, "VDD_CPU_GPU_CV": 2654, "VDD_SOC": 1432}
    assert s["gpu_freq_mhz"] == 1020 and s["emc_freq_mhz"] == 3199
    assert total_power_mw(s["rails_mw"]) == 7868


def test_tegrastats_jetpack4_format():
    s = parse_tegrastats_line(XAVIER)
    assert s["rails_mw"] == {"VDD_IN": 3789, "VDD_CPU_GPU_CV": 434, "VDD_SOC": 1118}
    assert s["gpu_freq_mhz"] == 114
    assert "RAM" not in s["rails_mw"] and "SWAP" not in s["rails_mw"]


def test_summarize_power_mean_and_peak():
    samples = [
        parse_tegrastats_line(NANO)["rails_mw"],
        {"VDD_IN": 6000, "VDD_CPU_GPU_CV": 2000, "VDD_SOC": 1000},
    ]
    s = summarize_power(samples, 100, "tegrastats")
    assert s["samples"] == 2 and s["source"] == "tegrastats"
    assert s["total"] == {"mean_w": 6.934, "peak_w": 7.868}
    assert s["rails"]["VDD_SOC"] == {"mean_w": 1.216, "peak_w": 1.432}
    assert summarize_power([], 100, "tegrastats") is None


def test_nvpmodel():
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    text = "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN_SUPER\n2\n"
    assert parse_nvpmodel(text) == {"name": "MAXN_SUPER", "id": 2}
    assert parse_nvpmodel("garbage") == {"name": None, "id": None}


def test_jetson_clocks_show():
    unlocked = (
        "SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit\nOnline CPUs: 0-11\n"
        "cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1651200 "
        "IdleStates: WFI=0 c7=0\nGPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000\n"
        "EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=0\n"
        "FAN Dynamic Speed control=active hwmon2_pwm=45\nNV Power Mode: MAXN\n"
    )
    s = parse_jetson_clocks_show(unlocked)
    assert s["locked"] is False and s["power_mode"] == "MAXN"
    assert s["gpu"] == {"min_hz": 306000000, "max_hz": 1300500000, "cur_hz": 306000000}
    assert s["emc"]["cur_hz"] == 3199000000
    locked = unlocked.replace("GPU MinFreq=306000000", "GPU MinFreq=1300500000")
    assert parse_jetson_clocks_show(locked)["locked"] is True
    assert parse_jetson_clocks_show("")["locked"] is None


def test_off_jetson_everything_is_none(tmp_path):
    assert is_jetson(tmp_path) is False
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert is_jetson(tmp_path) is True
    if not is_jetson():
        assert read_device_state() is None
        with PowerMonitor(interval_ms=50) as pm:
            pass
        assert pm.summary() is None
