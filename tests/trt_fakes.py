"""Fake `tensorrt` and `torch` (CUDA part) modules for behavioural tests of vlaedge's TensorRT code on a
machine without TensorRT or a GPU (issue 17).

They model what the TensorRT documentation says our code depends on, nothing more:

- the engine inspector shows a layer's format only when its `execution_context` has the (dynamic) input
  shapes set; otherwise the format reads "N/A" (IEngineInspector::setExecutionContext, TensorRT 10.x;
  the exact placeholder text is unverified);
- `set_timing_cache` returns False for a cache TensorRT refuses (another GPU / TensorRT version);
- `Runtime.DLA_core` must be set before `deserialize_cuda_engine` for a DLA plan;
- `execute_async_v3` returns False when it refuses to enqueue, also during CUDA-graph capture; a CUDA graph
  replays what was enqueued during its capture, and nothing else;
- `set_input_shape` returns False outside the optimization profile; `nptype` raises TypeError for BF16.

The model computed is `y = x @ ones(4, 2)` on input "x" [B, 4] (B in 1..MAX_BATCH), output "y" [B, 2].
Names and signatures are the real ones (tests/test_trt_api.py checks those against the real bindings).

    fake = FakeTensorRT(); monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setitem(sys.modules, "torch", FakeTorch(fake))
"""

from __future__ import annotations

import contextlib
import json
import types
from types import SimpleNamespace

import numpy as np

MAX_BATCH = 8
IO = {"x": ("INPUT", (-1, 4)), "y": ("OUTPUT", (-1, 2))}


def _enum(**members: int) -> SimpleNamespace:
    return SimpleNamespace(**members)


class FakeTensorRT(types.ModuleType):
    """A stand-in `tensorrt` module; `calls` records what our code did with it."""

    def __init__(self, version: str = "10.3.0", dla_cores: int = 0, layer_format: str = "Row major linear "
                 "FP16 format", accept_cache=lambda data: True, enqueue_in_capture: bool = True,
                 output_dtype: str = "FLOAT"):
        super().__init__("tensorrt")
        self.__version__ = version
        self.dla_cores, self.layer_format, self.accept_cache = dla_cores, layer_format, accept_cache
        self.enqueue_in_capture, self.output_dtype = enqueue_in_capture, output_dtype
        self.calls: list[tuple] = []
        self.capturing: list | None = None  # the kernels of the CUDA graph being captured
        self.memory: dict[int, np.ndarray] = {}  # "device" address -> array
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, severity: None})
        self.NetworkDefinitionCreationFlag = _enum(STRONGLY_TYPED=1)
        self.BuilderFlag = _enum(FP16=0, INT8=1, GPU_FALLBACK=3, SPARSE_WEIGHTS=7, DIRECT_IO=8,
                                 PREFER_PRECISION_CONSTRAINTS=10)
        self.MemoryPoolType = _enum(WORKSPACE=0)
        self.DeviceType = _enum(GPU=0, DLA=1)
        self.ProfilingVerbosity = _enum(DETAILED=2)
        self.LayerInformationFormat = _enum(ONELINE=0, JSON=1)
        self.TensorIOMode = _enum(NONE=0, INPUT=1, OUTPUT=2)
        self.DataType = _enum(FLOAT=0, BF16=7)
        trt = self
        self.Builder = lambda logger: _Builder(trt)
        self.OnnxParser = lambda network, logger: SimpleNamespace(parse_from_file=lambda path: True,
                                                                   num_errors=0)
        self.Runtime = lambda logger: _Runtime(trt)

    def nptype(self, dtype: int) -> type:
        if dtype == self.DataType.FLOAT:
            return np.float32
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


class _Builder:
    def __init__(self, trt: FakeTensorRT):
        self.trt = trt

    def create_network(self, flags: int) -> SimpleNamespace:
        self.trt.calls.append(("create_network", flags))
        return SimpleNamespace(num_layers=0, get_layer=lambda i: None)

    def create_builder_config(self) -> _Config:
        return _Config(self.trt)

    def create_optimization_profile(self) -> SimpleNamespace:
        shapes = {}
        return SimpleNamespace(shapes=shapes, set_shape=lambda n, *dims: shapes.update({n: dims}))

    def build_serialized_network(self, network, config: _Config) -> bytes:
        self.trt.calls.append(("build", sorted(config.flags), config.default_device_type, config.DLA_core))
        return b"fake plan"


class _Config:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.flags, self.cache = trt, set(), None
        self.default_device_type = self.DLA_core = self.profiling_verbosity = None

    def set_memory_pool_limit(self, pool: int, size: int) -> None:
        pass

    def set_flag(self, flag: int) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile) -> int:
        return 0

    def can_run_on_DLA(self, layer) -> bool:
        return True

    def create_timing_cache(self, data: bytes) -> SimpleNamespace:
        self.trt.calls.append(("create_timing_cache", bytes(data)))
        return SimpleNamespace(data=bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if not self.trt.accept_cache(cache.data):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        if self.cache is None:
            return None
        return SimpleNamespace(serialize=lambda: self.cache.data + b"+timings")


class _Runtime:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.DLA_core = trt, -1

    @property
    def num_DLA_cores(self) -> int:
        return self.trt.dla_cores

    def deserialize_cuda_engine(self, blob: bytes) -> _Engine:
        self.trt.calls.append(("deserialize", self.DLA_core))
        return _Engine(self.trt)


class _Engine:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.num_io_tensors = trt, len(IO)

    def get_tensor_name(self, i: int) -> str:
        return list(IO)[i]

    def get_tensor_mode(self, name: str) -> int:
        return getattr(self.trt.TensorIOMode, IO[name][0])

    def get_tensor_dtype(self, name: str) -> int:
        return getattr(self.trt.DataType, self.trt.output_dtype if name == "y" else "FLOAT")

    def get_tensor_shape(self, name: str) -> tuple:
        return IO[name][1]

    def create_execution_context(self) -> _Context:
        self.trt.calls.append(("create_execution_context",))
        return _Context(self.trt)

    def create_engine_inspector(self) -> _Inspector:
        return _Inspector(self.trt)


class _Inspector:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.execution_context = trt, None

    def get_engine_information(self, fmt: int) -> str:
        ctx = self.execution_context
        shown = ctx is not None and bool(ctx.shapes)  # the (dynamic) input shapes are set
        self.trt.calls.append(("inspect", dict(ctx.shapes) if ctx else None))
        io = [{"Name": "x", "Format/Datatype": self.trt.layer_format if shown else "N/A"}]
        return json.dumps({"Layers": [{"Name": "fc", "LayerType": "CaskGemmMatrixMultiply", "Inputs": io,
                                       "Outputs": io}]})


class _Context:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.shapes, self.addresses = trt, {}, {}

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(shape)
        planned = IO[name][1] if name in IO else (-1, *shape[1:])  # other names: any non-batch dims
        if not 1 <= shape[0] <= MAX_BATCH or shape[1:] != planned[1:]:
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        return (self.shapes["x"][0], 2)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        kernel = (self.trt.memory[self.addresses["x"]], self.trt.memory[self.addresses["y"]])
        if self.trt.capturing is not None:
            if not self.trt.enqueue_in_capture:
                return False
            self.trt.capturing.append(kernel)
            return True
        self.trt.calls.append(("execute",))
        _run(kernel)
        return True


def _run(kernel: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = kernel
    y[...] = x @ np.ones((4, 2), np.float32)


class _Tensor:
    """A "device" tensor: a numpy array registered at an address the fake TensorRT resolves."""

    def __init__(self, trt: FakeTensorRT, array: np.ndarray):
        self.trt, self.array = trt, array
        trt.memory[id(array)] = array

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def data_ptr(self) -> int:
        return id(self.array)

    def copy_(self, other: _Tensor, non_blocking: bool = False) -> None:
        self.array[...] = other.array

    def cpu(self) -> _Tensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.array.copy()


class _Graph:
    def __init__(self, trt: FakeTensorRT):
        self.trt, self.kernels = trt, []

    def replay(self) -> None:
        self.trt.calls.append(("replay", len(self.kernels)))
        for kernel in self.kernels:
            _run(kernel)


class FakeTorch(types.ModuleType):
    """A stand-in `torch`: the CUDA calls `vlaedge.runtimes.trt` makes, over the fake TensorRT's memory."""

    def __init__(self, trt: FakeTensorRT):
        super().__init__("torch")

        @contextlib.contextmanager
        def graph(g: _Graph, stream=None):
            trt.capturing = g.kernels
            try:
                yield
            finally:
                trt.capturing = None

        self.cuda = SimpleNamespace(
            is_available=lambda: True,
            get_device_capability=lambda: (8, 7),
            Stream=lambda: SimpleNamespace(cuda_stream=1, synchronize=lambda: None),
            stream=lambda s: contextlib.nullcontext(),
            CUDAGraph=lambda: _Graph(trt),
            graph=graph,
        )
        self.from_numpy = lambda a: _Tensor(trt, np.asarray(a))
        self.empty = lambda shape, dtype, device: _Tensor(trt, np.empty(shape, dtype))


def fake_orin_run(run, tiny_run, monkeypatch) -> None:
    """Makes `run` (holding a model.onnx) look like an orin-int8 compress run of `tiny_run`'s checkpoint
    and data, on a host whose TensorRT 10.3 is this file's fake on a compute-capability 8.7 GPU."""
    import sys

    import vlaedge.info
    import vlaedge.runtimes.plan
    from vlaedge.deploy import engine, trt_build
    from vlaedge.recipe import load_recipe

    recipe = load_recipe("orin-int8").model_dump(mode="json")
    inputs = {"checkpoint": {"path": str(tiny_run.checkpoint)}, "data": {"path": str(tiny_run.data)}}
    (run / "manifest.json").write_text(json.dumps({"recipe": recipe, "inputs": inputs}))
    monkeypatch.setattr(vlaedge.info, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(vlaedge.runtimes.plan, "gpu_compute_capability", lambda: "8.7")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(engine, "_why_no_build", lambda config: "")
    monkeypatch.setattr(trt_build, "gpu_compute_capability", lambda: "8.7")
