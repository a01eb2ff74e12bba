"""Train a `python`-family policy (an example folder: policy.py + a vlaedge config.json) on the tabletop task.

The same recipe as the reference policy (`vlaedge/sim/train.py`): behaviour cloning on scripted expert
episodes recorded with DART noise, then DAgger rounds (the policy runs closed loop, the expert relabels
every visited frame with its action chunk), AdamW with warm-up and cosine decay, gradient clipping at 1.
What is model-specific is the loss: the module's `training_loss(feeds, actions)` (token cross-entropy,
flow-matching velocity at random t, ...), given the feeds the adapter builds (`PythonPolicy.make_inputs`,
minus `source: noise` inputs) and the expert's action chunks (B, T, A) normalised to [-1, 1].

Usage (from the repository root)::

    .venv/bin/python examples/train.py examples/openvla_style --out runs/openvla_style --threads 1

writes `--out` as a vlaedge checkpoint (config.json, model.safetensors, policy.py, training.json) that
`vlaedge rollout runs/openvla_style --trust-code` evaluates.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vlaedge.models.python import PythonPolicy, PythonPolicySpec
from vlaedge.sim import record_episodes, record_on_policy
from vlaedge.sim.train import adamw_cosine, optimizer_step


@dataclass
class ExampleTrainConfig:
    """How to train an example policy (defaults: the reference policy's recipe)."""

    episodes: int = 1000  # expert demonstrations to record
    steps: int = 3000  # optimiser steps
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate (AdamW, warm-up then cosine)
    weight_decay: float = 0.01
    camera_size: int = 64  # rendered camera side; the adapter resizes to the policy's input
    seed: int = 0  # seeds the demonstrations, the initial weights and the batches
    threads: int = 1  # torch CPU threads (results depend slightly on the thread count)
    dagger_rounds: int = 4  # rounds of on-policy data relabelled by the expert, after BC
    dagger_episodes: int = 250  # closed-loop episodes per DAgger round


def load_example(folder: Path) -> PythonPolicy:
    """A fresh (untrained) policy from `folder`/config.json, its module built by `folder`/policy.py.

    Raises:
        FileNotFoundError: the folder lacks config.json or policy.py.
    """
    spec = PythonPolicySpec.model_validate(json.loads((folder / "config.json").read_text()))
    attr = spec.factory.partition(":")[2]
    source = importlib.util.spec_from_file_location(f"example_{folder.name}", folder / "policy.py")
    module = importlib.util.module_from_spec(source)
    sys.modules[source.name] = module
    source.loader.exec_module(module)
    return PythonPolicy(spec, module=getattr(module, attr)(**spec.factory_kwargs), root=folder)


def train_example(folder: Path, config: ExampleTrainConfig) -> tuple[PythonPolicy, dict]:
    """Records demonstrations and trains the example policy in `folder` on them.

    Args:
        folder: the example: policy.py (a factory whose module has `training_loss(feeds, actions)`)
            and a vlaedge python spec in config.json.
        config: the recipe.

    Returns:
        The trained policy (eval mode) and stats: final loss (mean of the last 100 steps), seconds of
        training (recording and DAgger roll-outs included), frames, episodes.
    """
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    policy = load_example(folder)
    start = time.perf_counter()
    episodes = record_episodes(config.episodes, seed=config.seed, image_size=config.camera_size)
    data = _arrays(policy, episodes)
    model = policy.module.train()
    opt, sched = adamw_cosine(model, config.lr, config.weight_decay, config.steps)
    rng = np.random.default_rng(config.seed)
    rounds, losses = config.dagger_rounds, []
    phase_ends = {config.steps * (r + 1) // (rounds + 1): r for r in range(rounds)}
    for step in range(config.steps):
        if step in phase_ends:
            model.eval()
            frames, chunks = record_on_policy(policy.act, config.dagger_episodes,
                                              seed=config.seed * 1000 + phase_ends[step] + 1,
                                              horizon=policy.action_spec.chunk, image_size=config.camera_size)
            model.train()
            extra = _feeds(policy, frames, chunks)
            data = {k: torch.cat([data[k], extra[k]]) for k in data}
        idx = torch.from_numpy(rng.integers(0, len(data["actions"]), config.batch_size))
        batch = {k: v[idx] for k, v in data.items()}
        losses.append(optimizer_step(model, opt, sched, model.training_loss(batch, batch.pop("actions"))))
        if step % 250 == 0 or step == config.steps - 1:
            print(f"step {step}: loss {np.mean(losses[-100:]):.4f} ({time.perf_counter() - start:.0f} s, "
                  f"{len(data['actions'])} frames)", flush=True)
    model.eval()
    stats = {"final_loss": float(np.mean(losses[-100:])), "seconds": time.perf_counter() - start,
             "frames": len(data["actions"]), "episodes": len(episodes)}
    return policy, stats


def _arrays(policy: PythonPolicy, episodes) -> dict[str, torch.Tensor]:
    """Per-frame feeds and chunk targets (the next T actions, the last repeated past the end)."""
    T = policy.action_spec.chunk
    images, states, texts, chunks = [], [], [], []
    for ep in episodes:
        n = len(ep)
        chunks.append(ep.action[np.minimum(np.arange(n)[:, None] + np.arange(T)[None], n - 1)])
        images.append(ep.images)
        states.append(ep.state)
        texts += [ep.instruction] * n
    frames = {"image": np.concatenate(images), "state": np.concatenate(states), "instruction": texts}
    return _feeds(policy, frames, np.concatenate(chunks))


def _feeds(policy: PythonPolicy, frames: dict, chunks: np.ndarray) -> dict[str, torch.Tensor]:
    """The adapter's feeds of `frames` (noise inputs left out) and `actions` normalised to [-1, 1]."""
    feeds = policy.make_inputs(frames)
    for spec in policy.spec.inputs:
        if spec.source == "noise":
            feeds.pop(spec.name)
    low = np.asarray(policy.action_spec.low, np.float32)
    feeds["actions"] = ((chunks - low) / policy.action_spec.range * 2.0 - 1.0).astype(np.float32)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("example", type=Path, help="example folder (policy.py + config.json)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    defaults = ExampleTrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    config = ExampleTrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    policy, stats = train_example(args.example, config)
    out = policy.save(args.out)
    if not (out / "policy.py").exists():
        shutil.copyfile(args.example / "policy.py", out / "policy.py")
    record = {"command": "examples/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": asdict(config), **stats}
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
