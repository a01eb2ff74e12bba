"""Reading an .onnx file a user points a command at, with one-line errors instead of protobuf tracebacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlaedge.errors import VlaedgeError, one_line


def read_onnx(path: str | Path, what: str = "model", check: bool = True) -> Any:
    """Loads an ONNX model's graph (external weight files are not read, only checked to exist beside it,
    from any working directory) and runs `onnx.checker` on it.

    Args:
        path: the .onnx file.
        what: the command or stage to name in errors, e.g. ``"estimate"``.
        check: run `onnx.checker.check_model` on the graph.

    Returns:
        The `onnx.ModelProto`.

    Raises:
        VlaedgeError: the file is missing, not a file, truncated or not an ONNX model, or fails the checker.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise VlaedgeError(f"{what}: {path} {'is not a file' if path.exists() else 'does not exist'}",
                           "pass an exported .onnx file (vlaedge export / compress write model.onnx)")
    fix = "re-export it (vlaedge export) or re-copy the file; it is truncated or not an ONNX model"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise VlaedgeError(f"{what}: {path} cannot be read as ONNX ({one_line(e, 160)})", fix) from None
    if not model.graph.node:
        raise VlaedgeError(f"{what}: {path} holds no graph nodes (an empty or truncated file)", fix)
    external_data_files(path, what, model)  # a missing data file is named as such, not as a checker failure
    if check:
        try:  # by path: external data is then looked for beside the .onnx, not in the working directory
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as e:
            raise VlaedgeError(f"{what}: {path} fails the ONNX checker ({one_line(e, 200)})", fix) from None
    return model


def all_tensors(model: Any, initializers: bool = True) -> Iterator[Any]:
    """Every TensorProto of a model: initializers and attribute tensors (Constant values), subgraphs too;
    without the main graph's initializers when `initializers` is False."""

    def of_graph(graph, top: bool = False) -> Iterator[Any]:
        if initializers or not top:
            yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from of_graph(attr.g)
                for sub in attr.graphs:
                    yield from of_graph(sub)

    yield from of_graph(model.graph, top=True)


def data_locations(model: Any) -> list[str]:
    """The external data files a model's tensors refer to, relative to its folder, sorted."""
    import onnx

    return sorted({e.value for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL
                   for e in t.external_data if e.key == "location"})


def external_data_files(path: str | Path, what: str = "model", model: Any = None) -> list[Path]:
    """The external data files beside an .onnx (empty for a self-contained one), from any working directory.

    Args:
        path: the .onnx file.
        what: the command or stage to name in errors.
        model: its graph, when already loaded (else read without the data).

    Raises:
        VlaedgeError: one of them is missing.
    """
    import onnx

    path = Path(path)
    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    files = [path.parent / loc for loc in data_locations(model)]
    for file in files:
        if not file.is_file():
            raise VlaedgeError(f"{what}: {path} keeps its weights in {file.name}, which is missing beside it",
                               f"copy {file.name} into the folder of {path.name} (they travel together)")
    return files


def onnx_file_bytes(path: str | Path) -> int:
    """Bytes of an .onnx file plus the external data files beside it (what copying the model moves).

    Raises:
        VlaedgeError: an external data file it names is missing.
    """
    path = Path(path)
    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path))
