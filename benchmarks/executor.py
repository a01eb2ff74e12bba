"""Local vs Ray executor: wall time of the same closed-loop comparison (reference and candidate, N episodes
each, `--per-task` episodes per unit) run by `vlaedge.executor`'s `local` executor (one unit after another,
in this process) and by the `ray` executor on a Ray instance of this machine with `--workers` CPUs, in
alternating rounds (timings on a shared machine drift ~40%: the ratio is taken per round, then its
median). The results of both are checked equal (seeds are fixed per unit before fan-out).

From the same runs it projects, on paper, a bigger cluster: each unit's time (local wall / units), the Ray
overhead on this machine (Ray wall minus the ideal ceil(units / workers) x unit time) and, for W workers,
ceil(units / W) x unit time + that overhead. The projection assumes the units are as long on every node
as here and that a cluster's nodes do not share CPUs; it leaves out Ray's start (`ray start`, paid once).

Run:  .venv/bin/python benchmarks/executor.py [--episodes 40] [--per-task 10] [--workers 2] [--rounds 3]
Writes benchmarks/results/executor.md and executor.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = (4, 8, 32, 100)  # cluster sizes (workers) the projection is made for


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the embedded default policy")
    p.add_argument("--episodes", type=int, default=40, help="closed-loop episodes per policy")
    p.add_argument("--per-task", type=int, default=10, help="episodes per unit (executor.episodes_per_task)")
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray instance (one per task)")
    p.add_argument("--rounds", type=int, default=3, help="alternating local / Ray rounds")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    from vlaedge.check.closedloop import compare_closed_loop
    from vlaedge.check.host import cpu_model
    from vlaedge.check.sendable import RuntimeAct
    from vlaedge.compress.export import export_onnx
    from vlaedge.defaults import default_checkpoint
    from vlaedge.executor import Executor, open_executor, using
    from vlaedge.info import cpu_features
    from vlaedge.models import load_policy
    from vlaedge.recipe import ExportConfig
    from vlaedge.runtimes import open_runtime

    policy = load_policy(args.checkpoint or default_checkpoint())
    work = Path(tempfile.mkdtemp(prefix="bench-executor-"))
    onnx = work / "model.onnx"
    export_onnx(policy, onnx, ExportConfig(), policy.example_inputs(2))
    units = 2 * math.ceil(args.episodes / args.per_task)

    import torch

    default_threads = torch.get_num_threads()

    def run(executor, threads: int | None = None):
        torch.set_num_threads(threads or default_threads)
        executor.episodes_per_task = args.per_task
        with using(executor):
            candidate = RuntimeAct(policy, open_runtime("ort-cpu", policy, onnx, 1), onnx, 1)
            start = time.perf_counter()
            report = compare_closed_loop(policy.act, candidate, args.episodes, 1)
            return time.perf_counter() - start, report.to_dict()

    load_before = os.getloadavg()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
    cluster = open_executor("ray", log=lambda _: None)
    run(cluster)  # warm: workers started, torch imported there (a cluster pays this once, not per run)
    rounds = []
    for _ in range(args.rounds):
        local_s, local = run(Executor())
        single_s, single = run(Executor(), 1)
        ray_s, remote = run(cluster)
        if not local == single == remote:
            raise SystemExit("the Ray executor's results differ from the local executor's")
        rounds.append({"local_s": local_s, "local_1thread_s": single_s, "ray_s": ray_s,
                       "speedup": local_s / ray_s, "speedup_1thread": single_s / ray_s})
    ray.shutdown()
    load_after = os.getloadavg()

    local_s = statistics.median(r["local_s"] for r in rounds)
    single_s = statistics.median(r["local_1thread_s"] for r in rounds)
    ray_s = statistics.median(r["ray_s"] for r in rounds)
    unit_s = single_s / units  # as a Ray worker runs it: one CPU, torch on one thread
    overhead_s = max(0.0, ray_s - math.ceil(units / args.workers) * unit_s)
    projection = {w: math.ceil(units / w) * unit_s + overhead_s for w in PROJECT}
    big_units = 2 * math.ceil(500 / args.per_task)  # a published evaluation: 500 episodes per arm
    big = {w: math.ceil(big_units / w) * unit_s + overhead_s for w in PROJECT}
    result = {
        "command": shlex.join([".venv/bin/python", "benchmarks/executor.py", *(argv or sys.argv[1:])]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_features(),
        "load_before": load_before, "load_after": load_after, "policy": policy.name,
        "episodes": args.episodes, "per_task": args.per_task, "units": units, "workers": args.workers,
        "rounds": rounds, "local_s": local_s, "local_1thread_s": single_s, "ray_s": ray_s,
        "torch_threads": default_threads,
        "speedup_median": statistics.median(r["speedup"] for r in rounds),
        "speedup_1thread_median": statistics.median(r["speedup_1thread"] for r in rounds), "unit_s": unit_s,
        "overhead_s": overhead_s, "projection_s": projection, "projection_500_s": big,
        "projection_500_local_s": big_units * unit_s,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "executor.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "executor.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    rows = "\n".join(f"| {i + 1} | {x['local_s']:.1f} | {x['local_1thread_s']:.1f} | {x['ray_s']:.1f} | "
                     f"{x['speedup']:.2f}x | {x['speedup_1thread']:.2f}x |"
                     for i, x in enumerate(r["rounds"]))
    proj = "\n".join(f"| {w} | {r['projection_s'][w]:.1f} | {r['projection_500_s'][w]:.0f} |"
                     for w in PROJECT)
    return f"""# Local vs Ray executor (closed loop)

`{r['command']}` on {r['date']}: {r['cpu']}, {r['cpu_count']} CPUs, flags {', '.join(r['cpu_flags'])};
load average (1, 5, 15 min) {', '.join(f'{x:.1f}' for x in r['load_before'])} before and
{', '.join(f'{x:.1f}' for x in r['load_after'])} after (the machine is shared: absolute seconds drift,
the per-round ratio is what to read).

Policy {r['policy']}, {r['episodes']} episodes per policy (reference and candidate on ONNX Runtime),
{r['per_task']} episodes per unit: {r['units']} units. Ray: a local instance with {r['workers']} CPUs
(one task each), warmed once (workers started, torch imported) before the rounds. Local and Ray
results were equal in every round.

Local runs twice per round: with torch's default threads here ({r['torch_threads']}), as `vlaedge` runs, and
with torch on 1 thread, as each Ray worker runs a unit (Ray sets one thread per CPU a task reserves).

| round | local (s) | local, 1 thread (s) | Ray, {r['workers']} workers (s) | local / Ray | 1 thread / Ray |
| --- | --- | --- | --- | --- | --- |
{rows}

Median ratios: **{r['speedup_median']:.2f}x** against the default local run,
**{r['speedup_1thread_median']:.2f}x** against the 1-thread local run (medians: local {r['local_s']:.1f} s,
1 thread {r['local_1thread_s']:.1f} s, Ray {r['ray_s']:.1f} s).

## On paper: a bigger cluster

Per unit {r['unit_s']:.2f} s (1-thread local wall / units); Ray overhead here {r['overhead_s']:.1f} s
(Ray wall minus ceil(units / workers) x unit time). For W workers: ceil(units / W) x unit time +
overhead, assuming each node runs a unit as fast as this machine and the workers do not share cores
(here they share 2 with other processes). A 500-episode-per-arm evaluation is
{2 * math.ceil(500 / r['per_task'])} units: {r['projection_500_local_s']:.0f} s locally.

| workers | this run (s) | 500 episodes per arm (s) |
| --- | --- | --- |
{proj}
"""


if __name__ == "__main__":
    raise SystemExit(main())
