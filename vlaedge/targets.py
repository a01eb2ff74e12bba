"""Deployment targets: what each device can run, and the recipe rules that follow from it.

A `Target` is a frozen record of one device (a Jetson module in one power mode, a reference x86 GPU, or
the ONNX Runtime CPU target): its runtime, precisions, 2:4 sparsity, DLA cores, memory and dense
tensor-core peaks, with the source of every figure and how sure we are of it. The figures were taken
from the project's Jetson research notes and NVIDIA datasheets; they live here as data, so the
package never reads anything outside itself. Peaks are dense (no 2:4 sparsity), GPU only. AGX Orin 64GB
also comes in its lower nvpmodel modes (`agx-orin-64gb-50w`, `-30w`, `-15w`), and every GPU target carries
the `Efficiency` that `vlaedge estimate` prices kernels with (fitted on published measurements).

`check_recipe_against_target` is called when a recipe loads and refuses what the target cannot run
(FP8 on Orin, DLA on Orin Nano or Thor, 2:4 on the CPU, ...), naming the field and the alternatives.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, NoReturn

from vlaedge.errors import VlaedgeError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "fp4")
RUNTIMES = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")  # what verify and profile can time a model on


@dataclass(frozen=True)
class Efficiency:
    """What share of the datasheet peaks TensorRT reaches at batch 1, and the costs no roofline shows.

    Fitted by `benchmarks/estimate_vs_published.py --fit` on the calibration rows of
    benchmarks/published/measurements.csv only (held-out rows are never used to choose these).
    """

    fp16: float  # fraction of the dense FP16/BF16 tensor-core peak reached by GEMM/conv kernels
    int8: float  # the same for INT8 (W8A8) kernels
    fp8: float | None  # FP8 (E4M3) kernels; None without FP8
    fp4: float | None  # NVFP4 kernels; None without FP4
    memory: float  # fraction of the datasheet DRAM bandwidth reached by streaming kernels
    kernel_floor_us: float  # no kernel takes less (launch, tail wave, synchronisation), microseconds
    fixed_ms: float  # per inference: enqueue, input/output binding, stream sync (CUDA-graph-free), ms
    source: str  # which rows fitted it, and which values are assumed rather than fitted

    def compute(self, precision: str) -> float:
        """The efficiency of a GEMM computing in `precision` ("w8"/"w4" weight-only run FP16 math)."""
        value = {"int8": self.int8, "fp8": self.fp8, "fp4": self.fp4}.get(precision, self.fp16)
        return value if value is not None else self.fp16


@dataclass(frozen=True)
class Target:
    """One deployment target. Peaks are dense tensor-core figures (halve NVIDIA's 'with sparsity' ones).

    Example:
        >>> get_target("agx-orin-64gb").dla_count
        2
    """

    name: str  # the CLI / recipe name, e.g. "agx-orin-64gb"
    description: str  # the device (or reference card) and the power mode the figures are for
    kind: Literal["jetson", "x86-gpu", "cpu"]
    runtime: Literal["tensorrt", "onnxruntime"]  # what runs the exported model on it
    gpu_arch: str | None  # "Ampere", "Ada", "Hopper", "Blackwell"; None for cpu
    compute_capability: str | None  # CUDA compute capability, e.g. "8.7" (sm_87); None for cpu
    precisions: frozenset[str]  # weight+activation precisions the runtime runs (subset of PRECISIONS)
    weight_only: frozenset[str]  # weight-only formats ("int8", "int4": W8A16 / W4A16 kernels)
    sparsity_2_4: bool  # 2:4 semi-structured sparse tensor cores usable through TensorRT
    dla_count: int  # NVDLA cores (AGX Orin and Orin NX only)
    memory_gb: float | None  # device memory (shared CPU+GPU on Jetson)
    memory_bw_gbs: float | None  # peak DRAM bandwidth, GB/s
    fp16_tflops: float | None  # dense FP16/BF16 tensor-core peak
    int8_tops: float | None  # dense INT8 tensor-core peak (GPU; DLA separate)
    fp8_tflops: float | None  # dense FP8 peak; None where FP8 is not supported
    fp4_tflops: float | None  # dense FP4 peak; None where FP4 is not supported
    fp32_tflops: float | None  # FP32 on CUDA cores (no tensor cores)
    dla_int8_tops: float | None  # dense INT8 of all DLA cores together (0 without DLA)
    power_modes: tuple[str, ...]  # nvpmodel modes (Jetson) or board power (x86)
    min_jetpack: str | None  # oldest JetPack that supports this module / mode
    tensorrt: str | None  # TensorRT versions that ship for it
    source: str  # where the figures come from
    confidence: str  # which figures are official, derived or uncertain
    efficiency: Efficiency | None = None  # for `vlaedge estimate`; None: no estimate (cpu)

    @property
    def label(self) -> str:
        """'Ampere, sm_87' (or 'ONNX Runtime CPU'), used in error messages."""
        if self.compute_capability is None:
            return "ONNX Runtime CPU"
        return f"{self.gpu_arch}, sm_{self.compute_capability.replace('.', '')}"


# --- sources (copied from the project's research notes, shared/data/jetson_specs.json) ----------------
_DERIVED = "Derived from per-SM peak rates (jetson.md 'Derivation'); not an NVIDIA-published figure"
_NANO_DS = ("NVIDIA Jetson Orin Nano datasheet (copy at https://www.scribd.com/document/673174036/Orin-nano-"
            "datasheet): 4GB 512 cores/16 TC, 8GB 1024/32 TC, GPU max 625 MHz, 4GB 20 sparse/10 dense TOPS")
_NANO_SUPER = ("https://www.brojogopalsapui.com/ai-foundations/sub_contents/AI_hardware/jetson_orin_nano_light"
               ".html (third-party summary of the Orin Nano Super datasheet: 1.02 GHz GPU, 102 GB/s, "
               "67 TOPS)")
_SUPER_BLOG = ("https://developer.nvidia.com/blog/nvidia-jetpack-6-2-brings-super-mode-to-nvidia-jetson-orin-"
               "nano-and-jetson-orin-nx-modules/ (NOT retrieved directly; figures quoted by repos: NX GPU "
               "765/918->1173 MHz, Nano 625->1020 MHz, NX16 100->157 TOPS, Nano8 40->67 TOPS)")
_NX_DS = ("NVIDIA Jetson Orin NX Series datasheet (copy at https://github.com/icub-tech-iit/cad-libraries/"
          "files/13056089/JETSON-ORIN-NX-DATASHEET.pdf): 'up to 100 TOPS', 10W-25W")
_NX_3P = ("third-party doc (search-index file id 60864949122) quoting the Orin NX datasheet v1.7 and the "
          "JetPack 6.2 announcement: NX16 918->1173 MHz, FP16 15->19 TFLOPS, 2x NVDLA v2 40/20->80/40 TOPS")
_POWER_FORUM = ("https://forums.developer.nvidia.com/t/maximum-power-consumption-bounds-for-orin-agx/323456 "
                "(NVIDIA: AGX Orin 64GB up to 60 W, 32GB up to 40 W)")
_DLA_README = ("https://github.com/NVIDIA/Deep-Learning-Accelerator-SW/blob/main/README.md (GPU/DLA sparse "
               "INT8 TOPS per power mode, AGX Orin 64GB)")
_AGX_BRIEF = ("http://mzph.cn/web/30785.shtml (summary of the AGX Orin technical brief: 16 SM, 2048 cores, "
              "5.3 FP32 TFLOPS, 170 sparse INT8 TOPS, DLA 105); https://arxiv.org/abs/2509.11480")
_VLA_PERF = ("https://github.com/NVlabs/vla-perf genz/Systems/system_configs.py (core counts only; its "
             "TOPS mix sparse and dense)")
_THOR = ("https://developer.nvidia.com/blog/introducing-nvidia-jetson-thor-the-ultimate-platform-for-physical"
         "-ai/ (NOT retrieved directly; quoted: 2070 FP4 sparse, 1035 FP4 dense, 517 FP8 dense, 273 GB/s, "
         "1.57 GHz, 2560 cores, 128 GB); https://forums.developer.nvidia.com/t/clarification-on-cuda-core-"
         "and-tensor-core-counts-for-jetson-agx-thor/356355 (20 SMs); https://developer.ridgerun.com/wiki/"
         "index.php/NVIDIA_Jetson_AGX_Thor/Blackwell_GPU; https://github.com/dusty-nv/jetson-containers "
         "(l4t_version.py: 'Thor = 11.0')")
_T4000 = ("https://developer.nvidia.com/blog/accelerate-ai-inference-for-edge-and-robotics-with-nvidia-"
          "jetson-t4000-and-nvidia-jetpack-7-1/ (NOT retrieved directly; quoted: 1200 FP4 TFLOPS sparse, "
          "64 GB, 273 GB/s, 1536 cores, 40-70 W)")
# TensorRT per JetPack: https://pytorch.org/TensorRT/getting_started/jetpack.html and jetson-containers.
_TRT_ORIN = "JetPack 5.1.x: TensorRT 8.5.2; 6.0: 8.6.2; 6.1/6.2: 10.3 (CUDA 12.6); 7.2: 10.16 (CUDA 13.2)"
_TRT_SUPER = "JetPack 6.2: TensorRT 10.3 (CUDA 12.6); 7.2: 10.16 (CUDA 13.2)"
_CONF_ORIN = "cores/clocks/TOPS/bandwidth official (datasheet, some via copies); FP16/FP32 derived per SM"

_WO = frozenset({"int8", "int4"})  # TensorRT 10+ weight-only GEMMs (ModelOpt W4A16: Ampere and later)
_AMPERE = frozenset({"fp32", "fp16", "bf16", "int8"})
_FP8 = _AMPERE | {"fp8"}


# --- estimate efficiencies (fitted on benchmarks/published calibration rows; see Efficiency) ----------
_FIT = "fitted by benchmarks/estimate_vs_published.py --fit on the 'calib' rows of benchmarks/published"
ORIN_EFFICIENCY = Efficiency(
    fp16=0.42, int8=0.56, fp8=None, fp4=None, memory=0.74, kernel_floor_us=6.0, fixed_ms=0.1,
    source=f"{_FIT}: Orin rows (MLPerf v3.1 AGX Orin, Orin Nano LLM table, GR00T/FlashRT AGX Orin)")
THOR_EFFICIENCY = Efficiency(
    fp16=0.32, int8=0.32, fp8=0.32, fp4=0.32, memory=0.89, kernel_floor_us=6.0, fixed_ms=0.1,
    source=f"{_FIT}: Thor rows (TensorRT Edge-LLM, FlashRT); one compute efficiency for every precision (no "
           "calibration row separates them); floor and fixed cost shared with Orin")
X86_EFFICIENCY = replace(ORIN_EFFICIENCY, source="NOT fitted: no x86 row in benchmarks/published; the Orin "
                         "values are assumed (datacenter GPUs differ: treat as a rough bound)")


def _orin(**kw: Any) -> Target:
    eff = THOR_EFFICIENCY if kw.get("gpu_arch") == "Blackwell" else ORIN_EFFICIENCY
    return Target(**{"kind": "jetson", "runtime": "tensorrt", "gpu_arch": "Ampere",
                     "compute_capability": "8.7", "precisions": _AMPERE, "weight_only": _WO,
                     "sparsity_2_4": True, "fp8_tflops": None, "fp4_tflops": None, "dla_count": 0,
                     "dla_int8_tops": 0.0, "efficiency": eff, **kw})


def _gpu(**kw: Any) -> Target:
    return Target(**{"kind": "x86-gpu", "runtime": "tensorrt", "weight_only": _WO, "sparsity_2_4": True,
                     "dla_count": 0, "dla_int8_tops": 0.0, "fp4_tflops": None, "min_jetpack": None,
                     "tensorrt": "TensorRT 10.x for x86 from NVIDIA", "efficiency": X86_EFFICIENCY, **kw})


# AGX Orin 64GB power modes (nvpmodel). GPU TOPS per mode: NVIDIA's DLA README (sparse INT8 GPU 171 / 109 /
# 41 / 14 TOPS at MAXN / 50W / 30W / 15W); clocks: the L4T nvpmodel configuration of the full AGX Orin
# module (GPU max 816 / 612 / 408 MHz, TPC mask 0 / 240 / 248 = 8 / 4 / 3 of 8 TPCs online, EMC cap none /
# none / 2133 MHz of 3199 MHz, so DRAM bandwidth is unchanged except in 15W).
_NVPMODEL = ("L4T nvpmodel_p3701_0000.conf as copied at https://github.com/LineageOS/android_device_nvidia_"
             "concord/blob/0a7ce0b3cb5f72b34f1f3eab1456572991f13cc2/nvpmodel/nvpmodel_p3701_0000.conf")
_AGX_MODES = (("50w", "50W", 109 / 171, 1.0), ("30w", "30W", 41 / 171, 1.0),
              ("15w", "15W", 14 / 171, 2133 / 3199))


def _power_mode(base: Target, suffix: str, mode: str, compute: float, memory: float) -> Target:
    """`base` in a lower nvpmodel mode: tensor peaks scaled by `compute`, DRAM bandwidth by `memory`."""
    return replace(
        base, name=f"{base.name}-{suffix}", description=f"{base.description.split(',')[0]}, nvpmodel {mode}",
        fp16_tflops=round(base.fp16_tflops * compute, 2), int8_tops=round(base.int8_tops * compute, 1),
        fp32_tflops=round(base.fp32_tflops * compute, 2), memory_bw_gbs=round(base.memory_bw_gbs * memory, 1),
        power_modes=(mode,), source=f"{_DLA_README}; {_NVPMODEL}; {base.source}",
        confidence=f"GPU TOPS ratio {compute:.3f} of MAXN official (DLA README); bandwidth ratio "
                   f"{memory:.3f} from the EMC cap; efficiencies fitted at MAXN (lower modes: unverified)")


_TABLE = (
    _orin(name="orin-nano-4gb", description="Jetson Orin Nano 4GB, original clocks (GPU 625 MHz)",
          memory_gb=4, memory_bw_gbs=34, fp16_tflops=5.12, int8_tops=10.2, fp32_tflops=0.64,
          power_modes=("7W", "10W"), min_jetpack="5.1.1", tensorrt=_TRT_ORIN,
          source=f"{_NANO_DS}; {_DERIVED}",
          confidence=f"{_CONF_ORIN}; power modes recalled (verify nvpmodel)"),
    _orin(name="orin-nano-4gb-super", description="Jetson Orin Nano 4GB, Super / MAXN_SUPER (GPU 1020 MHz)",
          memory_gb=4, memory_bw_gbs=51, fp16_tflops=8.36, int8_tops=16.7, fp32_tflops=1.04,
          power_modes=("7W", "10W", "25W / MAXN_SUPER (uncertain for 4GB)"), min_jetpack="6.2",
          tensorrt=_TRT_SUPER, source=f"{_SUPER_BLOG}; {_DERIVED}",
          confidence="34 TOPS and 51 GB/s recalled from the Super blog; FP16/FP32 derived; power modes "
                     "uncertain"),
    _orin(name="orin-nano-8gb", description="Jetson Orin Nano 8GB, original clocks (GPU 625 MHz)",
          memory_gb=8, memory_bw_gbs=68, fp16_tflops=10.24, int8_tops=20.5, fp32_tflops=1.28,
          power_modes=("7W", "15W"), min_jetpack="5.1.1", tensorrt=_TRT_ORIN,
          source=f"{_NANO_DS}; {_NANO_SUPER}; {_DERIVED}", confidence=_CONF_ORIN),
    _orin(name="orin-nano-8gb-super", description="Jetson Orin Nano 8GB, Super / MAXN_SUPER (GPU 1020 MHz)",
          memory_gb=8, memory_bw_gbs=102, fp16_tflops=16.71, int8_tops=33.4, fp32_tflops=2.09,
          power_modes=("7W", "15W", "25W", "MAXN_SUPER"), min_jetpack="6.2", tensorrt=_TRT_SUPER,
          source=f"{_NANO_SUPER}; {_SUPER_BLOG}; {_DERIVED}", confidence=_CONF_ORIN),
    _orin(name="orin-nx-8gb", description="Jetson Orin NX 8GB, original clocks (GPU 765 MHz)",
          memory_gb=8, memory_bw_gbs=102.4, fp16_tflops=12.53, int8_tops=25.1, fp32_tflops=1.57,
          dla_count=1, dla_int8_tops=9.9, power_modes=("10W", "15W", "20W"), min_jetpack="5.1.1",
          tensorrt=_TRT_ORIN, source=f"{_NX_DS}; {_SUPER_BLOG}; {_DERIVED}",
          confidence=f"{_CONF_ORIN}; clock official-secondary; DLA share derived (70 - GPU 50 sparse TOPS)"),
    _orin(name="orin-nx-8gb-super", description="Jetson Orin NX 8GB, Super / MAXN_SUPER (GPU 1173 MHz)",
          memory_gb=8, memory_bw_gbs=102.4, fp16_tflops=19.22, int8_tops=38.4, fp32_tflops=2.4,
          dla_count=1, dla_int8_tops=20.1, power_modes=("10W", "15W", "20W", "40W", "MAXN_SUPER"),
          min_jetpack="6.2", tensorrt=_TRT_SUPER, source=f"{_SUPER_BLOG}; {_DERIVED}",
          confidence="117 TOPS recalled from the Super blog; clock official-secondary; FP16/FP32 derived"),
    _orin(name="orin-nx-16gb", description="Jetson Orin NX 16GB, original clocks (GPU 918 MHz)",
          memory_gb=16, memory_bw_gbs=102.4, fp16_tflops=15.04, int8_tops=30.1, fp32_tflops=1.88,
          dla_count=2, dla_int8_tops=19.9, power_modes=("10W", "15W", "25W"), min_jetpack="5.1.1",
          tensorrt=_TRT_ORIN, source=f"{_NX_DS}; {_NX_3P}; {_DERIVED}",
          confidence="100 TOPS and 10-25 W official; clock, FP16 and DLA official-secondary; FP32 derived"),
    _orin(name="orin-nx-16gb-super", description="Jetson Orin NX 16GB, Super / MAXN_SUPER (GPU 1173 MHz)",
          memory_gb=16, memory_bw_gbs=102.4, fp16_tflops=19.22, int8_tops=38.4, fp32_tflops=2.4,
          dla_count=2, dla_int8_tops=40.0, power_modes=("10W", "15W", "25W", "40W", "MAXN_SUPER"),
          min_jetpack="6.2", tensorrt=_TRT_SUPER, source=f"{_NX_3P}; {_SUPER_BLOG}; {_DERIVED}",
          confidence="157 TOPS, 1173 MHz, FP16 19, DLA 80/40 official-secondary; FP32 derived"),
    _orin(name="agx-orin-32gb", description="Jetson AGX Orin 32GB, MAXN (module max 40 W)",
          memory_gb=32, memory_bw_gbs=204.8, fp16_tflops=26.66, int8_tops=53.3, fp32_tflops=3.33,
          dla_count=2, dla_int8_tops=46.7, power_modes=("15W", "30W", "40W/MAXN"), min_jetpack="5.0.2",
          tensorrt=_TRT_ORIN, source=f"{_VLA_PERF}; {_POWER_FORUM}; {_DERIVED}",
          confidence="cores and 200 TOPS official; GPU clock 930 MHz recalled (medium); DLA split derived"),
    _orin(name="agx-orin-64gb", description="Jetson AGX Orin 64GB, MAXN (up to 60 W)",
          memory_gb=64, memory_bw_gbs=204.8, fp16_tflops=42.6, int8_tops=85.2, fp32_tflops=5.32,
          dla_count=2, dla_int8_tops=52.5, power_modes=("15W", "30W", "50W", "MAXN"), min_jetpack="5.0.2",
          tensorrt=_TRT_ORIN, source=f"{_DLA_README}; {_AGX_BRIEF}; {_POWER_FORUM}; {_DERIVED}",
          confidence="275 TOPS = GPU 171 + DLA 105 sparse official; 1.3 GHz/5.3 FP32 official via "
                     "secondary; FP16 derived. GPU TOPS fall to 109/41/14 sparse at 50/30/15 W"),
    _orin(name="agx-thor", description="Jetson AGX Thor T5000, MAXN (40-130 W)", gpu_arch="Blackwell",
          compute_capability="11.0", precisions=_FP8 | {"fp4"}, memory_gb=128, memory_bw_gbs=273,
          fp16_tflops=258.8, int8_tops=517.5, fp8_tflops=517.5, fp4_tflops=1035.0, fp32_tflops=8.04,
          power_modes=("MAXN", "120W"), min_jetpack="7.0", tensorrt="JetPack 7.0: TensorRT 10.13 (CUDA 13.0)",
          source=f"{_THOR}; {_DERIVED}",
          confidence="FP4/FP8 dense and 273 GB/s official via secondary; FP16 derived (2:1 sparse), matches "
                     "a 258 TFLOPS microbenchmark; INT8 = FP8 rate is an ASSUMPTION; no DLA: medium; sm_110 "
                     "with CUDA 13 (sm_101 in CUDA 12.8/12.9)"),
    _orin(name="thor-t4000", description="Jetson T4000, MAXN (40-70 W)", gpu_arch="Blackwell",
          compute_capability="11.0", precisions=_FP8 | {"fp4"}, memory_gb=64, memory_bw_gbs=273,
          fp16_tflops=150.0, int8_tops=300.0, fp8_tflops=300.0, fp4_tflops=600.0, fp32_tflops=4.67,
          power_modes=("40-70 W (modes not verified)",), min_jetpack="7.1",
          tensorrt="JetPack 7.1: TensorRT 10.13+ (not verified)", source=f"{_T4000}; {_DERIVED}",
          confidence="1200 FP4 sparse, 64 GB, 273 GB/s official-secondary; FP8/FP16/INT8 derived from FP4 by "
                     "2x/4x ratios and FP32/clock back-solved: UNCERTAIN"),
    _gpu(name="x86-ampere", description="Ampere datacenter class; reference card A100 SXM4 80GB (400 W)",
         gpu_arch="Ampere", compute_capability="8.0", precisions=_AMPERE, memory_gb=80, memory_bw_gbs=2039,
         fp16_tflops=312.0, int8_tops=624.0, fp8_tflops=None, fp32_tflops=19.5, power_modes=("400W",),
         source="NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf) as tabulated at "
                "https://glennklockwood.com/garden/processors/A100: FP16 312 / INT8 624 dense, FP32 19.5, "
                "80 GB HBM2e 2039 GB/s; FP8 not supported on Ampere (ModelOpt support matrix: Ada and later)",
         confidence="official datasheet figures via a secondary table; other Ampere cards (RTX 30xx, A10, "
                    "A6000) are far slower: treat the peaks as the class ceiling"),
    _gpu(name="x86-ada", description="Ada Lovelace class; reference card NVIDIA L4 24GB (72 W)",
         gpu_arch="Ada", compute_capability="8.9", precisions=_FP8, memory_gb=24, memory_bw_gbs=300,
         fp16_tflops=121.0, int8_tops=242.5, fp8_tflops=242.5, fp32_tflops=30.3, power_modes=("72W",),
         source="NVIDIA L4 datasheet (NOT retrieved directly) as quoted by https://www.yobitel.com/"
                "knowledge-base/nvidia-l4 and https://grokipedia.com/page/NVIDIA_L4_vs_L40S: 24 GB GDDR6 "
                "300 GB/s, FP16 242 / FP8 485 / INT8 485 with sparsity (halved here), FP32 30.3",
         confidence="datasheet figures via secondary sources; dense = sparse/2; an RTX 4090 has ~3x the "
                    "bandwidth (1008 GB/s) and higher peaks: not this reference"),
    _gpu(name="x86-hopper", description="Hopper datacenter class; reference card H100 SXM5 80GB (700 W)",
         gpu_arch="Hopper", compute_capability="9.0", precisions=_FP8, memory_gb=80, memory_bw_gbs=3350,
         fp16_tflops=989.4, int8_tops=1978.9, fp8_tflops=1978.9, fp32_tflops=66.9, power_modes=("700W",),
         source="NVIDIA H100 datasheet as copied at https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100"
                ".html (SXM: FP16 1979 / FP8 3958 / INT8 3958 with sparsity, 80 GB HBM3 3350 GB/s) and "
                "https://glennklockwood.com/garden/processors/h100 (dense 989.4 / 1978.9, FP32 66.9)",
         confidence="official datasheet/whitepaper figures via secondary copies; H100 PCIe is ~25% lower "
                    "with 2000 GB/s"),
    Target(name="cpu", description="ONNX Runtime on the host CPU (static QDQ quantization: uint8 "
           "activations, int8 per-channel weights)", kind="cpu", runtime="onnxruntime", gpu_arch=None,
           compute_capability=None, precisions=frozenset({"fp32", "int8"}), weight_only=frozenset(),
           sparsity_2_4=False, dla_count=0, memory_gb=None, memory_bw_gbs=None, fp16_tflops=None,
           int8_tops=None, fp8_tflops=None, fp4_tflops=None, fp32_tflops=None, dla_int8_tops=None,
           power_modes=(), min_jetpack=None, tensorrt=None,
           source="measured in this project: ORT quantize_static QDQ U8S8 ~1.45x faster than FP32 "
                  "ORT on a 2-core AVX512-VNNI CPU; ModelOpt Q/DQ, FP8 Q/DQ and 2:4 give no CPU speedup",
           confidence="measured on one machine; peaks depend on the host CPU and are not tabulated"),
)
_AGX64 = next(t for t in _TABLE if t.name == "agx-orin-64gb")
_MODES = tuple(_power_mode(_AGX64, *m) for m in _AGX_MODES)
TARGETS: dict[str, Target] = {t.name: t for t in _TABLE[:10] + _MODES + _TABLE[10:]}


def get_target(name: str) -> Target:
    """The target called `name`.

    Raises:
        VlaedgeError: unknown name, listing the known ones and suggesting the closest.

    Example:
        >>> get_target("x86-hopper").fp8_tflops
        1978.9
    """
    if name in TARGETS:
        return TARGETS[name]
    close = _closest(name)
    hint = f"did you mean {' or '.join(close)}?" if close else "run 'vlaedge targets' to list them"
    raise VlaedgeError(f"target: unknown target {name!r}; known targets: {', '.join(TARGETS)}", hint)


def _closest(name: str) -> list[str]:
    """Up to 3 names closest to `name`: containing it, or by difflib on whole names and prefixes."""
    name = name.lower()

    def score(t: str) -> float:
        if name in t:
            return 1.0
        return max(difflib.SequenceMatcher(None, name, c).ratio() for c in (t, t[:len(name)]))

    modes = {t.name: _AGX64.name for t in _MODES}  # a power mode is suggested only without its base
    ranked = sorted(TARGETS, key=score, reverse=True)
    best = score(ranked[0])
    close = [t for t in ranked if score(t) >= max(0.5, best - 0.05)]
    return [t for t in close if modes.get(t) not in close][:3]


def _names(pred: Callable[[Target], bool]) -> str:
    return ", ".join(t.name for t in TARGETS.values() if pred(t)) or "none"


def _fail(field: str, message: str, hint: str | None = None) -> NoReturn:
    raise VlaedgeError(f"{field}: {message}", hint)


def check_recipe_against_target(recipe: Any) -> None:
    """Refuses a recipe that its target cannot run; fills target-dependent defaults.

    Called from `Recipe`'s model validator, so every loaded recipe has passed it. Without an explicit
    `quantize.algorithm`, the cpu target gets `minmax` (ONNX Runtime) instead of ModelOpt's `max`.

    Args:
        recipe: a `vlaedge.recipe.Recipe` whose fields are already valid one by one.

    Raises:
        VlaedgeError: `path.to.field: what is wrong; what would work`, e.g. `"quantize.precision: fp8 is
            not supported on agx-orin-64gb (Ampere, sm_87); targets with fp8: agx-thor, ..."`.
    """
    target = get_target(recipe.target)
    q = recipe.quantize
    if q is not None and target.runtime == "onnxruntime" and "algorithm" not in q.model_fields_set:
        q.algorithm = "minmax"
    _check_quantize(recipe, target)
    _check_prune(recipe, target)
    _check_engine(recipe, target)
    _check_verify(recipe, target)


def _supports(t: Target, precision: str) -> bool:
    if precision.endswith("-weight-only"):
        return precision.removesuffix("-weight-only") in t.weight_only
    return precision in t.precisions


def _check_quantize(recipe: Any, t: Target) -> None:
    q = recipe.quantize
    if q is None:
        return
    p, algo = q.precision, q.algorithm
    if not _supports(t, p):
        why = "; the cpu target runs ONNX Runtime static quantization: int8 only" if t.kind == "cpu" else ""
        _fail("quantize.precision", f"{p} is not supported on {t.name} ({t.label}){why}; targets with {p}: "
              f"{_names(lambda o: _supports(o, p))}", "change the target or quantize.precision")
    if t.runtime == "onnxruntime":
        if algo not in ("minmax", "entropy", "percentile"):
            _fail("quantize.algorithm", f"{algo} is a ModelOpt (TensorRT) method; the cpu target calibrates "
                  "ONNX Runtime static quantization with minmax, entropy or percentile", "use minmax")
        return
    if algo in ("minmax", "entropy", "percentile"):
        _fail("quantize.algorithm", f"{algo} is an ONNX Runtime (cpu target) calibrator; TensorRT targets "
              "quantize with ModelOpt: max, smoothquant (int8) or awq (int4-weight-only)", "use max")
    if algo == "awq" and p != "int4-weight-only":
        _fail("quantize.algorithm", f"awq is for int4-weight-only, not {p}", "use max or smoothquant")
    if algo == "smoothquant" and p != "int8":
        _fail("quantize.algorithm", f"smoothquant smooths int8 activations, not {p}", "use max")


def _check_prune(recipe: Any, t: Target) -> None:
    if recipe.prune is not None and recipe.prune.method == "sparsity-2:4" and not t.sparsity_2_4:
        _fail("prune.method", f"sparsity-2:4 is not supported on {t.name} ({t.label}): 2:4 gives no CPU "
              "speedup, it needs Ampere+ sparse tensor cores via TensorRT",
              "use prune.method structured, which makes the matrices physically smaller")


def _check_engine(recipe: Any, t: Target) -> None:
    e = recipe.engine
    if e is None:
        return
    if t.runtime != "tensorrt":
        _fail("engine", f"{t.name} runs ONNX Runtime, not TensorRT: there is no engine to build",
              "remove the engine section, or pick a TensorRT target")
    if not e.min_batch <= e.opt_batch <= e.max_batch:
        _fail("engine.opt_batch", f"needs min_batch <= opt_batch <= max_batch (got {e.min_batch} <= "
              f"{e.opt_batch} <= {e.max_batch})", "fix the batch sizes of the optimization profile")
    if e.sparsity and not t.sparsity_2_4:
        _fail("engine.sparsity", f"{t.name} ({t.label}) has no 2:4 sparse tensor cores", "set it to false")
    if e.dla_core is not None:
        _check_dla(recipe, t)


def _check_dla(recipe: Any, t: Target) -> None:
    e, q = recipe.engine, recipe.quantize
    if t.dla_count <= e.dla_core:
        has = f"has {t.dla_count} DLA core(s)" if t.dla_count else "has no DLA"
        _fail("engine.dla_core", f"{t.name} {has} (got dla_core {e.dla_core}); DLA targets (AGX Orin, Orin "
              f"NX): {_names(lambda o: o.dla_count > e.dla_core)}",
              "remove engine.dla_core to run on the GPU")
    if q is not None and q.precision != "int8":
        _fail("engine.dla_core", f"DLA runs INT8 and FP16 only, not {q.precision}",
              "quantize to int8 or remove engine.dla_core")
    if not e.min_batch == e.opt_batch == e.max_batch:
        _fail("engine.dla_core", f"DLA needs static shapes; set engine.min_batch, opt_batch and max_batch "
              f"equal (got {e.min_batch}/{e.opt_batch}/{e.max_batch})", "e.g. all three to 1")


def _check_verify(recipe: Any, t: Target) -> None:
    v, q = recipe.verify, recipe.quantize
    if v is None:
        return
    if v.runtime not in RUNTIMES:
        _fail("verify.runtime", f"unknown runtime {v.runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
    allowed = ("ort-cpu", "torch") if t.runtime == "onnxruntime" else RUNTIMES[1:]
    if v.runtime not in allowed:
        _fail("verify.runtime", f"{v.runtime} cannot verify a model for {t.name} (runs {t.runtime}); "
              f"use one of: {', '.join(allowed)}")
    if q is not None and q.precision == "int4-weight-only" and v.runtime in ("ort-cpu", "ort-cuda"):
        _fail("verify.runtime", f"int4-weight-only exports as TensorRT-only ops that {v.runtime} cannot load",
              "verify with trt or ort-trt on a GPU with TensorRT")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def format_targets() -> list[dict[str, str]]:
    """One row per target for `vlaedge targets`: keys are the column headers, values are printable.

    Example:
        >>> format_targets()[0]["name"]
        'orin-nano-4gb'
    """
    return [{
        "name": t.name, "runtime": t.runtime, "arch": t.label,
        "precisions": " ".join(p for p in PRECISIONS if p in t.precisions),
        "weight-only": " ".join(sorted(t.weight_only)) or "-",
        "2:4": "yes" if t.sparsity_2_4 else "no", "DLA": str(t.dla_count),
        "memory GB": _num(t.memory_gb), "BW GB/s": _num(t.memory_bw_gbs),
        "fp16 TFLOPS": _num(t.fp16_tflops), "int8 TOPS": _num(t.int8_tops), "fp8 TFLOPS": _num(t.fp8_tflops),
        "fp4 TFLOPS": _num(t.fp4_tflops),
    } for t in TARGETS.values()]
