"""The executor seam's parts: `Blob`, `Unit` and the local `Executor` (`open_executor` is in the package)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vlaedge import progress
from vlaedge.errors import VlaedgeError, one_line

KINDS = ("local", "ray")
RAY_FIX = "pip install 'vlaedge[ray]'"
NOT_RUN = object()  # `Executor.run`'s result for a unit the time box cut off
KV_NAMESPACE = "vlaedge"
_PUT: list[Callable[[Blob], object]] = []  # set while a Ray executor submits: a Blob pickles as a reference


@dataclass(frozen=True)
class Blob:
    """Bytes a worker needs (a pickled policy, model files), with their sha256, checked where they arrive.

    Attributes:
        name: what the bytes are, for messages (e.g. "policy", "variants/fp32.onnx").
        sha256: the hex digest of the bytes as sent.
        data: the bytes (None while they wait in Ray's object store, then `ref` says where).
    """

    name: str
    sha256: str
    data: bytes | None = field(default=None, repr=False)
    ref: object = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, name: str, data: bytes) -> Blob:
        return cls(name, hashlib.sha256(data).hexdigest(), bytes(data))

    @classmethod
    def of_object(cls, name: str, obj: object) -> Blob:
        """`obj` pickled (protocol 5): a policy with its weights, feeds, frames."""
        return cls.of(name, pickle.dumps(obj, protocol=5))

    @classmethod
    def of_files(cls, name: str, root: Path, files: list[Path]) -> Blob:
        """The files (paths under `root`) as {relative path: bytes}."""
        return cls.of_object(name, {str(f.relative_to(root)): f.read_bytes() for f in files})

    def open(self) -> bytes:
        """The bytes, fetched from the object store if needed, after checking their sha256.

        Raises:
            VlaedgeError: the bytes that arrived are not the ones sent.
        """
        data = self.data if self.data is not None else _fetch(self.ref)
        got = hashlib.sha256(data).hexdigest()
        if got != self.sha256:
            raise VlaedgeError(f"executor: {self.name} arrived with sha256 {got[:12]}, it was sent as "
                               f"{self.sha256[:12]} ({len(data)} bytes)",
                               "rerun; if it repeats, check the node's memory and the cluster's object "
                               "store ('ray memory')")
        return data

    def load(self) -> object:
        """The object of `of_object`."""
        return pickle.loads(self.open())

    def unpack(self, folder: Path) -> list[Path]:
        """Writes the files of `of_files` under `folder`; returns their paths."""
        written = []
        for rel, data in self.load().items():
            path = folder / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise VlaedgeError(f"executor: {self.name} holds a file outside its folder: {rel}",
                                   "send only files below the folder given to Blob.of_files")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
        return written

    def __reduce__(self):
        if _PUT and self.data is not None:  # a Ray submission: the bytes go to the object store once
            return Blob, (self.name, self.sha256, None, _PUT[0](self))
        return Blob, (self.name, self.sha256, self.data, self.ref)


def _fetch(ref) -> bytes:
    import ray

    return ray.get(ref)


@dataclass
class Unit:
    """One piece of work: `fn(*args, **kwargs)` where `fn` is importable on a worker (module level)."""

    name: str  # in messages: "closed loop: candidate episodes 10-19", "tune: variant static-pc"
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    resources: dict[str, float] | None = None  # ray: custom resources the unit's node must have


class Executor:
    """Runs units here, one after another (the `local` executor; `RayExecutor` fans them out).

    Attributes:
        kind: "local" or "ray".
        node: where this process runs (the node that times latency), e.g. "10.0.0.5 (orin-1)".
        slots: how many units can run at once (1 here; the cluster's CPUs / cpus_per_task on Ray).
        nodes: the node each unit ran on, by unit name, after `run`.
    """

    kind = "local"
    episodes_per_task = 100  # closed-loop episodes per unit (`open_executor` sets it; recipe default)
    timing_resource: str | None = None  # ray: the custom resource of the node that times latency

    def __init__(self):
        self.node = node_name()
        self.slots = 1
        self.nodes: dict[str, str] = {}

    def run(self, units: list[Unit], deadline: float | None = None, description: str = "units") -> list:
        """The units' results in order; a unit not started before `deadline` (time.monotonic) is `NOT_RUN`.

        Raises:
            VlaedgeError: a unit's own user error (as it is), or, on Ray, a unit that failed or was lost.
        """
        results = []
        with progress.stage(description, total=len(units)) as bar:
            for unit in units:
                if deadline is not None and time.monotonic() > deadline:
                    results.append(NOT_RUN)
                    continue
                if unit.resources:
                    raise VlaedgeError(f"executor local: {unit.name} needs a node with "
                                       f"{sorted(unit.resources)}",
                                       "run with --executor ray on a cluster that has such a node")
                results.append(unit.fn(*unit.args, **unit.kwargs))
                self.nodes[unit.name] = self.node
                bar.advance()
        return results

    def close(self) -> None:
        """Lets go of the cluster (nothing to do here)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def node_name() -> str:
    """This machine as "IP (hostname)" when this process is part of a Ray cluster, else its hostname."""
    host = socket.gethostname()
    ray = sys.modules.get("ray")  # never imported here: only a process that uses Ray has it
    if ray is not None and ray.is_initialized():
        from ray.util import get_node_ip_address

        return f"{get_node_ip_address()} ({host})"
    return host


@contextlib.contextmanager
def putting(put: Callable[[Blob], object]) -> Iterator[None]:
    """While inside, a `Blob` pickles as `put(blob)` (an object-store reference) instead of its bytes."""
    _PUT.append(put)
    try:
        yield
    finally:
        _PUT.remove(put)


def run_id() -> str:
    """A fresh id for one `run` (keys of its attempts in the cluster's key-value store)."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def cause_line(exc: BaseException) -> str:
    """A unit's exception as one line: the user error's message, else "Type: message"."""
    if isinstance(exc, VlaedgeError):
        return one_line(exc.message, 240)
    return one_line(f"{type(exc).__name__}: {exc}", 240)
