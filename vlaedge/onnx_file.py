"""Reading an .onnx file a user points a command at, with one-line errors instead of protobuf tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlaedge.errors import VlaedgeError, one_line


def read_onnx(path: str | Path, what: str = "model", check: bool = True) -> Any:
    """Loads an ONNX model's graph (external weight files are not read) and runs `onnx.checker` on it.

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
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:
            raise VlaedgeError(f"{what}: {path} fails the ONNX checker ({one_line(e, 200)})", fix) from None
    return model
