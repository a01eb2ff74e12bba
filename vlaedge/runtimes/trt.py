"""Native TensorRT runtime (`trt`): a plan built on this device, run with execute_async_v3, replayed
from a CUDA graph per input-shape set where capture works.

The model path is the bundle's `model.onnx` (the plan is `model.plan` next to it) or the `.plan` itself.
Before loading, `vlaedge.runtimes.plan.check_plan_compatible` compares the plan's sidecar (TensorRT version,
compute capability) with this machine. Device buffers, the stream and the graphs are torch CUDA objects
(torch is a vlaedge dependency; on a Jetson, install NVIDIA's JetPack torch wheel, which has CUDA).

Written against the TensorRT 10.x Python API (Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype, IExecutionContext.set_input_shape /
get_tensor_shape / set_tensor_address / execute_async_v3). NOT RUN ON REAL TENSORRT: no machine of this
project has TensorRT and a GPU; only its error paths (TensorRT or the GPU missing) are tested here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import TensorSpec
from vlaedge.runtimes.base import Runtime


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt

        trt.__version__  # noqa: B018  (stub packages import but have no bindings)
    except (ImportError, OSError, AttributeError) as e:
        raise VlaedgeError(
            f"trt: TensorRT is not importable here ({e.__class__.__name__}: {str(e)[:120]})",
            "on a Jetson it comes with JetPack (python3-libnvinfer); on x86 pip install "
            "tensorrt; or use --runtime ort-cpu",
        ) from e
    return trt


class TrtRuntime(Runtime):
    """A TensorRT plan on the current CUDA device.

    Args:
        model: the bundle's model.onnx (plan next to it) or a .plan/.engine file.
        input_spec: the inputs the plan must take.
        output_names: the outputs to return, in order.
        cuda_graphs: capture each new input-shape set into a CUDA graph and replay it.
    """

    name = "trt"

    def __init__(
        self,
        model: str | Path,
        input_spec: tuple[TensorSpec, ...],
        output_names: tuple[str, ...],
        cuda_graphs: bool = True,
    ):
        from vlaedge.runtimes.plan import check_plan_compatible, plan_for

        trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise VlaedgeError(
                "trt: no CUDA GPU visible to torch",
                "run on the Jetson/GPU machine, with a CUDA-enabled torch (JetPack wheel on a Jetson)",
            )
        self.input_spec, self.output_names, self._torch = input_spec, output_names, torch
        plan = plan_for(model)
        check_plan_compatible(plan, trt.__version__)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise VlaedgeError(
                f"trt: TensorRT could not deserialize {plan}", f"rebuild it: {plan.parent / 'build.sh'}"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        if sorted(self._inputs) != sorted(s.name for s in input_spec):
            raise VlaedgeError(
                f"trt: {plan} takes inputs {sorted(self._inputs)}, the policy gives "
                f"{sorted(s.name for s in input_spec)}",
                "build the plan from this policy's export",
            )
        missing = [n for n in output_names if n not in names]
        if missing:
            raise VlaedgeError(
                f"trt: {plan} has no output(s) {missing}", "build the plan from this policy's export"
            )
        self._stream = torch.cuda.Stream()
        self._cuda_graphs = cuda_graphs
        self._sets: dict[tuple, dict] = {}  # input shapes -> {"buffers", "graph"}
        self._bound: tuple | None = None  # the shape set whose addresses the context holds

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        key = tuple((n, feeds[n].shape) for n in self._inputs)
        entry = self._sets.get(key) or self._prepare(key, feeds)
        with torch.cuda.stream(self._stream):
            for n in self._inputs:
                entry["buffers"][n].copy_(
                    torch.from_numpy(np.ascontiguousarray(feeds[n], self._dtypes[n])), non_blocking=False
                )
            if entry["graph"] is not None:
                entry["graph"].replay()
            else:
                self._bind(key, entry)
                self._execute()
        self._stream.synchronize()
        return {n: entry["buffers"][n].cpu().numpy() for n in self.output_names}

    def _prepare(self, key: tuple, feeds: dict[str, np.ndarray]) -> dict:
        """Buffers for one input-shape set, a warm-up run, then a CUDA graph capture if it works."""
        torch = self._torch
        for n in self._inputs:
            self._context.set_input_shape(n, feeds[n].shape)
        buffers = {}
        for i in range(self._engine.num_io_tensors):
            n = self._engine.get_tensor_name(i)
            shape = tuple(feeds[n].shape) if n in self._inputs else tuple(self._context.get_tensor_shape(n))
            dtype = torch.from_numpy(np.empty(0, self._dtypes[n])).dtype
            buffers[n] = torch.empty(shape, dtype=dtype, device="cuda")
        entry = {"buffers": buffers, "graph": None}
        self._bind(key, entry)
        with torch.cuda.stream(self._stream):
            self._execute()  # the first run after a shape change must not be captured
        self._stream.synchronize()
        if self._cuda_graphs:
            entry["graph"] = self._capture()
        self._sets[key] = entry
        return entry

    def _bind(self, key: tuple, entry: dict) -> None:
        if self._bound == key:
            return
        for n, buf in entry["buffers"].items():
            if n in self._inputs:
                self._context.set_input_shape(n, tuple(buf.shape))
            self._context.set_tensor_address(n, buf.data_ptr())
        self._bound = key

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise VlaedgeError(
                "trt: execute_async_v3 failed (see the TensorRT log above)",
                "check the input shapes against the plan's optimization profile",
            )

    def _capture(self) -> Any:
        """A CUDA graph of one execution, or None where capture is not possible (e.g. DLA layers)."""
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                self._context.execute_async_v3(self._stream.cuda_stream)
        except RuntimeError:
            return None
        return graph

    def close(self) -> None:
        self._sets.clear()
        self._context = None
        self._engine = None
