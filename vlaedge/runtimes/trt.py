"""Native TensorRT runtime (`trt`): a plan built on this device, run with execute_async_v3, replayed
from a CUDA graph per input-shape set where capture works.

The model path is the bundle's `model.onnx` (the plan is `model.plan` next to it) or the `.plan` itself.
Before loading, `vlaedge.runtimes.plan.check_plan_compatible` compares the plan's sidecar (TensorRT version,
compute capability, DLA core) with this machine; a DLA plan's core is set on the TensorRT runtime before
it deserializes the plan. Device buffers, the stream and the graphs are torch CUDA objects (torch is a
vlaedge dependency; on a Jetson, install NVIDIA's JetPack torch wheel, which has CUDA).

Each input-shape set gets its own execution context, buffers and (where capture works) CUDA graph, so a
graph is never replayed on a context re-bound to other shapes or addresses. A capture whose
execute_async_v3 returns False (TensorRT refused to enqueue) is dropped: that shape set runs by plain
enqueue, never by replaying an empty graph over stale outputs.

Written against the TensorRT 10.x Python API (Runtime.DLA_core / deserialize_cuda_engine,
ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype / get_tensor_shape,
IExecutionContext.set_input_shape / get_tensor_shape / set_tensor_address / execute_async_v3), every
name checked against the real 10.3 and 10.13 bindings (tests/trt_api). NOT RUN ON REAL TENSORRT: no
machine of this project has TensorRT and a GPU; the logic runs here against fake tensorrt and torch.cuda
objects (tests/trt_fakes.py), and the error paths (TensorRT or the GPU missing) for real.
"""

from __future__ import annotations

import sys
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


def set_dla_core(runtime: Any, core: int | None, plan: Any) -> None:
    """Sets the DLA core a plan runs on, on a TensorRT Runtime, before it deserializes the plan.

    Args:
        runtime: a `tensorrt.Runtime`.
        core: the plan's DLA core (its sidecar's `dla_core`), None for a GPU-only plan.
        plan: the plan's name, for the message.

    Raises:
        VlaedgeError: this device has no such DLA core.
    """
    if core is None:
        return
    available = runtime.num_DLA_cores
    if core >= available:
        raise VlaedgeError(
            f"trt: {plan} was built for DLA core {core}, this device has {available} DLA core(s)",
            "rebuild it with engine.dla_core unset (GPU) or one of this device's cores (AGX Orin: 0, 1)",
        )
    runtime.DLA_core = core


def numpy_dtype(trt: Any, dtype: Any, tensor: str) -> np.dtype:
    """The numpy dtype of a plan's I/O tensor.

    Raises:
        VlaedgeError: a TensorRT type numpy has no type for (BF16, FP8, INT4, FP4: `trt.nptype` refuses them).
    """
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as e:
        raise VlaedgeError(
            f"trt: plan tensor {tensor} is {dtype}, which has no numpy type ({e})",
            "export with FP32/FP16/INT inputs and outputs (keep BF16/FP8 inside the graph)",
        ) from e


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
        meta = check_plan_compatible(plan, trt.__version__)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        set_dla_core(runtime, meta.get("dla_core"), plan.name)
        self._engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise VlaedgeError(
                f"trt: TensorRT could not deserialize {plan}", f"rebuild it: {plan.parent / 'build.sh'}"
            )
        self._plan = plan
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._dtypes = {n: numpy_dtype(trt, self._engine.get_tensor_dtype(n), n) for n in names}
        given = [s.name for s in input_spec]
        unknown = sorted(set(self._inputs) - set(given))
        if unknown:
            raise VlaedgeError(
                f"trt: {plan} takes inputs {sorted(self._inputs)}, the policy gives {sorted(given)} "
                f"(no {', '.join(unknown)})",
                "build the plan from this policy's export",
            )
        # A graph input that nothing consumes (vlaedge keeps the ones the exporter dropped, see
        # vlaedge.compress.export) may be removed by TensorRT's dead-layer pass or kept with a warning,
        # depending on the version: both plans run, the removed inputs are simply not fed.
        self.ignored_inputs = tuple(n for n in given if n not in self._inputs)
        if self.ignored_inputs:
            print(f"trt: {plan.name} takes no input {', '.join(self.ignored_inputs)} (TensorRT removed it: "
                  "nothing in the graph reads it); it is not fed", file=sys.stderr)
        missing = [n for n in output_names if n not in names]
        if missing:
            raise VlaedgeError(
                f"trt: {plan} has no output(s) {missing}", "build the plan from this policy's export"
            )
        self._stream = torch.cuda.Stream()
        self._cuda_graphs = cuda_graphs
        self._sets: dict[tuple, dict] = {}  # input shapes -> {"context", "buffers", "graph"}

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
                self._execute(entry["context"])
        self._stream.synchronize()
        return {n: entry["buffers"][n].cpu().numpy() for n in self.output_names}

    def _prepare(self, key: tuple, feeds: dict[str, np.ndarray]) -> dict:
        """An execution context with its buffers for one input-shape set, a warm-up run, then a CUDA graph
        capture if it works.

        Raises:
            VlaedgeError: TensorRT refuses a shape (outside the plan's optimization profile) or an address.
        """
        torch = self._torch
        context = self._engine.create_execution_context()
        for n in self._inputs:
            if not context.set_input_shape(n, feeds[n].shape):
                planned = tuple(self._engine.get_tensor_shape(n))
                raise VlaedgeError(
                    f"trt: {self._plan.name} refuses input {n} with shape {tuple(feeds[n].shape)} "
                    f"(the plan's shape is {planned}, -1: within its optimization profile)",
                    "feed batches within engine.min_batch..max_batch, or rebuild with a larger max_batch",
                )
        buffers = {}
        for i in range(self._engine.num_io_tensors):
            n = self._engine.get_tensor_name(i)
            shape = tuple(feeds[n].shape) if n in self._inputs else tuple(context.get_tensor_shape(n))
            dtype = torch.from_numpy(np.empty(0, self._dtypes[n])).dtype
            buffers[n] = torch.empty(shape, dtype=dtype, device="cuda")
            if not context.set_tensor_address(n, buffers[n].data_ptr()):
                raise VlaedgeError(
                    f"trt: TensorRT refused the buffer address of tensor {n} (see the log above)",
                    "report this with the TensorRT log; run with --runtime ort-cuda meanwhile",
                )
        entry = {"context": context, "buffers": buffers, "graph": None}
        with torch.cuda.stream(self._stream):
            self._execute(context)  # the first run after a shape change must not be captured
        self._stream.synchronize()
        if self._cuda_graphs:
            entry["graph"] = self._capture(context)
        self._sets[key] = entry
        return entry

    def _execute(self, context: Any) -> None:
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise VlaedgeError(
                "trt: execute_async_v3 failed (see the TensorRT log above)",
                "check the input shapes against the plan's optimization profile",
            )

    def _capture(self, context: Any) -> Any:
        """A CUDA graph of one execution, or None where capture is not possible (torch refuses the
        capture, or TensorRT refuses to enqueue during it, e.g. with DLA layers): then the set runs by
        plain enqueue."""
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                enqueued = context.execute_async_v3(self._stream.cuda_stream)
        except RuntimeError:
            return None
        return graph if enqueued else None

    def close(self) -> None:
        self._sets.clear()
        self._engine = None
