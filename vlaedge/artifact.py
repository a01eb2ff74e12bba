"""The output directory: written to a temporary sibling and moved into place only when complete, with
a manifest.json recording inputs and outputs (sha256), the resolved recipe, versions, timings and the
calibration/evaluation split. A directory without a complete manifest is never left at the output path.
`resolve_model` turns what a user points verify/profile/gate at (an .onnx, a run directory, a checkpoint)
into the model and what its run's manifest says about it.

A model with external data (`model.onnx` + `model.onnx.data`) is fingerprinted as a whole by
`model_sha256` (the .onnx and each data file it refers to), which is what reports carry and the gate
compares; the manifest lists each file with its own sha256 and, on the .onnx's entry, its data files and
that whole-model fingerprint."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlaedge.errors import VlaedgeError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def model_sha256(path: str | Path, file_hashes: dict[Path, str] | None = None) -> str:
    """The fingerprint of a model as a whole: for an .onnx with external data, the sha256 over the .onnx's
    sha256 and each data file's name and sha256 (so a changed data file changes it); else `sha256(path)`.

    Args:
        path: the model file (or a directory: its files).
        file_hashes: sha256 already computed, by path (spares hashing gigabytes twice).

    Raises:
        VlaedgeError: a data file the .onnx refers to is missing.
    """
    path = Path(path)
    known = file_hashes or {}
    own = known.get(path) or sha256(path)
    data = _data_files(path) if path.is_file() else []
    if not data:
        return own
    parts = [own] + [f"{f.name}:{known.get(f) or sha256(f)}" for f in data]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


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

    Use as a context manager: leaving the block without `commit()` (an exception, Ctrl-C) deletes the
    staging directory (and any parent folder it had to create), so `final` is either the complete
    previous content or the complete new one. While it is open a lock (`.NAME.lock` beside `final`)
    refuses a second run on the same output; staging folders left by killed earlier runs are removed
    then. Everything is checked before anything is created.

    Args:
        final: the output directory.
        force: replace an existing `final` (a directory; never a file, a device, `.`, `/`, the folder you
            are in or one above it).
        protect: input paths (checkpoint, dataset) that `final` must not be, contain or lie inside.
        command: what a second run refused by the lock is told holds it ("another vlaedge tune is
            writing OUT (pid N)").

    Raises:
        VlaedgeError: any of the refusals above, or another run holding the lock.
    """

    def __init__(self, final: str | Path, force: bool = False, protect: tuple[Path | None, ...] = (),
                 command: str = "run"):
        self.final = Path(final)
        check_output(self.final, force, protect)
        self._created = _missing_parents(self.final.parent)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.final, command)
        self._sigterm = sigterm_as_exit()  # a SIGTERM unwinds through __exit__, which deletes the staging
        self._sigterm.__enter__()
        try:
            _remove_stale(self.final)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-", dir=self.final.parent))
            os.chmod(self.path, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the output gets the umask
        except BaseException:
            self._release(failed=True)
            raise
        self.manifest: dict = {"schema_version": SCHEMA_VERSION,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "inputs": {}, "outputs": {}, "stages": {}}

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        committed = not self.path.exists()  # commit() moved it into place
        if not committed:
            shutil.rmtree(self.path, ignore_errors=True)
        self._release(failed=not committed)

    def _release(self, failed: bool) -> None:
        self._sigterm.__exit__(None, None, None)
        lock_path, handle = self._lock
        with contextlib.suppress(OSError):
            lock_path.unlink()
        handle.close()
        if failed:  # leave no empty parent folders behind a refused or failed run
            for folder in self._created:
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def record_input(self, name: str, path: Path) -> None:
        """Records an input by its absolute path (a later command run from another folder finds it)."""
        self.manifest["inputs"][name] = {"path": str(Path(path).resolve()), "sha256": sha256(Path(path))}

    def record_stage(self, name: str, seconds: float, **details) -> None:
        """Records a stage's timing and details; paths inside the staging folder are given as final paths."""
        self.manifest["stages"][name] = {"seconds": round(seconds, 3), **self.final_paths(details)}

    def final_paths(self, value):
        """`value` (nested dicts, lists, strings, paths) with the staging folder's path replaced by the
        final one, for what is written before `commit()` (the manifest, report.json)."""
        if isinstance(value, dict):
            return {k: self.final_paths(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.final_paths(v) for v in value)
        if isinstance(value, str | Path):
            text = str(value).replace(str(self.path), str(self.final))
            return text if isinstance(value, str) else Path(text)
        return value

    def commit(self) -> Path:
        """Hashes every output, writes manifest.json last, then moves the directory into place. An .onnx
        with external data also lists its data files and the whole model's `model_sha256`."""
        hashes = {f: sha256(f) for f in sorted(p for p in self.path.rglob("*") if p.is_file())}
        for f, digest in hashes.items():
            entry = {"sha256": digest, "bytes": f.stat().st_size}
            data = _data_files(f)
            if data:
                entry.update(external_data=[str(d.relative_to(self.path)) for d in data],
                             model_sha256=model_sha256(f, hashes))
            self.manifest["outputs"][str(f.relative_to(self.path))] = entry
        (self.path / MANIFEST).write_text(json.dumps(self.manifest, indent=2, default=str) + "\n")
        return self.move_into_place()

    def move_into_place(self) -> Path:
        """Replaces `final` with the staging directory (the previous `final`, if any, is removed after)."""
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
            os.replace(self.path, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.final)
        self._created = []
        return self.final


def _data_files(path: Path) -> list[Path]:
    """The external data files of an .onnx output (none for other files or one that is not ONNX).

    Raises:
        VlaedgeError: a data file it refers to is missing (the output would be broken).
    """
    if path.suffix != ".onnx":
        return []
    from google.protobuf.message import DecodeError

    from vlaedge.onnx_file import external_data_files

    try:
        return external_data_files(path)
    except (DecodeError, ValueError, RuntimeError):  # not an ONNX model: listed as a plain file
        return []


def check_model_files(directory: str | Path, manifest: dict, name: str | None = None) -> None:
    """Refuses a run directory whose model is no longer what the run wrote: the .onnx (default: the
    manifest's model) and each external data file its manifest entry lists; for a stage plan
    (stages.json), also every stage graph under stages/ and its data files. Files that are absent (a
    report folder copied without the model) are not judged.

    Raises:
        VlaedgeError: a file's sha256 differs from the manifest's.
    """
    directory = Path(directory)
    outputs = manifest.get("outputs", {})
    name = name or manifest.get("model", "model.onnx")
    names = [name]
    if name.endswith(".json"):  # a stage plan: its stage graphs, written beside it under STEM/
        names += [k for k in outputs if k.startswith(f"{Path(name).stem}/") and k.endswith(".onnx")]
    for rel in [r for n in names for r in [n, *(outputs.get(n) or {}).get("external_data", [])]]:
        recorded = (outputs.get(rel) or {}).get("sha256")
        file = directory / rel
        if recorded and file.is_file() and sha256(file) != recorded:
            raise VlaedgeError(f"output: {file} changed after the run wrote it (sha256 {sha256(file)[:12]}, "
                               f"the manifest says {recorded[:12]})",
                               "restore the run's files, or re-run the command that wrote the directory")


def check_output(final: Path, force: bool, protect: tuple[Path | None, ...] = ()) -> None:
    """Refuses an output directory that must not be written, before any work is done.

    Raises:
        VlaedgeError: `final` exists and `force` is not set; it is a file or device; it is `.`, `/`, the
            current folder or one above it; it is, contains or lies inside a `protect` path.
    """
    resolved = resolve_path(final, "output")
    here = Path.cwd().resolve()
    if resolved == Path(resolved.anchor) or resolved == here or resolved in here.parents:
        what = "/" if resolved == Path(resolved.anchor) else "the folder you are in or one above it"
        raise VlaedgeError(f"output: {final} is {what}; replacing it would delete what is there",
                           "choose a new folder, e.g. --out runs/NAME")
    for item in protect:
        if item is None:
            continue
        item = resolve_path(item, "input")
        if resolved == item or resolved in item.parents or item in resolved.parents:
            raise VlaedgeError(f"output: {final} is, contains or lies inside the input {item}",
                               "write the output to a folder of its own, e.g. --out runs/NAME")
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise VlaedgeError(f"output: {final} exists and is not a directory", "choose another --out")
    if final.exists() and not force:
        raise VlaedgeError(f"output: {final} already exists",
                           "pass --force to replace it, or choose another --out")


def resolve_path(path: str | Path, what: str) -> Path:
    """`Path(path).resolve()`, or one line when a symlink on the way points back at itself (Python 3.11-3.12
    raise RuntimeError there, 3.13 OSError).

    Raises:
        VlaedgeError: `path` is, or passes through, a symlink loop.
    """
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise VlaedgeError(f"{what}: {path} is a symlink loop ({e})",
                           "point the path at a real file or folder ('ls -l' shows where a link goes)") from e


def _missing_parents(folder: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` would create for `folder`, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _lock(final: Path, command: str = "run"):
    """An exclusive, non-blocking lock beside `final`: (lock path, open handle). The holder writes its pid
    and `command` into the lock file, so a refused second run can say who holds it."""
    path = final.with_name(f".{final.name}.lock")
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().split()
        handle.close()
        who = f"vlaedge {holder[1]}" if len(holder) == 2 else "vlaedge run"
        pid = f" (pid {holder[0]})" if holder and holder[0].isdigit() else ""
        raise VlaedgeError(f"output: another {who} is writing {final}{pid}",
                           "wait for it to finish, or choose another --out") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()} {command}\n")
    handle.flush()
    return path, handle


def _remove_stale(final: Path) -> None:
    """Staging folders of earlier runs that were killed: those on `final` (we hold its lock) and those
    beside it whose own output's lock nobody holds (a killed run on another --out in the same folder)."""
    for pattern in (f".{final.name}.partial-*", f".{final.name}.old-*"):
        for stale in final.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)
    for stale in final.parent.glob(".*.partial-*"):
        other = re.match(r"^\.(.+)\.partial-[^/]+$", stale.name)
        if not other or other.group(1) == final.name or not stale.is_dir():
            continue
        try:
            lock = _lock(final.with_name(other.group(1)))
        except VlaedgeError:
            continue  # that run is alive
        shutil.rmtree(stale, ignore_errors=True)
        lock[0].unlink(missing_ok=True)
        lock[1].close()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (what `kill`, timeouts and job schedulers send) raises SystemExit(143) while the block runs,
    so `finally` blocks and context managers remove their staging files; Python's default would end the
    process on the spot. Only in the main thread (signals cannot be handled elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def current_umask() -> int:
    """The process's umask (read without changing it): what a folder from `mkdtemp` (0700) is opened up to."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        raise VlaedgeError(f"output: {path} is not valid JSON ({e})",
                           "re-run the command that wrote it") from e
    return check_manifest(manifest, path)


_SECTIONS = ("inputs", "outputs", "stages", "data", "recipe", "split", "versions", "consent", "load", "gate")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def check_manifest(manifest: object, path: Path) -> dict:
    """`manifest` (read from `path`) if it has the shape vlaedge writes: an object whose sections are
    objects, whose `inputs` / `outputs` entries are objects with string paths and hashes, and whose `model`
    is a file name in the run directory.

    Raises:
        VlaedgeError: the first field that is not, naming it, its JSON type and value.
    """
    if not isinstance(manifest, dict):
        _bad_field(path, "", manifest, "an object")
    for key in _SECTIONS:
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            _bad_field(path, key, manifest[key], "an object")
    for section in ("inputs", "outputs"):
        for name, entry in (manifest.get(section) or {}).items():
            if not isinstance(entry, dict):
                _bad_field(path, f"{section}.{name}", entry, "an object")
            for key in ("path", "sha256", "model_sha256"):
                if entry.get(key) is not None and not isinstance(entry[key], str):
                    _bad_field(path, f"{section}.{name}.{key}", entry[key], "a string")
            data = entry.get("external_data", [])
            if not isinstance(data, list) or not all(isinstance(f, str) for f in data):
                _bad_field(path, f"{section}.{name}.external_data", data, "a list of file names")
    model = manifest.get("model", "model.onnx")
    if not isinstance(model, str) or model in ("", ".", "..") or Path(model).name != model:
        _bad_field(path, "model", model, "a file name in the run directory")
    return manifest


def _bad_field(path: Path, field: str, value: object, wanted: str) -> None:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    raise VlaedgeError(f"output: {path}{f': {field}' if field else ''} is {kind} ({json.dumps(value)[:60]}), "
                       f"not {wanted}", "re-run the command that wrote the directory (vlaedge writes its "
                       "manifest.json; it is not edited by hand)")


@dataclass
class Resolved:
    """A candidate model and what its run directory (if any) says about it."""

    model: Path | None  # an .onnx file, a checkpoint directory (runtime torch), or None
    manifest: dict | None  # the run directory's manifest.json, when `model` came from one
    checkpoint: Path | None  # the FP32 reference: explicit, else the manifest's (when it still exists)
    data: Path | None  # the episodes: explicit, else the manifest's (when they still exist)
    missing_checkpoint: str | None = None  # the manifest's checkpoint, not found from here

    def reference(self, what: str) -> Path | None:
        """The FP32 reference checkpoint (None: the caller's default).

        Raises:
            VlaedgeError: the run's manifest names a checkpoint that is not found from here (moved, or a
                relative path written from another folder): never silently another policy.
        """
        if self.checkpoint is None and self.missing_checkpoint:
            raise VlaedgeError(f"{what}: the run's checkpoint {self.missing_checkpoint} (its manifest.json) "
                               f"is not found from {Path.cwd()}", "pass it with -c / --checkpoint")
        return self.checkpoint


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
        recorded = inputs.get("checkpoint", {}).get("path")
        ckpt = checkpoint or _existing(recorded)
        model = path / manifest.get("model", "model.onnx")  # stages.json for per-stage graphs (issue 23)
        return Resolved(model, manifest, ckpt, data or _existing(inputs.get("data", {}).get("path")),
                        None if ckpt else recorded)
    if path.is_dir() and (path / "config.json").is_file():  # a checkpoint (runtime torch)
        return Resolved(path, None, checkpoint, data)
    if not path.is_file():
        raise VlaedgeError(
            f"model: {path} does not exist", "pass an .onnx file or a 'vlaedge compress' output directory"
        )
    return Resolved(path, None, checkpoint, data)


def _existing(value: str | None) -> Path | None:
    return Path(value) if value and Path(value).exists() else None
