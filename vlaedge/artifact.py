"""The output directory: written to a temporary sibling and moved into place only when complete, with
a manifest.json recording inputs and outputs (sha256), the resolved recipe, versions, timings and the
calibration/evaluation split. A directory without a complete manifest is never left at the output path.
`resolve_model` turns what a user points verify/profile/gate at (an .onnx, a run directory, a checkpoint)
into the model and what its run's manifest says about it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vlaedge.errors import VlaedgeError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256(path: Path) -> str:
    """Hex sha256 of a file, or of a directory's files (sorted by relative path)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class OutputDir:
    """A staging directory that becomes `final` on `commit()`.

    Use as a context manager: an exception (or Ctrl-C) inside the block deletes the staging directory,
    so `final` is either the complete previous content or the complete new one.

    Args:
        final: the output directory.
        force: replace an existing `final`.
    """

    def __init__(self, final: str | Path, force: bool = False):
        self.final = Path(final)
        if self.final.exists() and not force:
            raise VlaedgeError(f"output: {self.final} already exists",
                               "pass --force to replace it, or choose another --out")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-", dir=self.final.parent))
        self.manifest: dict = {"schema_version": SCHEMA_VERSION,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "inputs": {}, "outputs": {}, "stages": {}}

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def record_input(self, name: str, path: Path) -> None:
        self.manifest["inputs"][name] = {"path": str(path), "sha256": sha256(Path(path))}

    def record_stage(self, name: str, seconds: float, **details) -> None:
        self.manifest["stages"][name] = {"seconds": round(seconds, 3), **details}

    def commit(self) -> Path:
        """Hashes every output, writes manifest.json last, then moves the directory into place."""
        for f in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = str(f.relative_to(self.path))
            self.manifest["outputs"][rel] = {"sha256": sha256(f), "bytes": f.stat().st_size}
        (self.path / MANIFEST).write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
            os.replace(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.final)
        return self.final


def final_path(path: str | Path) -> Path:
    """`path` with an `OutputDir` staging folder (`.NAME.partial-XXXX`) replaced by its final name, for
    messages printed before the commit."""
    path = Path(path)
    parts = [re.sub(r"^\.(.+)\.partial-[^/]+$", r"\1", part) for part in path.parts]
    return Path(*parts)


def read_manifest(directory: str | Path) -> dict:
    """Reads a complete output directory's manifest, refusing incomplete or foreign directories."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise VlaedgeError(f"output: {directory} has no {MANIFEST} (not a vlaedge output, or incomplete)",
                           "run 'vlaedge compress' to produce one")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VlaedgeError(f"output: {path} is not valid JSON ({e})",
                           "re-run the command that wrote it") from e


@dataclass
class Resolved:
    """A candidate model and what its run directory (if any) says about it."""

    model: Path | None  # an .onnx file, a checkpoint directory (runtime torch), or None
    manifest: dict | None  # the run directory's manifest.json, when `model` came from one
    checkpoint: Path | None  # the FP32 reference: explicit, else the manifest's (when it still exists)
    data: Path | None  # the episodes: explicit, else the manifest's (when they still exist)


def resolve_model(path: Path | None, checkpoint: Path | None = None, data: Path | None = None) -> Resolved:
    """An .onnx file, a compress output directory (its model.onnx), a checkpoint directory or None.

    Explicit `checkpoint` / `data` win over the run directory's manifest.

    Raises:
        VlaedgeError: `path` does not exist, or its manifest is unreadable.
    """
    if path is None:
        return Resolved(None, None, checkpoint, data)
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        manifest = read_manifest(path)
        inputs = manifest.get("inputs", {})
        ckpt = checkpoint or _existing(inputs.get("checkpoint", {}).get("path"))
        return Resolved(
            path / "model.onnx", manifest, ckpt, data or _existing(inputs.get("data", {}).get("path"))
        )
    if path.is_dir() and (path / "config.json").is_file():  # a checkpoint (runtime torch)
        return Resolved(path, None, checkpoint, data)
    if not path.is_file():
        raise VlaedgeError(
            f"model: {path} does not exist", "pass an .onnx file or a 'vlaedge compress' output directory"
        )
    return Resolved(path, None, checkpoint, data)


def _existing(value: str | None) -> Path | None:
    return Path(value) if value and Path(value).exists() else None
