"""Shapes for the estimate: input-shape overrides, symbolic shape inference, and refusal of unknown dims.

Order: read the graph (never its external data), fix the input dimensions (`--input-shape` overrides
first, then a dynamic first axis becomes the batch), run ONNX Runtime's symbolic shape inference
(`onnxruntime.tools.symbolic_shape_infer`, which propagates shapes through Reshape/Slice/Concat chains
that plain ONNX inference loses), falling back on `onnx.shape_inference` with data propagation, and
list every tensor a costed op touches whose shape is still not a number. Those are refused unless the
caller allows them, in which case each unknown dimension is taken as 1 and reported.
"""

from __future__ import annotations

import logging
from typing import Any

from vlaedge.errors import VlaedgeError

_8BIT_INT, _FP8, _INT4, _FP4 = {2, 3}, {17, 18, 19, 20}, {21, 22}, {23}  # onnx.TensorProto element types
BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}
MAX_DIM = 2**31 - 1  # the largest batch or input dimension taken (ONNX stores int64; no model runs near this)


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """`["image=1x3x224x224", "ids=1x32"]` -> `{"image": (1, 3, 224, 224), "ids": (1, 32)}`.

    Raises:
        VlaedgeError: a spec without `=`, or a dimension that is not a positive integer.
    """
    shapes = {}
    for spec in specs or []:
        name, _, dims = spec.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or min(shape) < 1:
            raise VlaedgeError(
                f"estimate: --input-shape {spec!r} is not NAME=DxDx...", "e.g. image=1x3x224x224"
            )
        if max(shape) > MAX_DIM:
            raise VlaedgeError(f"estimate: --input-shape {spec!r} has a dimension of {max(shape)}, above "
                               f"{MAX_DIM}", "give the dimensions the model runs at, e.g. image=1x3x224x224")
        shapes[name] = shape
    return shapes


def load_model(source: Any, batch: int, shapes: dict[str, tuple[int, ...]], allow_unknown: bool) -> Any:
    """The model with fixed input dims and inferred shapes (see the module docstring).

    Returns:
        (model, warnings): the `onnx.ModelProto` after shape inference and the notes to show the user.

    Raises:
        VlaedgeError: unreadable file, an override naming no input or of the wrong rank, or unknown
            input dimensions without `allow_unknown`.
    """
    import onnx

    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    else:
        try:
            model = onnx.load(str(source), load_external_data=False)
        except (OSError, ValueError) as e:
            raise VlaedgeError(f"estimate: cannot read {source} as ONNX ({e})", "pass an .onnx file") from e
    warnings = _fix_inputs(model, batch, shapes, allow_unknown)
    return _infer(model, warnings), warnings


def _fix_inputs(model: Any, batch: int, shapes: dict[str, tuple[int, ...]], allow_unknown: bool) -> list[str]:
    if not 1 <= batch <= MAX_DIM:
        raise VlaedgeError(f"estimate: --batch {batch} is out of range", f"give a batch of 1 to {MAX_DIM}")
    for name, shape in shapes.items():
        if not all(1 <= d <= MAX_DIM for d in shape):
            dims = "x".join(map(str, shape))
            raise VlaedgeError(f"estimate: input shape {name}={dims} has a dimension out of range",
                               f"give each dimension as 1 to {MAX_DIM}")
    inits = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    unknown_names = set(shapes) - {v.name for v in inputs}
    if unknown_names:
        raise VlaedgeError(
            f"estimate: --input-shape names {', '.join(sorted(unknown_names))}, which are not graph inputs",
            f"the inputs are: {', '.join(v.name for v in inputs)}",
        )
    unknown = []
    for v in inputs:
        dims = v.type.tensor_type.shape.dim
        if v.name in shapes:
            if len(shapes[v.name]) != len(dims):
                raise VlaedgeError(
                    f"estimate: --input-shape {v.name} has {len(shapes[v.name])} dims, the input {len(dims)}",
                    "give one number per dimension",
                )
            for dim, value in zip(dims, shapes[v.name], strict=True):
                dim.dim_value = value
            continue
        for k, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if k == 0:
                dim.dim_value = batch
            else:
                unknown.append(f"{v.name}[{k}]={dim.dim_param or '?'}")
                dim.dim_value = 1
    if unknown and not allow_unknown:
        raise VlaedgeError(
            f"estimate: input dimensions without a value: {', '.join(unknown)}",
            "pass --input-shape NAME=1x3x224x224 for each (or --allow-unknown-dims to take them as 1)",
        )
    return [f"WARNING: input dims taken as 1: {', '.join(unknown)}"] if unknown else []


def _infer(model: Any, warnings: list[str]) -> Any:
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.ERROR)
        inferred = SymbolicShapeInference.infer_shapes(
            _values_as_inputs(model), auto_merge=True, guess_output_rank=True
        )
        if inferred is not None:
            del model.graph.value_info[:]
            model.graph.value_info.extend(inferred.graph.value_info)
            del model.graph.output[:]
            model.graph.output.extend(inferred.graph.output)
            return model
    except ImportError:
        warnings.append("onnxruntime missing: plain ONNX shape inference only")
    except Exception as e:  # noqa: BLE001 - the third-party pass raises assorted types; fall back below
        warnings.append(f"symbolic shape inference failed ({type(e).__name__}); used ONNX shape inference")
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise VlaedgeError(
            f"estimate: ONNX shape inference failed: {str(e)[:200]}", "check the export"
        ) from e


def _values_as_inputs(model: Any) -> Any:
    """A copy whose weights (external or over 64 values) are typed inputs: symbolic inference then never
    reads their data (which may not be there); small constants such as Reshape shapes keep their values."""
    from onnx import helper

    copy = type(model)()
    copy.CopyFrom(model)
    keep, typed, listed = [], [], {v.name for v in copy.graph.input}
    for init in copy.graph.initializer:
        numel = 1
        for d in init.dims:
            numel *= d
        if init.data_location == init.EXTERNAL or numel > 64:
            if init.name not in listed:
                typed.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            keep.append(init)
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(keep)
    copy.graph.input.extend(typed)
    return copy


class Graph:
    """Shapes, element types, producers and consumers of an ONNX graph after shape inference."""

    def __init__(self, model: Any):
        g = model.graph
        self.nodes = list(g.node)
        self.dims: dict[str, tuple[int, ...]] = {}
        self.elem: dict[str, int] = {}
        self.unknown: set[str] = set()  # tensors with a missing shape or a symbolic dimension
        for v in (*g.input, *g.value_info, *g.output):
            t = v.type.tensor_type
            self.elem[v.name] = t.elem_type
            if not t.HasField("shape"):
                self.unknown.add(v.name)
                continue
            known = [d.HasField("dim_value") and d.dim_value > 0 for d in t.shape.dim]
            if not all(known):
                self.unknown.add(v.name)
            self.dims[v.name] = tuple(
                d.dim_value if k else 1 for d, k in zip(t.shape.dim, known, strict=True)
            )
        self.init_dims = {i.name: tuple(i.dims) for i in g.initializer}
        for i in g.initializer:
            self.dims[i.name], self.elem[i.name] = tuple(i.dims), i.data_type
            self.unknown.discard(i.name)
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.outputs = {o.name for o in g.output}
        # computed from initializers alone (an Identity that feeds a shared weight to the next unrolled
        # Euler step, a Transpose or DequantizeLinear of a weight): folded into the weights at build time
        self.folded: set[str] = set()
        for n in self.nodes:
            if all(not i or i in self.init_dims or i in self.folded for i in n.input):
                self.folded.update(o for o in n.output if o)

    def missing(self, names: list[str]) -> list[str]:
        """Those of `names` whose shape is unknown (never inferred, or symbolic)."""
        return [n for n in names if n and (n in self.unknown or n not in self.dims)]

    def numel(self, name: str) -> int:
        n = 1
        for d in self.dims.get(name, ()):
            n *= d
        return n

    def quantized_width(self, name: str) -> str | None:
        """'int8' / 'fp8' / 'int4' / 'fp4' when `name` is a DequantizeLinear output (its stored width)."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        elem = self.elem.get(node.input[0])
        if elem is None and len(node.input) > 2:  # fall back on the zero point's type
            elem = self.elem.get(node.input[2])
        if elem in _8BIT_INT or elem is None:  # QuantizeLinear without zero point emits uint8
            return "int8"
        return "fp8" if elem in _FP8 else "int4" if elem in _INT4 else "fp4" if elem in _FP4 else None

    def is_weight(self, name: str) -> bool:
        """An initializer, or a DQ(Q(initializer)) / DQ(initializer) / Transpose / Cast / Identity chain of
        one (the legacy exporter feeds a weight shared by unrolled steps through Identity nodes)."""
        seen = name
        for _ in range(5):
            if seen in self.init_dims:
                return True
            node = self.producer.get(seen)
            if node is None or node.op_type not in (
                "DequantizeLinear",
                "QuantizeLinear",
                "Transpose",
                "Cast",
                "Identity",
            ):
                return False
            seen = node.input[0]
        return False

    def tensor_bytes(self, name: str, default: str) -> float:
        """Bytes of a tensor as read by its consumer: the quantized width through DQ, else the default."""
        width = self.quantized_width(name)
        if width is None:
            users = self.consumers.get(name, [])
            if users and all(u.op_type == "QuantizeLinear" for u in users) and name not in self.outputs:
                width = "int8"  # the quantize fuses into the producer's output
        if width is None and name in self.init_dims:
            width = _stored_width(self.elem.get(name))
        return self.numel(name) * BYTES[width or default]

    def weight_bytes(self, name: str, default: str) -> float:
        """Deployed size of an initializer: quantized width where a Q/DQ chain consumes it."""
        users = self.consumers.get(name, [])
        if not users or all(
            u.op_type in ("Shape", "Reshape", "Expand") and u.input[0] != name for u in users
        ):
            return 0.0  # shape constants
        for u in users:
            if u.op_type == "QuantizeLinear" and u.input[0] == name:
                dq = [c for c in self.consumers.get(u.output[0], []) if c.op_type == "DequantizeLinear"]
                if dq:
                    return self.numel(name) * BYTES[self.quantized_width(dq[0].output[0]) or "int8"]
            if u.op_type in ("QuantizeLinear", "DequantizeLinear") and u.input[0] != name:
                return 0.0  # scales and zero points: negligible, folded
        elem = self.elem.get(name)
        if elem in (6, 7, 9):  # int32, int64, bool: indices and masks
            return self.numel(name) * (8 if elem == 7 else 4 if elem == 6 else 1)
        return self.numel(name) * BYTES[_stored_width(elem) or default]


def _stored_width(elem: int | None) -> str | None:
    if elem in _8BIT_INT or elem in _FP8:
        return "int8"
    return "int4" if elem in _INT4 or elem in _FP4 else None
