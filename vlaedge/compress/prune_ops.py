"""Torch internals of `vlaedge.compress.prune`: batched forwards, importance statistics, head/channel surgery,
distillation and 2:4 masks. Private: the API is `vlaedge.compress.prune.prune`."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlaedge import progress
from vlaedge.models.device import feed_tensors, module_device
from vlaedge.models.vla import Block

Feeds = dict[str, torch.Tensor]
BATCH = 32  # frames per forward while scoring and calibrating
MIN_SPARSE_INPUTS = 16  # narrower Linear layers stay dense: no sparse-kernel gain, large information loss


def forward(module: nn.Module, args: list[torch.Tensor]) -> list[torch.Tensor]:
    out = module(*args)
    return list(out) if isinstance(out, tuple | list) else [out]


@dataclass
class Calib:
    """Calibration frames and how to read the policy's outputs."""

    feeds: Feeds  # input name -> (N, ...) tensor
    names: list[str]  # input names in call order
    logits: list[bool]  # per output: action-token logits (else actions)
    noise: tuple[str, ...] = ()  # inputs that are standard normal noise (redrawn in every recovery step)
    teacher_outputs: tuple | None = field(default=None, repr=False)  # (teacher, outputs): `run_teacher`

    def __len__(self) -> int:
        return len(self.feeds[self.names[0]])

    def batches(self) -> list[list[torch.Tensor]]:
        return [[self.feeds[k][i:i + BATCH] for k in self.names] for i in range(0, len(self), BATCH)]


def run(module: nn.Module, calib: Calib) -> list[torch.Tensor]:
    """Outputs of `module` on all calibration frames, in batches."""
    with torch.no_grad():
        chunks = [forward(module, args) for args in calib.batches()]
    return [torch.cat(parts) for parts in zip(*chunks, strict=True)]


def run_teacher(teacher: nn.Module, calib: Calib) -> list[torch.Tensor]:
    """`run(teacher, calib)`, computed once per calibration set and teacher (the unpruned policy is never
    changed, and every attempt and its recovery compare with the same outputs)."""
    if calib.teacher_outputs is None or calib.teacher_outputs[0] is not teacher:
        calib.teacher_outputs = (teacher, run(teacher, calib))
    return calib.teacher_outputs[1]


def as_actions(out: torch.Tensor, logits: bool) -> torch.Tensor:
    """A smooth action view of an output: logits become the softmax-expected bin centre in [-1, 1]."""
    if not logits:
        return out
    bins = out.shape[-1]
    centres = (torch.arange(bins, dtype=out.dtype, device=out.device) + 0.5) / bins * 2.0 - 1.0
    return out.softmax(-1) @ centres


def output_distance(outs: list[torch.Tensor], refs: list[torch.Tensor], logits: list[bool]) -> float:
    """Mean absolute difference of the action views of two sets of outputs."""
    return float(sum((as_actions(o, lg) - as_actions(r, lg)).abs().mean()
                     for o, r, lg in zip(outs, refs, logits, strict=True)))


def distill_loss(outs: list[torch.Tensor], refs: list[torch.Tensor], logits: list[bool]) -> torch.Tensor:
    """KL(teacher || student) over bins for logits, L1 for actions; summed over outputs."""
    total = outs[0].new_zeros(())
    for o, r, lg in zip(outs, refs, logits, strict=True):
        if lg:
            kl = F.kl_div(o.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="none")
            total = total + kl.sum(-1).mean()
        else:
            total = total + F.l1_loss(o, r)
    return total


# ---- importance ------------------------------------------------------------------------------------


@dataclass
class UnitStats:
    """Mean of each head's o_proj contribution and of each MLP channel's activation, over every token
    position of every call (all flow steps): what a removed unit is replaced by."""

    tokens: int = 0  # token positions seen
    head_sum: torch.Tensor | None = None  # (nh, D): sum over tokens of W_o[:, head] @ y_head
    mlp_sum: torch.Tensor | None = None  # (H,): sum over tokens of the GELU activation (fc2 input)

    def head_mean(self) -> torch.Tensor:
        return self.head_sum / self.tokens

    def mlp_mean(self) -> torch.Tensor:
        return self.mlp_sum / self.tokens


def _head_hook(stats: UnitStats, attn):
    def hook(module, args):
        y = args[0].detach().reshape(-1, attn.num_heads, attn.head_dim)  # (M, nh, hd)
        w = module.weight.detach().view(-1, attn.num_heads, attn.head_dim)  # (D, nh, hd)
        s = torch.einsum("mhk,dhk->hd", y, w)  # (nh, D)
        stats.head_sum = s if stats.head_sum is None else stats.head_sum + s
        stats.tokens += y.shape[0]
    return hook


def _mlp_hook(stats: UnitStats):
    def hook(module, args):
        s = args[0].detach().reshape(-1, module.in_features).sum(0)  # (H,)
        stats.mlp_sum = s if stats.mlp_sum is None else stats.mlp_sum + s
    return hook


def unit_statistics(module: nn.Module, blocks: list[Block], calib: Calib) -> list[UnitStats]:
    """Runs the calibration frames through `module` and collects each block's unit means."""
    stats = [UnitStats() for _ in blocks]
    handles = []
    for block, s in zip(blocks, stats, strict=True):
        handles.append(block.attn.o_proj.register_forward_pre_hook(_head_hook(s, block.attn)))
        handles.append(block.mlp.fc2.register_forward_pre_hook(_mlp_hook(s)))
    try:
        run(module, calib)
    finally:
        for h in handles:
            h.remove()
    return stats


PROBES = 16  # outputs per frame above this are scored through this many random projections


def taylor_scores(module: nn.Module, blocks: list[Block], calib: Calib, stats: list[UnitStats],
                  seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(head scores, channel scores) per block: the first-order change of every output of every frame
    when the unit is removed and replaced by its mean, summed as |change| over outputs and frames.

    A removed channel c turns fc2's input a[t, c] into its mean; a removed head h turns its o_proj
    contribution into its mean. Through the gradients g of one output this changes it by
    sum_t g_a[t, c] * (mean_c - a[t, c]) and sum_t g_z[t] . mean_h - <g_y[t, h], y[t, h]>, summed over
    every call of the block (all flow steps). The outputs are the action views (logits: expected bin).
    """
    caps: list[dict[str, list[torch.Tensor]]] = [{"y": [], "z": [], "a": []} for _ in blocks]
    handles = []
    for block, cap in zip(blocks, caps, strict=True):
        handles.append(block.attn.o_proj.register_forward_hook(_capture(cap, "y", "z")))
        handles.append(block.mlp.fc2.register_forward_hook(_capture(cap, "a", None)))
    device = module_device(module)
    scores = [(torch.zeros(b.attn.num_heads, device=device),
               torch.zeros(b.mlp.fc1.out_features, device=device)) for b in blocks]
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same probes whatever the device
    try:
        for args in progress.track(calib.batches(), "prune: importance scores, calibration batches"):
            for cap in caps:
                for v in cap.values():
                    v.clear()
            with torch.enable_grad():
                view = output_view(forward(module, args), calib.logits, gen)
                tensors = [t for cap in caps for key in ("y", "z", "a") for t in cap[key]]
                for _, column in per_output_grads(view, tensors):
                    grads = iter(column)
                    for block, cap, st, (hs, ms) in zip(blocks, caps, stats, scores, strict=True):
                        g = {key: [next(grads) for _ in cap[key]] for key in ("y", "z", "a")}
                        hs += _head_change(block.attn, cap, g, st.head_mean()).abs().sum(0)
                        ms += _channel_change(cap, g, st.mlp_mean()).abs().sum(0)
    finally:
        for h in handles:
            h.remove()
    return scores


GRAD_BYTES = 512 * 2**20  # per vmapped backward: the gradients of this many bytes are held at once


def per_output_grads(view: torch.Tensor, tensors: list[torch.Tensor], allow_unused: bool = False):
    """Yields (o, [d view[:, o].sum() / d t for t in tensors]) for every column o of `view` (B, O).

    The columns go through one vmapped backward per chunk (`is_grads_batched`), as many columns per chunk
    as keep the gradients under `GRAD_BYTES`: the same gradients as one backward per column, with the
    per-call overhead paid once per chunk (2.7x less CPU time on a 6.8M-parameter policy). A graph with
    an op that has no batching rule falls back to one backward per column."""
    size = sum(t.numel() * t.element_size() for t in tensors) or 1
    chunk = max(1, min(view.shape[1], GRAD_BYTES // size))
    for start in range(0, view.shape[1], chunk):
        cols = torch.arange(start, min(start + chunk, view.shape[1]), device=view.device)
        seeds = torch.zeros(len(cols), *view.shape, dtype=view.dtype, device=view.device)
        seeds[torch.arange(len(cols), device=view.device), :, cols] = 1.0
        try:
            grads = torch.autograd.grad(view, tensors, seeds, retain_graph=True, is_grads_batched=True,
                                        allow_unused=allow_unused)
        except RuntimeError:  # vmap could not batch an op of this graph's backward
            for o in cols.tolist():
                yield o, torch.autograd.grad(view[:, o].sum(), tensors, retain_graph=True,
                                             allow_unused=allow_unused)
            continue
        for j, o in enumerate(cols.tolist()):
            yield o, [None if g is None else g[j] for g in grads]


def output_view(outs: list[torch.Tensor], logits: list[bool], gen: torch.Generator) -> torch.Tensor:
    """(B, O) action views of all outputs; above `PROBES` columns, that many random projections."""
    view = torch.cat([as_actions(o, lg).reshape(len(o), -1) for o, lg in zip(outs, logits, strict=True)], 1)
    if view.shape[1] <= PROBES:
        return view
    return view @ torch.randn(view.shape[1], PROBES, generator=gen).to(view.device)  # CPU draws: same probes


def _capture(cap: dict, input_key: str, output_key: str | None):
    def hook(module, args, out):
        cap[input_key].append(args[0])
        if output_key:
            cap[output_key].append(out)
    return hook


def _head_change(attn, cap: dict, g: dict, mean_contrib: torch.Tensor) -> torch.Tensor:
    """(B, nh) first-order output change per frame when each head is replaced by its mean."""
    total = 0.0
    for y, gy, gz in zip(cap["y"], g["y"], g["z"], strict=True):
        B, N = y.shape[:2]
        at_mean = torch.einsum("bnd,hd->bh", gz, mean_contrib)
        actual = (gy * y.detach()).reshape(B, N, attn.num_heads, attn.head_dim).sum((1, 3))
        total = total + at_mean - actual
    return total


def _channel_change(cap: dict, g: dict, mean_act: torch.Tensor) -> torch.Tensor:
    """(B, H) first-order output change per frame when each channel is replaced by its mean."""
    total = 0.0
    for a, ga in zip(cap["a"], g["a"], strict=True):
        total = total + torch.einsum("bnh,h->bh", ga, mean_act) - (ga * a.detach()).sum(1)
    return total


SHORTLIST = 4  # layers whose skip effect is measured in each greedy round (the lowest Block Influence)
SKIP_FRAMES = 64  # calibration frames the shortlisted skips are measured on


def _first(x):
    return x[0] if isinstance(x, tuple | list) else x


def block_influence(module: nn.Module, layers: list[nn.Module], calib: Calib) -> list[float]:
    """ShortGPT's Block Influence of each layer: 1 - the mean cosine similarity of its input and output
    hidden states over every token of every call on the calibration frames, from one forward pass
    (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
    arXiv:2403.03853, eq. 1). Low: the layer barely turns the residual stream. A layer whose output is
    not its input's shape gets +inf."""
    sums, counts = [0.0] * len(layers), [0] * len(layers)

    def hook(i):
        def fn(mod, args, kwargs, out):
            x = args[0] if args else next(iter(kwargs.values()), None)
            y = _first(out)
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape:
                sums[i] = math.inf
                return
            cos = F.cosine_similarity(x.reshape(-1, x.shape[-1]).float(), y.reshape(-1, y.shape[-1]).float(),
                                      dim=-1)
            sums[i] += float(cos.sum())
            counts[i] += cos.numel()
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        run(module, calib)
    finally:
        for h in handles:
            h.remove()
    return [math.inf if s == math.inf or not n else 1.0 - s / n for s, n in zip(sums, counts, strict=True)]


def least_skip_effect(module: nn.Module, candidates: list[nn.Module], influence: dict[int, float],
                      calib: Calib, refs: list[torch.Tensor]) -> int:
    """Index of the candidate layer to remove: of the `SHORTLIST` with the lowest Block Influence
    (`influence`: layer id -> BI), the one whose skipping moves the outputs (`refs`, on `calib`) least."""
    order = sorted(range(len(candidates)), key=lambda j: influence[id(candidates[j])])[:SHORTLIST]
    scores = [skip_effect(module, candidates[j], calib, refs) for j in order]
    return order[int(np.argmin(scores))]


def subset(calib: Calib, frames: int) -> Calib:
    """The first `frames` calibration frames."""
    return Calib({k: v[:frames] for k, v in calib.feeds.items()}, calib.names, calib.logits, calib.noise)


def skip_effect(module: nn.Module, block: nn.Module, calib: Calib, refs: list[torch.Tensor]) -> float:
    """How far the outputs move from `refs` when `block` is skipped (its first output replaced by its
    first input, positional or keyword)."""
    def identity(mod, args, kwargs, out):
        x = args[0] if args else next(iter(kwargs.values()))
        return (x, *out[1:]) if isinstance(out, tuple) else x

    handle = block.register_forward_hook(identity, with_kwargs=True)
    try:
        return output_distance(run(module, calib), refs, calib.logits)
    finally:
        handle.remove()


# ---- surgery ---------------------------------------------------------------------------------------


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def keep_heads(attn, keep: torch.Tensor, mean_contrib: torch.Tensor) -> None:
    """Keeps heads `keep` (sorted indices) of an `Attention`; the removed heads' mean contribution
    (nh, D) is folded into the o_proj bias."""
    hd, device = attn.head_dim, mean_contrib.device
    keep = keep.to(device)
    rows = (keep[:, None] * hd + torch.arange(hd, device=device)[None]).flatten()
    removed = torch.ones(attn.num_heads, dtype=torch.bool, device=device)
    removed[keep] = False
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            p = getattr(attn, name)
            setattr(attn, name, _linear(p.weight[rows], p.bias[rows]))
        o = attn.o_proj
        attn.o_proj = _linear(o.weight[:, rows], o.bias + mean_contrib[removed].sum(0))
    attn.num_heads = len(keep)


def keep_channels(mlp, keep: torch.Tensor, mean_act: torch.Tensor) -> None:
    """Keeps hidden channels `keep` (sorted) of an `MLP`; removed channels' mean output goes to fc2's bias."""
    keep = keep.to(mean_act.device)
    removed = torch.ones(mlp.fc1.out_features, dtype=torch.bool, device=mean_act.device)
    removed[keep] = False
    with torch.no_grad():
        fc1, fc2 = mlp.fc1, mlp.fc2
        mlp.fc1 = _linear(fc1.weight[keep], fc1.bias[keep])
        mlp.fc2 = _linear(fc2.weight[:, keep], fc2.bias + fc2.weight[:, removed] @ mean_act[removed])


def lowest(scores: torch.Tensor, remove: int) -> torch.Tensor:
    """Sorted indices of the units kept after removing the `remove` lowest-scoring ones."""
    order = torch.argsort(scores, stable=True)
    return torch.sort(order[remove:]).values


# ---- recovery --------------------------------------------------------------------------------------


def distill(student: nn.Module, teacher: nn.Module, calib: Calib, steps: int, lr: float, batch_size: int,
            masks: list[tuple[torch.Tensor, torch.Tensor]] = (), seed: int = 0) -> dict:
    """Trains `student` to match `teacher` on the calibration frames.

    A fresh `noise` is drawn every step (the same for both), so a flow student learns the teacher's
    whole map rather than the calibration draws; the losses before and after are measured on the frames
    with the noise as given. `masks` (parameter, 0/1 mask) are re-applied after every step.
    """
    gen = torch.Generator().manual_seed(seed)
    n, names, logits = len(calib), calib.names, calib.logits
    before = evaluate(student, teacher, calib)
    snapshot = copy.deepcopy(student.state_dict())
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)  # Adam's first, unscaled steps would shake a trained model
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    start = time.perf_counter()
    student.train()
    for _ in progress.track(range(steps), "prune: recovery (distillation) steps"):
        batch = _batch(calib, min(batch_size, n), gen)
        for k in calib.noise:  # drawn on the CPU (the same noise whatever the device), moved to the feeds'
            batch[k] = torch.randn(batch[k].shape, generator=gen).to(batch[k].device)
        args = [batch[k] for k in names]
        with torch.no_grad():
            refs = forward(teacher, args)
        loss = distill_loss(forward(student, args), refs, logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for p, m in masks:
                p.mul_(m)
    student.eval()
    seconds = time.perf_counter() - start
    after = evaluate(student, teacher, calib)
    kept = after <= before
    if not kept:  # never hand back a student that matches the teacher worse than the pruned one did
        student.load_state_dict(snapshot)
    return {"loss_before": before, "loss_after": after, "kept": kept, "seconds": seconds}


MIX = 0.5  # fraction of each recovery batch whose inputs are recombined across frames


def _batch(calib: Calib, size: int, gen: torch.Generator) -> Feeds:
    """Random calibration frames, augmented: in a `MIX` share of them every input comes from a different
    frame (image of one, instruction of another, ...), and all are jittered. The teacher labels any
    input; without this a pruned nano student memorises 128 frames (calibration loss 0.08 -> 0.006)
    and drifts as far as before on held-out frames."""
    n = len(calib)
    idx = torch.randint(0, n, (size,), generator=gen)
    mixed = int(MIX * size)
    batch = {}
    for k, v in calib.feeds.items():
        own = idx.clone()
        own[:mixed] = torch.randint(0, n, (mixed,), generator=gen)
        batch[k] = _jitter(v[own.to(v.device)], gen)
    return batch


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Camera images shift by up to 2 pixels; float inputs get noise of 5% of their spread."""
    if x.dtype == torch.uint8 and x.ndim == 4:
        dy, dx = (int(d) for d in torch.randint(-2, 3, (2,), generator=gen))
        return torch.roll(x, (dy, dx), dims=(2, 3))
    if x.is_floating_point():
        return x + 0.05 * x.std() * torch.randn(x.shape, generator=gen).to(x.device)
    return x


def evaluate(student: nn.Module, teacher: nn.Module, calib: Calib) -> float:
    """Distillation loss on all calibration frames, noise as given."""
    student.eval()
    with torch.no_grad():
        return float(distill_loss(run(student, calib), run_teacher(teacher, calib), calib.logits))


# ---- 2:4 sparsity ----------------------------------------------------------------------------------


def sparse_candidates(module: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Linear layers that get 2:4 sparsity, and the others with the reason they stay dense."""
    targets, dense = [], {}
    for name, m in module.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if m.in_features < MIN_SPARSE_INPUTS:
            dense[name] = f"{m.in_features} inputs (< {MIN_SPARSE_INPUTS})"
        elif m.in_features % 4 or m.out_features % 4:
            dense[name] = f"{m.out_features}x{m.in_features} is not a multiple of 4"
        else:
            targets.append(name)
    return targets, dense


def sparsegpt(module: nn.Module, calib: Calib, targets: list[str]) -> nn.Module:
    """ModelOpt SparseGPT 2:4 on the `targets` Linear layers, calibrated on `calib`, exported to a plain
    module with the masks folded into the weights."""
    import modelopt.torch.sparsity as mts

    rules = {"nn.Linear": {"*": None, **{t: {} for t in targets}}, "nn.Conv2d": {"*": None}}
    loader = [tuple(args) for args in calib.batches()]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = mts.sparsify(module, mode=[("sparsegpt", rules)],
                              config={"data_loader": loader, "collect_func": lambda batch: batch})
        return mts.export(module)


def magnitude_24(module: nn.Module, targets: list[str]) -> None:
    """Zeroes the two smallest-magnitude weights of every 4 consecutive inputs, in place."""
    layers = dict(module.named_modules())
    with torch.no_grad():
        for name in targets:
            w = layers[name].weight
            groups = w.view(w.shape[0], -1, 4)
            drop = groups.abs().argsort(-1)[..., :2]
            groups.scatter_(-1, drop, 0.0)


def pattern_24(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive input weights has at least 2 zeros."""
    w = weight.detach().reshape(weight.shape[0], -1)
    if w.shape[1] % 4:
        return False
    return bool(((w.view(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def to_tensors(feeds: dict[str, np.ndarray], device="cpu") -> Feeds:
    """numpy feeds as tensors on `device` (the policy's: every forward here runs there)."""
    return dict(zip(feeds, feed_tensors(feeds.values(), device), strict=True))
