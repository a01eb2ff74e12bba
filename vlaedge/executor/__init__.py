"""Where units of work run: `local` (in this process, one after another: what vlaedge always did, the
default) or `ray` (as Ray tasks on a cluster; `pip install 'vlaedge[ray]'`).

A `Unit` is a module-level function, its arguments and a name that messages use ("closed loop: candidate
episodes 10-19"); `Executor.run(units)` returns their results in order. What a worker needs travels as
`Blob`s: bytes with their sha256. On Ray a blob is put into the object store once per run (shared by
every task on a node: no shared file system is assumed) and checked where it arrives (`Blob.open`);
results come back the same way. Ray retries a task whose worker or node was lost up to `max_retries`
times; every attempt records its node and count in the cluster's key-value store, so a unit that still
fails stops the run with one line naming the unit, the node, the attempts and the cause. A unit that
raises is not retried (it would raise again): its user error keeps its message and fix, prefixed with
the unit and node. Ctrl-C, a failure or the end of a time box cancels the tasks still pending. Ray is
imported only when a `ray` executor is opened, never by `import vlaedge` or `vlaedge --help`.

    with open_executor("ray", address="auto") as executor:
        results = executor.run([Unit("closed loop: reference episodes 0-9", run_block, (source, 0, 10))])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from vlaedge.errors import VlaedgeError
from vlaedge.executor.base import KINDS, NOT_RUN, RAY_FIX, Blob, Executor, Unit, node_name

__all__ = ["KINDS", "NOT_RUN", "RAY_FIX", "Blob", "Executor", "Unit", "current", "node_name", "open_executor",
           "open_from_config", "using"]

_CURRENT: ContextVar[Executor | None] = ContextVar("vlaedge_executor", default=None)


def open_executor(kind: str = "local", address: str | None = None, max_retries: int = 2,
                  cpus_per_task: float = 1.0, log: Callable[[str], None] = print,
                  episodes_per_task: int = 100, timing_resource: str | None = None) -> Executor:
    """An executor to run units on: here, or on a Ray cluster.

    Args:
        kind: "local" (in this process, one unit after another) or "ray".
        address: ray: "auto" (the cluster this machine belongs to, `ray start`), "ray://HOST:PORT" (Ray
            Client), or "local" (a private Ray instance on this machine, shut down on close). None:
            the Ray instance this process already runs, else "auto".
        max_retries: ray: attempts after the first for a task whose worker or node was lost.
        cpus_per_task: ray: CPUs each task reserves (its torch and ONNX Runtime threads).
        log: where the line saying which cluster was joined goes.
        episodes_per_task: closed-loop episodes per unit (the same partition on every executor).
        timing_resource: ray: the custom resource of the node that times latency (None: this node).

    Returns:
        The executor (a context manager: closing it lets go of the cluster).

    Raises:
        VlaedgeError: an unknown kind, Ray not installed, or no cluster at `address`.

    Example:
        >>> with open_executor("ray", "auto") as ex:
        ...     ex.run([Unit("one", pow, (2, 10))])
    """
    if kind not in KINDS:
        raise VlaedgeError(f"executor: {kind!r} is not an executor", f"use one of {', '.join(KINDS)}")
    if kind == "local":
        if timing_resource is not None:
            raise VlaedgeError(f"executor: timing on the node with resource {timing_resource!r} needs the "
                               "ray executor", "pass --executor ray, or drop executor.timing_resource")
        executor = Executor()
    else:
        from vlaedge.executor.cluster import RayExecutor

        executor = RayExecutor(address, max_retries, cpus_per_task, log)
    executor.episodes_per_task, executor.timing_resource = episodes_per_task, timing_resource
    return executor


def open_from_config(config, log: Callable[[str], None] = print) -> Executor:
    """`open_executor` with a recipe's `executor:` section (`vlaedge.recipe.ExecutorConfig`; None: local)."""
    if config is None:
        return open_executor(log=log)
    return open_executor(config.kind, config.address, config.max_retries, config.cpus_per_task, log,
                         config.episodes_per_task, config.timing_resource)


def current() -> Executor:
    """The executor `using` made current, else a fresh local one (what a library call gets by default)."""
    return _CURRENT.get() or Executor()


@contextlib.contextmanager
def using(executor: Executor) -> Iterator[Executor]:
    """While inside, `current()` is `executor` (the closed loop inside `compress` / `verify` reads it)."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)
