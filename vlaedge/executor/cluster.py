"""The `ray` executor: units as Ray tasks on a cluster (this module imports Ray; `open_executor` reaches it
only for `kind="ray"`). How failures, retries, blobs and Ctrl-C are handled: `vlaedge.executor`."""

from __future__ import annotations

import logging
import os
import sys
import time

from vlaedge import progress
from vlaedge.errors import VlaedgeError
from vlaedge.executor.base import (
    KV_NAMESPACE,
    NOT_RUN,
    RAY_FIX,
    Blob,
    Executor,
    Unit,
    cause_line,
    node_name,
    putting,
    run_id,
)

NO_CLUSTER_FIX = ("start one with 'ray start --head' (then --address auto), pass --address ray://HOST:10001 "
                  "for a remote cluster's Ray Client server, or --address local for a Ray instance on this "
                  "machine only")
LOST_FIX = ("look at that node's memory and logs ('ray logs', /tmp/ray/session_latest/logs), raise "
            "executor.max_retries, or run here with --executor local")


class RayExecutor(Executor):
    """Runs units as Ray tasks; see `vlaedge.executor.open_executor` for the arguments.

    Raises:
        VlaedgeError: Ray is not installed, or there is no cluster at `address`.
    """

    kind = "ray"

    def __init__(self, address: str | None, max_retries: int, cpus_per_task: float, log=print):
        try:
            import ray
        except ImportError:
            raise VlaedgeError("executor ray: the ray package is not installed", RAY_FIX) from None
        self._own = not ray.is_initialized()
        if self._own:
            _connect(ray, address)
        super().__init__()
        self.max_retries, self.cpus_per_task = max_retries, cpus_per_task
        cpus = ray.cluster_resources().get("CPU", 1.0)
        self.slots = max(1, int(cpus // cpus_per_task))
        where = address or ("auto" if self._own else "this process's Ray instance")
        log(f"executor: ray ({where}): {len(ray.nodes())} node(s), {cpus:g} CPUs, {self.slots} task(s) at "
            f"once, {max_retries} retr{'y' if max_retries == 1 else 'ies'} for a lost task; this node: "
            f"{self.node}")

    def run(self, units: list[Unit], deadline: float | None = None, description: str = "units") -> list:
        import ray

        rid, puts = run_id(), {}
        have = ray.cluster_resources()
        named = ", ".join(sorted(k for k in have if ":" not in k))  # not the per-node "node:IP" entries
        for unit in units:  # Ray would wait forever for a node that does not exist
            missing = sorted(k for k in (unit.resources or {}) if k not in have)
            if missing:
                raise VlaedgeError(f"executor ray: {unit.name} needs a node with resource {missing[0]!r}; "
                                   f"the cluster has none (its resources: {named})",
                                   f"start that node with ray start --resources '{{\"{missing[0]}\": 1}}', "
                                   "or drop executor.timing_resource")

        def put(blob: Blob):  # each blob once per run, whatever number of tasks reads it
            if blob.sha256 not in puts:
                puts[blob.sha256] = ray.put(blob.data)
            return puts[blob.sha256]

        task, common = ray.remote(_attempt), {"max_retries": self.max_retries, "retry_exceptions": False,
                                              "num_cpus": self.cpus_per_task}
        with putting(put):
            refs = {task.options(**common, name=u.name[:100], resources=u.resources or {}).remote(
                rid, i, u.fn, u.args, u.kwargs): i for i, u in enumerate(units)}
        results, pending = [NOT_RUN] * len(units), list(refs)
        try:
            with progress.stage(f"{description} (ray)", total=len(units)) as bar:
                while pending:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    done, pending = ray.wait(pending, num_returns=1, timeout=left)
                    if not done:
                        break  # the time box: what is still pending is not run
                    for ref in done:
                        i = refs[ref]
                        results[i] = self._result(ref, units[i], rid, i)
                        bar.advance()
        finally:
            for ref in pending:  # Ctrl-C, a failed unit or the time box: nothing keeps running
                ray.cancel(ref, force=True)
            _forget(rid)
        return results

    def _result(self, ref, unit: Unit, rid: str, index: int):
        """The unit's value; a failure or a loss as one VlaedgeError naming the unit and the node."""
        import ray
        from ray import exceptions as rx

        try:
            node, value = ray.get(ref)
        except rx.RayTaskError as e:  # the unit itself raised: deterministic, not retried
            node, cause = _recorded(rid, index)[0], getattr(e, "cause", None) or e
            if isinstance(cause, VlaedgeError):
                raise VlaedgeError(f"{unit.name} (on {node}): {cause.message}", cause.hint) from None
            raise VlaedgeError(f"executor ray: {unit.name} failed on {node}: {cause_line(cause)}",
                               "rerun with --executor local to see it in this process (--debug for the "
                               "traceback)") from None
        except rx.RayError as e:  # the worker, its node or the unit's objects were lost
            node, attempts = _recorded(rid, index)
            raise VlaedgeError(f"executor ray: {unit.name} was lost on node {node} after {attempts} "
                               f"attempt{'' if attempts == 1 else 's'} (max_retries={self.max_retries}): "
                               f"{_loss(e)}", LOST_FIX) from None
        self.nodes[unit.name] = node
        return value

    def close(self) -> None:
        if self._own:
            import ray

            ray.shutdown()


def _connect(ray, address: str | None) -> None:
    """ray.init for `address` ("auto", "ray://HOST:PORT", "local"); workers see this process's sys.path
    (the Python packages of an env named as `package.module:make_env`) where they run on this machine."""
    path = os.pathsep.join(p for p in sys.path if p)
    options = {"logging_level": logging.WARNING, "log_to_driver": True}
    if not (address or "auto").startswith("ray://"):
        options["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    try:
        if address == "local":
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=address or "auto", **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise VlaedgeError(f"executor ray: no Ray cluster at {address or 'auto'} "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})",
                           NO_CLUSTER_FIX) from None


def _attempt(rid: str, index: int, fn, args: tuple, kwargs: dict):
    """One attempt of a unit on a worker: records the node and the attempt count, then runs it quietly."""
    from ray.experimental import internal_kv

    key = f"{rid}:{index}"
    attempts = int(internal_kv._internal_kv_get(f"{key}:attempts", namespace=KV_NAMESPACE) or 0) + 1
    node = node_name()
    internal_kv._internal_kv_put(f"{key}:attempts", str(attempts), namespace=KV_NAMESPACE)
    internal_kv._internal_kv_put(f"{key}:node", node, namespace=KV_NAMESPACE)
    progress.quiet = True  # a worker's bars would interleave in the driver's log
    return node, fn(*args, **kwargs)


def _recorded(rid: str, index: int) -> tuple[str, int]:
    """(the node of the unit's last attempt, its number of attempts) from the key-value store."""
    from ray.experimental import internal_kv

    key = f"{rid}:{index}"
    node = internal_kv._internal_kv_get(f"{key}:node", namespace=KV_NAMESPACE)
    attempts = internal_kv._internal_kv_get(f"{key}:attempts", namespace=KV_NAMESPACE)
    return (node.decode() if node else "unknown (it never started)"), int(attempts or 0)


def _forget(rid: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(f"{rid}:", del_by_prefix=True, namespace=KV_NAMESPACE)


def _loss(error: Exception) -> str:
    """Why a task was lost, in a few words."""
    from ray import exceptions as rx

    known = [(rx.WorkerCrashedError, "its worker process died"), (rx.NodeDiedError, "its node died"),
             (rx.ObjectLostError, "an object it needed was lost"),
             (rx.TaskCancelledError, "it was cancelled"),
             (rx.OutOfMemoryError, "its node ran out of memory")]
    why = next((text for kind, text in known if isinstance(error, kind)), "Ray could not run it")
    return f"{why} ({type(error).__name__})"
