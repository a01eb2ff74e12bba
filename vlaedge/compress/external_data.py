"""ONNX external data as one file per model: `NAME.onnx` keeps the graph, `NAME.onnx.data` every
initializer of at least `INLINE_BYTES` (Constant nodes keep their values, as `onnx.save` does by default:
shape inference reads them).

Protobuf cannot serialize a message over 2 GB, so larger graphs must keep their weights outside the
.onnx. torch's legacy exporter then writes one loose file per tensor (`onnx__MatMul_13292`, hundreds of
them) beside the .onnx; ONNX Runtime's quantizer writes `NAME.onnx.data`. `write_one_data_file` rewrites
either into the one-file layout by streaming each tensor's bytes (never the whole model in memory: peak
is the graph plus one copy buffer), hashing the data file as it is written, and deleting the loose files.
Tensors of 64 KiB and more start on a 4 KiB boundary, so runtimes can memory-map them.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlaedge.onnx_file import all_tensors

TWO_GB = 2**31
INLINE_BYTES = 1024  # smaller tensors (shapes, scales, zero points) stay in the graph, as onnx.save does
ALIGN = 4096  # page alignment of large tensors (runtimes memory-map aligned external data)
ALIGN_FROM = 64 * 1024
CHUNK = 16 << 20  # copy buffer


@dataclass
class DataFile:
    """The one external data file of a model."""

    name: str  # relative to the .onnx's folder: NAME.onnx.data
    bytes: int
    sha256: str


def data_file_name(onnx_path: str | Path) -> str:
    """`model.onnx` -> `model.onnx.data` (each model its own data file, so two never share a namespace)."""
    return Path(onnx_path).name + ".data"


def inline_bytes(model: Any) -> int:
    """Bytes of tensor data held inside the graph (what counts against protobuf's 2 GB)."""
    return sum(len(t.raw_data) for t in all_tensors(model))


def write_one_data_file(path: str | Path, model: Any = None) -> DataFile | None:
    """Rewrites the .onnx at `path` so that every initializer of at least `INLINE_BYTES` lives in
    `data_file_name(path)` beside it; tensors already external (any files, any layout) are streamed over
    and their old files deleted. Returns the data file, or None when no tensor is that large.

    Args:
        path: the .onnx file; its external data (if any) beside it.
        model: its graph loaded without external data (`onnx.load(..., load_external_data=False)`), when
            the caller has it; it is modified in place.

    Example:
        >>> write_one_data_file("staging/model.onnx").name
        'model.onnx.data'
    """
    import onnx

    path = Path(path)
    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    name = data_file_name(path)
    partial = path.with_name(f".{name}.writing")
    digest, old_files, sources = hashlib.sha256(), set(), {}
    try:
        with partial.open("wb") as out:
            tensors = [(t, True) for t in model.graph.initializer] + [
                (t, False) for t in all_tensors(model, initializers=False)]
            for tensor, movable in tensors:
                external = tensor.data_location == onnx.TensorProto.EXTERNAL
                if not external and (len(tensor.raw_data) < INLINE_BYTES or not movable):
                    continue  # small, or a Constant's value, which shape inference reads (as onnx.save)
                align(out, digest, _length(tensor))
                offset = out.tell()
                if external:
                    info = {e.key: e.value for e in tensor.external_data}
                    old_files.add(info["location"])
                    _copy(_source(sources, path.parent / info["location"]), int(info.get("offset", 0)),
                          int(info["length"]) if "length" in info else None, out, digest)
                else:
                    out.write(tensor.raw_data)
                    digest.update(tensor.raw_data)
                    tensor.ClearField("raw_data")
                point(tensor, name, offset, out.tell() - offset)
            size = out.tell()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        for handle in sources.values():
            handle.close()
    if size == 0:
        partial.unlink()
        return None
    onnx.save_model(model, str(path))  # the graph alone: every large tensor now points at `partial`'s name
    os.replace(partial, path.with_name(name))
    for old in old_files - {name}:
        (path.parent / old).unlink(missing_ok=True)
    return DataFile(name, size, digest.hexdigest())


def release_memory() -> None:
    """Collects unreferenced Python objects and hands the C heap's free pages back to the OS (glibc's
    `malloc_trim`; nothing more elsewhere). Called after each step that held a model's weights (torch's
    exporter, a parsed ModelProto, an ONNX Runtime session), so the next step starts from what the process
    still uses, not from the last step's high-water mark: measured on a 506 MB FP32 policy, the export
    check started 480 MB lower."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl)
        return
    libc.malloc_trim(0)


def _length(tensor) -> int:
    import onnx

    return len(tensor.raw_data) if tensor.data_location != onnx.TensorProto.EXTERNAL else int(
        next((e.value for e in tensor.external_data if e.key == "length"), ALIGN_FROM))


def align(out, digest, length: int) -> None:
    """Pads the data file being written (and its running hash) so a tensor of `length` bytes starts on an
    `ALIGN` boundary, when it is at least `ALIGN_FROM` bytes."""
    gap = -out.tell() % ALIGN
    if length >= ALIGN_FROM and gap:
        out.write(b"\0" * gap)
        digest.update(b"\0" * gap)


def _source(sources: dict, file: Path):
    if file not in sources:
        sources[file] = file.open("rb")
    return sources[file]


def _copy(source, offset: int, length: int | None, out, digest) -> None:
    source.seek(offset)
    left = length if length is not None else os.fstat(source.fileno()).st_size - offset
    while left > 0:
        block = source.read(min(CHUNK, left))
        if not block:
            raise OSError(f"external data file {source.name} ends {left} bytes early")
        out.write(block)
        digest.update(block)
        left -= len(block)


def point(tensor, location: str, offset: int, length: int) -> None:
    """Makes the TensorProto `tensor` refer to `length` bytes at `offset` in the data file `location`."""
    import onnx

    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


@contextmanager
def staging_folder(path: Path) -> Iterator[Path]:
    """A hidden, empty `.NAME.partial` folder beside `path` (one a killed run left is replaced), removed
    when the block ends, whatever happens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial"
    if staging.is_file():  # left by an older vlaedge, which staged the .onnx alone
        staging.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: Path, path: Path) -> None:
    """The staged .onnx and its data file to `path`: the old .onnx is removed first, then the data file
    (or a stale one of an older export is removed), the .onnx last, so a complete-looking .onnx never
    points into another export's data."""
    staged, data = staging / path.name, staging / data_file_name(path)
    path.unlink(missing_ok=True)
    if data.is_file():
        os.replace(data, path.with_name(data.name))
    else:
        path.with_name(data.name).unlink(missing_ok=True)
    os.replace(staged, path)
