"""Training the reference VLA on the built-in tabletop task by behaviour cloning.

Only used to make the embedded default policy and the briefly trained test policies: vlaedge is a
compression toolkit, not a training framework. Demonstrations come from the scripted expert with
DART-style noise injection (the executed action is perturbed, the label stays clean), which gives the
cloned policy recovery data; then DAgger rounds run the policy itself and let the expert relabel the
states it reaches. The gripper is trained as a decision (logistic loss), the motion by L1.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlaedge.data import Episode
from vlaedge.models.reference import ReferencePolicy


@dataclass
class TrainConfig:
    """How to train a reference policy on the tabletop task."""

    size: str = "nano"  # named reference size (see vlaedge.models.vla.SIZES)
    head: str = "chunk"  # tokens | chunk | flow
    episodes: int = 1000  # expert demonstrations to record
    steps: int = 3000  # optimiser steps
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate (AdamW, warm-up then cosine)
    weight_decay: float = 0.01
    image_size: int = 32  # policy input side; camera frames are resized to it by the adapter
    camera_size: int = 64  # side of the rendered camera frames (the env's default, like calibration/)
    seed: int = 0  # seeds the demonstrations, the initial weights and the batches
    ignore_instruction: bool = False  # ablation: feed a constant instruction
    threads: int = 0  # torch CPU threads; 0 = all cores (results depend slightly on the thread count)
    dagger_rounds: int = 4  # rounds of on-policy data relabelled by the expert (DAgger), after BC
    dagger_episodes: int = 250  # closed-loop episodes per DAgger round


def train_policy(config: TrainConfig, episodes: list[Episode] | None = None,
                 progress: bool = True) -> tuple[ReferencePolicy, dict]:
    """Records expert demonstrations (unless given) and trains a reference policy on them.

    Args:
        config: what to train.
        episodes: demonstrations to use instead of recording `config.episodes` new ones.
        progress: show a progress bar.

    Returns:
        The trained policy (eval mode) and training stats (final loss, seconds, frames).

    Example:
        >>> policy, stats = train_policy(TrainConfig(size="nano", head="flow", steps=500))
    """
    from vlaedge.sim import VOCABULARY, record_episodes, record_on_policy

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    if episodes is None:
        episodes = record_episodes(config.episodes, seed=config.seed, image_size=config.camera_size)
    policy = ReferencePolicy.build(config.size, config.head, vocab=list(VOCABULARY),
                                   image_size=config.image_size)
    data = _training_arrays(policy, episodes, config.ignore_instruction)
    model = policy.module.train()
    opt, sched = adamw_cosine(model, config.lr, config.weight_decay, config.steps)
    rng = np.random.default_rng(config.seed)
    start, losses = time.perf_counter(), []
    # DAgger: after each phase but the last, the policy runs closed loop on new seeds and the expert
    # relabels every frame it visited; training continues on the aggregate.
    rounds = config.dagger_rounds
    phase_ends = {config.steps * (r + 1) // (rounds + 1): r for r in range(rounds)}
    for step in _progress(range(config.steps), progress, f"training {config.size}/{config.head}"):
        if step in phase_ends:
            model.eval()
            with torch.no_grad():
                act = constant_instruction(policy.act) if config.ignore_instruction else policy.act
                frames, chunks = record_on_policy(
                    act, config.dagger_episodes, seed=config.seed * 1000 + phase_ends[step] + 1,
                    horizon=policy.config.chunk, image_size=config.camera_size)
            model.train()
            extra = _feeds(policy, frames, chunks, config.ignore_instruction)
            data = {k: torch.cat([data[k], extra[k]]) for k in data}
        idx = rng.integers(0, len(data["action"]), config.batch_size)
        losses.append(optimizer_step(model, opt, sched, _loss(model, {k: v[idx] for k, v in data.items()})))
    model.eval()
    stats = {"final_loss": float(np.mean(losses[-100:])), "seconds": time.perf_counter() - start,
             "frames": len(data["action"]), "episodes": len(episodes)}
    return policy, stats


def _training_arrays(policy: ReferencePolicy, episodes: list[Episode], ignore_instruction: bool) -> dict:
    """Per-frame model inputs and normalised action-chunk targets (B, T, A) as torch tensors."""
    T = policy.config.chunk
    images, states, texts, chunks = [], [], [], []
    for ep in episodes:
        n = len(ep)
        # chunk targets: the next T actions, the last one repeated past the episode's end
        idx = np.minimum(np.arange(n)[:, None] + np.arange(T)[None], n - 1)
        chunks.append(ep.action[idx])
        images.append(ep.images)
        states.append(ep.state)
        texts += [ep.instruction] * n
    frames = {"image": np.concatenate(images), "state": np.concatenate(states), "instruction": texts}
    return _feeds(policy, frames, np.concatenate(chunks), ignore_instruction)


def _feeds(policy: ReferencePolicy, frames: dict, chunks: np.ndarray, ignore_instruction: bool) -> dict:
    """Model inputs of `frames` and their normalised action-chunk targets, as torch tensors."""
    if ignore_instruction:
        frames = {**frames, "instruction": [""] * len(frames["instruction"])}
    feeds = policy.make_inputs(frames)
    feeds.pop("noise", None)
    feeds["action"] = policy.normalise(chunks)
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def constant_instruction(act):
    """`act` with every instruction replaced by the empty one: the instruction-ablation policy."""
    return lambda frames: act({**frames, "instruction": [""] * len(frames["instruction"])})


def _loss(model, batch: dict) -> torch.Tensor:
    head = model.cfg.head
    target = batch["action"]  # (B, T, A) in [-1, 1]
    ctx = model.encode(batch["image"], batch["instruction_ids"], batch["state"])
    if head == "tokens":
        bins = model.cfg.num_bins
        logits = model.action_head(ctx).view(*target.shape, bins)
        labels = ((target + 1) * 0.5 * bins).long().clamp(0, bins - 1)
        return F.cross_entropy(logits.reshape(-1, bins), labels.reshape(-1))
    if head == "chunk":
        # the model outputs tanh(z). Continuous dims: L1. Gripper dims are open/close decisions: a
        # logistic loss on the same z (tanh(z) = 2 sigmoid(2z) - 1), whose gradient does not vanish
        # where tanh saturates; with L1 a policy that learnt "always open" could not unlearn it.
        z = model.action_head(ctx)
        grip = torch.zeros(target.shape[-1], dtype=torch.bool)
        grip[list(model.cfg.gripper_dims)] = True
        continuous = F.l1_loss(torch.tanh(z[..., ~grip]), target[..., ~grip], reduction="sum")
        decisions = F.binary_cross_entropy_with_logits(2 * z[..., grip], (target[..., grip] > 0).float(),
                                                       reduction="sum")
        return (continuous + decisions) / target.numel()
    noise = torch.randn_like(target)  # rectified flow: x_t = (1-t) noise + t action, v = action - noise
    t = torch.rand(target.shape[0])
    x_t = (1 - t[:, None, None]) * noise + t[:, None, None] * target
    return F.mse_loss(model.action_head(x_t, t, ctx), target - noise)


def _progress(iterable, enabled: bool, description: str):
    if not enabled:
        yield from iterable
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        yield from bar.track(iterable, description=description)


def adamw_cosine(model, lr: float, weight_decay: float, steps: int):
    """AdamW with a linear warm-up over the first 5% of `steps`, then a cosine decay to 0 at `steps`:
    the schedule every training run here uses. Returns (optimizer, scheduler); step both once per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + np.cos(np.pi * min(1.0, s / steps))))
    return opt, sched


def optimizer_step(model, opt, sched, loss) -> float:
    """One training step on `loss`: backward, gradients clipped to norm 1.0, optimizer and schedule
    stepped. Returns the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()
