"""Structured pruning at real VLA sizes: the openvla_style example scaled up, timed per phase.

Builds `examples/openvla_style/policy.py` with larger SigLIP / Llama configs and seeded random weights
(nothing downloaded, nothing trained), records a small synthetic tabletop dataset (`vlaedge.sim`), and
runs `vlaedge.compress.prune.prune` with the `cpu-pruned-int8` recipe's `prune:` section (drift-bounded:
128 ranking frames + 128 held-out frames), timing each phase (`TIMED`). Random weights: the figures are
times and memory, not accuracy (drift on random weights says nothing; the trained examples judge that).

Sizes (`--size`):
    6m     SigLIP 4 x 256 (MLP 768, 8 heads) + Llama 4 x 256 (MLP 768, 8 q / 4 kv heads): ~6.8 M
    100m   SigLIP 6 x 512 (MLP 2048, 8 heads) + Llama 12 x 768 (MLP 2048, 12 q / 4 kv heads): ~101 M

Usage:
    .venv/bin/python benchmarks/prune_scale.py --size 6m [--attempts 1] [--steps 100] [--threads 2]
    /usr/bin/time -v .venv/bin/python benchmarks/prune_scale.py --size 100m --json out.json

`--attempts 1` times one attempt (the recipe allows 3; each is a full re-prune from the unpruned
policy). Run it against another checkout (e.g. the code before a change) with `PYTHONPATH=that/checkout`.
Results: benchmarks/results/prune-scale.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "openvla_style"

SIZES = {
    "6m": {"vision_config": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                             "num_attention_heads": 8},
           "text_config": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                           "num_attention_heads": 8, "num_key_value_heads": 4}},
    "100m": {"vision_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 6,
                               "num_attention_heads": 8},
             "text_config": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                             "num_attention_heads": 12, "num_key_value_heads": 4}},
}


TIMED = {  # phase -> (module, function): every call of it is timed, summed over attempts
    "layer scoring": ("vlaedge.compress.prune_modules", "_remove_layers"),
    "MLP discovery (dependency graphs)": ("vlaedge.compress.prune_modules", "find_channels"),
    "unit means": ("vlaedge.compress.prune_modules", "unit_means"),
    "importance": ("vlaedge.compress.prune_modules", "taylor_scores"),
    "recovery (incl. before/after loss)": ("vlaedge.compress.prune", "_recover"),
    "held-out drift judge": ("vlaedge.pipeline", "HeldOutDrift.__call__"),
    "FLOP count": ("vlaedge.compress.prune", "count_flops"),
}


def time_phases() -> dict[str, list[float]]:
    """Wraps the `TIMED` functions so that their calls add up in the returned dict: phase -> [wall
    seconds, process CPU seconds (all threads)]. On a shared machine the CPU seconds are the steadier
    figure: wall time grows with whatever else runs."""
    import functools
    import importlib

    spent: dict[str, list[float]] = {}
    for phase, (module_name, qualname) in TIMED.items():
        owner = importlib.import_module(module_name)
        *path, attr = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        fn = getattr(owner, attr, None)
        if fn is None:
            continue

        def timed(*a, _fn=fn, _phase=phase, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                wall, cpu = spent.setdefault(_phase, [0.0, 0.0])
                spent[_phase] = [wall + time.perf_counter() - t, cpu + time.process_time() - c]

        setattr(owner, attr, functools.wraps(fn)(timed))
    return spent


def build_policy(size: str, seed: int):
    """The scaled openvla_style policy behind the python adapter, weights seeded."""
    import torch

    from vlaedge.models.python import PythonPolicy, PythonPolicySpec

    spec = json.loads((EXAMPLE / "config.json").read_text())
    spec["factory_kwargs"] = {**spec.get("factory_kwargs", {}), **SIZES[size]}
    torch.manual_seed(seed)
    return PythonPolicy(PythonPolicySpec.model_validate(spec), root=EXAMPLE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="6m")
    p.add_argument("--attempts", type=int, default=1, help="prune.max_attempts (recipe: 3)")
    p.add_argument("--steps", type=int, default=None, help="prune.recover.steps (default: the recipe's)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--episodes", type=int, default=40, help="synthetic tabletop episodes recorded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from vlaedge.compress.prune import prune
    from vlaedge.data import EpisodeDataset
    from vlaedge.models.vla import count_parameters
    from vlaedge.pipeline import prune_feeds
    from vlaedge.recipe import load_recipe
    from vlaedge.sim import record_episodes

    t0 = time.perf_counter()
    policy = build_policy(args.size, args.seed)
    built = time.perf_counter() - t0
    episodes = record_episodes(args.episodes, seed=args.seed + 1, image_size=32)
    dataset = EpisodeDataset.from_episodes(episodes, fps=10)
    recipe = load_recipe(str(ROOT / "recipes" / "cpu-pruned-int8.yaml"))
    update = {"max_attempts": args.attempts}
    if args.steps is not None:
        update["recover"] = recipe.prune.recover.model_copy(update={"steps": args.steps})
    config = recipe.prune.model_copy(update=update)
    feeds, judge = prune_feeds(policy, dataset, config)

    phases = time_phases()
    start, cpu = time.perf_counter(), time.process_time()
    result = prune(policy, config, feeds, judge=judge)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    rec = result.recovery
    figures = {
        "size": args.size, "params": count_parameters(policy.module), "params_after": result.params_after,
        "build_s": round(built, 1), "prune_s": round(total, 1), "prune_cpu_s": round(cpu, 1),
        "attempts": len(result.attempts),
        "phases_wall_cpu_s": {k: [round(v, 1) for v in wc] for k, wc in phases.items()},
        "recovery_steps": rec.steps if rec else 0,
        "recovery_s_per_step": round(rec.seconds_per_step, 3) if rec else None,
        "drift_mean_pct": [round(a.drift_mean_pct, 2) for a in result.attempts],
        "threads": args.threads, "cpu": _cpu(), "python": platform.python_version(),
        "torch": torch.__version__, "vlaedge": str(Path(sys.modules["vlaedge"].__file__).parent.parent),
    }
    print(result.summary())
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = re.search(r"model name\s*:\s*(.*)", info)
    flags = re.search(r"flags\s*:\s*(.*)", info)
    known = flags.group(1).split() if flags else []
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in known]
    return f"{name.group(1).strip() if name else '?'} ({', '.join(have)})"


if __name__ == "__main__":
    sys.exit(main())
