"""The exporter's weights kept out of its protobuf: a graph of any size is traced with about one copy of
its weights in memory (the policy's own), not three.

torch's legacy exporter (`torch.onnx.export(dynamo=False)`, the one vlaedge uses) builds the whole ONNX
ModelProto with every weight inside it and serializes it in memory: the C++ proto and its serialized
bytes are two more copies of the weights (export peak 2.30 GB for a 0.51 GB graph at 127 M parameters,
0.82 GB before the trace). `weights_apart` hands the exporter's last step (`torch._C.Graph._export_onnx`,
the call the legacy `torch.onnx.export` makes; read in torch 2.13, the pinned version) no weights, so it
writes the graph with each weight as a graph input, and keeps the exporter's name -> tensor map (the
module's parameters and the constant-folded tensors, mostly views of them: a transposed weight shares its
storage). `attach_weights` then turns those inputs back into initializers, streaming each tensor's bytes
into the model's one external data file (`vlaedge.compress.external_data`). The export's checks run on
that layout (ONNX Runtime memory-maps the data file); `inline_weights` writes a self-contained .onnx at
the end, tensor by tensor, when the graph is under protobuf's 2 GB limit and the recipe does not ask for
external data.

`inline_weights` appends each initializer as its own `graph { initializer { ... } }` record after the
graph's serialized bytes: protobuf parsers merge repeated occurrences of an embedded message field
(the protobuf encoding guide, "Last One Wins" / merging of embedded messages), so the file reads as one
GraphProto whose initializers follow the inline ones, in ONNX Runtime, onnx and TensorRT's parser alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlaedge.compress.external_data import (
    INLINE_BYTES,
    TWO_GB,
    DataFile,
    align,
    data_file_name,
    point,
)

GRAPH_FIELD, INITIALIZER_FIELD = 7, 5  # ModelProto.graph, GraphProto.initializer (onnx.proto)


@contextmanager
def weights_apart() -> Iterator[dict]:
    """While the block runs, `torch.onnx.export` (legacy) writes graphs without weights; the yielded dict
    receives each export's name -> torch tensor map (for `attach_weights`)."""
    import torch

    graph_type = torch._C.Graph
    original = graph_type._export_onnx
    captured: dict = {}

    def export_without_weights(graph, params, *rest):
        captured.update(params)
        return original(graph, {}, *rest)

    graph_type._export_onnx = export_without_weights
    try:
        yield captured
    finally:
        graph_type._export_onnx = original


def weights_bytes(weights: dict) -> int:
    """Bytes of the captured tensors."""
    return sum(t.numel() * t.element_size() for t in weights.values())


def attach_weights(file: Path, weights: dict) -> DataFile | None:
    """Turns the graph inputs of `file` named in `weights` into initializers: tensors of `INLINE_BYTES` and
    more into `data_file_name(file)` beside it (4 KiB-aligned, hashed as written), smaller ones inline.

    Args:
        file: a .onnx written inside `weights_apart` (weights as graph inputs).
        weights: the captured name -> torch tensor map (any dtype ONNX has; copied one tensor at a time).

    Returns:
        The data file, or None when no tensor is that large.
    """
    import onnx
    import torch

    model = onnx.load(str(file), load_external_data=False)
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in weights]
    used = [i.name for i in graph.input if i.name in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    name = data_file_name(file)
    partial = file.with_name(f".{name}.writing")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for key in used:
                tensor = weights[key].detach()
                raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
                proto = graph.initializer.add()
                proto.name, proto.data_type = key, _onnx_type(tensor.dtype)
                proto.dims.extend(tensor.shape)
                if raw.nbytes < INLINE_BYTES:
                    proto.raw_data = raw.tobytes()
                    continue
                align(out, digest, raw.nbytes)
                offset = out.tell()
                out.write(raw)
                digest.update(raw)
                point(proto, name, offset, raw.nbytes)
            size = out.tell()
        onnx.save_model(model, str(file))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if size == 0:
        partial.unlink()
        return None
    os.replace(partial, file.with_name(name))
    return DataFile(name, size, digest.hexdigest())


def fits_inline(file: Path, data_bytes: int) -> bool:
    """The graph `file` and its `data_bytes` of external data fit one protobuf (under 2 GB)."""
    return file.stat().st_size + data_bytes < TWO_GB


def inline_weights(file: Path) -> None:
    """Rewrites `file` with the tensors of its data file inside it (one tensor in memory at a time) and
    deletes the data file. The caller checks `fits_inline` first."""
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    kept = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    sources = set()
    partial = file.with_name(f".{file.name}.inlining")
    try:
        with partial.open("wb") as out:
            out.write(model.SerializeToString())
            for tensor in external:
                info = {e.key: e.value for e in tensor.external_data}
                source = file.parent / info["location"]
                sources.add(source)
                with source.open("rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    tensor.raw_data = f.read(int(info["length"]))
                tensor.data_location = onnx.TensorProto.DEFAULT
                del tensor.external_data[:]
                record = tensor.SerializeToString()
                inner = _key(INITIALIZER_FIELD) + _varint(len(record))
                out.write(_key(GRAPH_FIELD) + _varint(len(inner) + len(record)) + inner)
                out.write(record)
                tensor.ClearField("raw_data")
        os.replace(partial, file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    for source in sources:
        source.unlink(missing_ok=True)


def _key(field: int) -> bytes:
    return _varint(field << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _onnx_type(dtype: Any) -> int:
    import onnx
    import torch

    types = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
             torch.bfloat16: onnx.TensorProto.BFLOAT16, torch.float64: onnx.TensorProto.DOUBLE,
             torch.int64: onnx.TensorProto.INT64, torch.int32: onnx.TensorProto.INT32,
             torch.int16: onnx.TensorProto.INT16, torch.int8: onnx.TensorProto.INT8,
             torch.uint8: onnx.TensorProto.UINT8, torch.bool: onnx.TensorProto.BOOL,
             torch.float8_e4m3fn: onnx.TensorProto.FLOAT8E4M3FN,
             torch.float8_e5m2: onnx.TensorProto.FLOAT8E5M2}
    if dtype not in types:
        raise TypeError(f"no ONNX type for a {dtype} weight")
    return types[dtype]
