"""Structured pruning of the modules real VLAs are built from, for any `python`-family policy.

What is found and what it can lose (`find_units`):

- **Attention heads.** Hugging Face-style attention (`q_proj`, `k_proj`, `v_proj` and `o_proj` or
  `out_proj` Linears: Llama, Gemma, Qwen2/3 decoder layers, SigLIP/ViT encoder layers, hand-written GQA
  blocks); the head size is the module's int `head_dim`, its config's, or the query width over the head
  count (`num_heads`/`n_heads`/... or `config.num_attention_heads`). Grouped-query attention loses
  *whole key/value groups together with their query heads*, so `num_key_value_groups` (query heads per
  kv head) stays what the forward expects; without GQA a group is one head. `nn.MultiheadAttention`
  (also inside `nn.TransformerEncoderLayer`) becomes a
  `PrunedMultiheadAttention` with the same math and parameter names (`vlaedge.models.pruned_shapes`).
- **MLP channels** of any Linear -> activation (-> gate product) -> Linear inside one module (Llama-style
  `gate/up/down_proj`, SigLIP `fc1/fc2`, `nn.TransformerEncoderLayer` `linear1/linear2`, a plain
  `nn.Sequential`): the coupled layers are found by Torch-Pruning's `DependencyGraph`, built on that one
  module with the input it received on a calibration frame, and pruned by its group (a group that reaches
  anything but Linear in/out channels and elementwise ops is not an MLP channel and is left alone).
- **Whole layers** of a `nn.ModuleList` of two or more layers of one class whose output has the shape of
  its input (residual blocks), greedily by how far skipping one moves the outputs, measured for the few
  layers with the lowest Block Influence (ShortGPT; `vlaedge.compress.prune_ops.block_influence`).

Why not Torch-Pruning for everything: its `DependencyGraph` over a whole transformers Llama policy did not
finish in 14 minutes here (2-core CPU), and its head pruning neither keeps GQA groups with our
calibration importance nor folds a removed unit's mean into the next bias; heads are therefore our own
bookkeeping (rows of q/k/v, columns of o), using Torch-Pruning's Linear pruning functions for the cuts.

Importance is the reference path's (`vlaedge.compress.prune_ops`): the first-order change of every
output on the calibration frames when a unit is replaced by its mean, summed as |change| over outputs
and frames; the removed units' mean contribution is folded into the following Linear's bias (added
when the layer had none). Private: the API is `vlaedge.compress.prune.prune`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from vlaedge import progress
from vlaedge.compress import prune_ops as ops
from vlaedge.errors import VlaedgeError
from vlaedge.models.device import module_device
from vlaedge.models.pruned_shapes import RECORD_VERSION, PrunedMultiheadAttention

FIX_HEADS = ("set prune.heads: 0 (MLP channels and layers can still be pruned), or use prune.method: "
             "sparsity-2:4")


@dataclass
class Heads:
    """An attention module: `groups` kv groups of `per_group` query heads of `head_dim` each."""

    module: nn.Module
    q: str  # Linear names inside `module` ("" for packed in_proj_weight)
    k: str
    v: str
    o: str
    head_dim: int
    groups: int
    per_group: int


@dataclass
class Channels:
    """An MLP: hidden channels produced by the `inputs` Linears and read by `output`."""

    inputs: list[nn.Linear]
    output: nn.Linear
    group_of: object  # callable(removed idxs) -> a Torch-Pruning group over the coupled layers


@dataclass
class Units:
    heads: list[Heads] = field(default_factory=list)
    channels: list[Channels] = field(default_factory=list)
    stacks: list[tuple[str, nn.ModuleList]] = field(default_factory=list)


# ---- finding units ---------------------------------------------------------------------------------


def _linear(module: nn.Module, name: str) -> nn.Linear | None:
    m = getattr(module, name, None)
    return m if isinstance(m, nn.Linear) else None


QUERY_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")  # int attributes: query heads
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")  # ... key/value heads


def _head_dim(m: nn.Module) -> int | None:
    """The head size of a q/k/v/o attention module: its int `head_dim`, else its config's `head_dim`, else
    the query width over the query head count (an attribute of `QUERY_HEADS`, or the config's
    `num_attention_heads`)."""
    config = getattr(m, "config", None)
    for owner in (m, config):
        hd = getattr(owner, "head_dim", None)
        if isinstance(hd, int) and hd > 0:
            return hd
    for owner, names in ((m, QUERY_HEADS), (config, ("num_attention_heads",))):
        for attr in names:
            n = getattr(owner, attr, None)
            if isinstance(n, int) and n > 0 and m.q_proj.out_features % n == 0:
                return m.q_proj.out_features // n
    return None


def _hf_heads(name: str, m: nn.Module) -> Heads | None:
    if not all(_linear(m, n) for n in ("q_proj", "k_proj", "v_proj")):
        return None
    o = "o_proj" if _linear(m, "o_proj") else "out_proj" if _linear(m, "out_proj") else None
    if o is None:
        raise VlaedgeError(f"prune: cannot remove heads of {name or 'the model'} ({type(m).__name__}): "
                           "it has q/k/v_proj but no o_proj/out_proj Linear", FIX_HEADS)
    hd = _head_dim(m)
    if hd is None:
        raise VlaedgeError(f"prune: cannot remove heads of {name or 'the model'} ({type(m).__name__}): "
                           "its head size is unknown (no int head_dim, no head count in "
                           f"{'/'.join(QUERY_HEADS)}, no config.num_attention_heads)",
                           FIX_HEADS + "; or give the module a head_dim or num_heads attribute")
    nq, nkv = m.q_proj.out_features // hd, m.k_proj.out_features // hd
    if nq * hd != m.q_proj.out_features or nkv * hd != m.v_proj.out_features or not nkv or nq % nkv:
        raise VlaedgeError(f"prune: cannot remove heads of {name} ({type(m).__name__}): q/k/v widths "
                           f"{m.q_proj.out_features}/{m.k_proj.out_features}/{m.v_proj.out_features} do not "
                           f"split into heads of {hd}", FIX_HEADS)
    return Heads(m, "q_proj", "k_proj", "v_proj", o, hd, nkv, nq // nkv)


def _mha_heads(name: str, m: nn.Module) -> Heads:
    if isinstance(m, nn.MultiheadAttention) and (not m._qkv_same_embed_dim or m.bias_k is not None
                                                  or m.add_zero_attn):
        raise VlaedgeError(f"prune: cannot remove heads of {name} (nn.MultiheadAttention with kdim/vdim, "
                           "bias_k/bias_v or add_zero_attn)", FIX_HEADS)
    return Heads(m, "", "", "", "out_proj", m.head_dim, m.num_heads, 1)


def find_heads(module: nn.Module) -> list[tuple[str, Heads]]:
    """Every attention module whose heads can go; refuses fused-qkv attention it cannot split."""
    found = []
    for name, m in module.named_modules():
        if isinstance(m, nn.MultiheadAttention | PrunedMultiheadAttention):
            found.append((name, _mha_heads(name, m)))
        elif (h := _hf_heads(name, m)) is not None:
            found.append((name, h))
        elif _linear(m, "qkv") and isinstance(getattr(m, "num_heads", None), int):
            raise VlaedgeError(f"prune: cannot remove heads of {name} ({type(m).__name__}): "
                               "a fused qkv Linear",
                               FIX_HEADS + "; or split qkv into q_proj/k_proj/v_proj in the model")
    return found


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention | PrunedMultiheadAttention) or all(
        _linear(m, n) for n in ("q_proj", "k_proj", "v_proj")) or bool(_linear(m, "qkv"))


def _shallow(m: nn.Module) -> bool:
    """Direct Linear children, all children leaves (or attention): small enough to trace."""
    kids = list(m.children())
    return (sum(isinstance(c, nn.Linear) for c in kids) >= 2 and not _is_attention(m)
            and all(_is_attention(c) or not list(c.children()) for c in kids))


def find_channels(module: nn.Module, calib: ops.Calib) -> list[tuple[str, Channels]]:
    """MLP channel groups, from Torch-Pruning dependency graphs of each small module that holds Linears."""
    containers = [(n, m) for n, m in module.named_modules() if _shallow(m)]
    inputs = _first_inputs(module, [m for _, m in containers], calib)
    found = []
    for name, m in containers:
        if id(m) not in inputs:
            continue  # never called on the calibration frames
        args, kwargs = inputs[id(m)]
        graph = tp.DependencyGraph().build_dependency(
            m, example_inputs=(args, kwargs), forward_fn=lambda mod, x: mod(*x[0], **x[1]))
        seen: set = set()
        for child in m.children():
            if not isinstance(child, nn.Linear) or id(child) in seen:
                continue
            group = graph.get_pruning_group(child, tp.prune_linear_out_channels, idxs=[0])
            outs, ins, other = [], [], False
            for dep, _ in group:
                target, how = dep.target.module, getattr(dep.handler, "__name__", "")
                if isinstance(target, nn.Linear) and how == "prune_out_channels":
                    outs.append(target)
                elif isinstance(target, nn.Linear) and how == "prune_in_channels":
                    ins.append(target)
                # elementwise ops and reshapes that keep the channel axis (e.g. a flattened activation)
                # pass channels through; norms, concats and residual adds make the group unsafe
                elif not isinstance(target, tp.ops._ElementWiseOp | tp.ops._ReshapeOp):
                    other = True
            seen.update(id(x) for x in outs)
            if len(ins) == 1 and outs and not other:
                found.append((name, Channels(outs, ins[0], _grouper(graph, child))))
    return found


def _grouper(graph, first: nn.Linear):
    return lambda idxs: graph.get_pruning_group(first, tp.prune_linear_out_channels, idxs=idxs)


def _first_inputs(module: nn.Module, mods: list[nn.Module], calib: ops.Calib) -> dict[int, tuple]:
    """(args, kwargs) each module got on the first calibration frame."""
    got: dict[int, tuple] = {}

    def hook(mod, args, kwargs):
        if id(mod) not in got:
            got[id(mod)] = tuple(_detach(args)), _detach(kwargs)
    _first_frame(module, calib, [m.register_forward_pre_hook(hook, with_kwargs=True) for m in mods])
    return got


def _first_frame(module: nn.Module, calib: ops.Calib, handles: list) -> None:
    """Runs the first calibration frame through `module` with the hooks `handles` registered, then
    removes them."""
    try:
        with torch.no_grad():
            ops.forward(module, [x[:1] for x in calib.batches()[0]])
    finally:
        for h in handles:
            h.remove()


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(_detach(v) for v in x)
    return x


def find_stacks(module: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """ModuleLists of >= 2 layers of one class that hold Linears (transformer layer stacks)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.ModuleList) and len(m) >= 2
            and len({type(x) for x in m}) == 1
            and any(isinstance(s, nn.Linear) for s in m[0].modules())]


def to_pruned_attention(module: nn.Module) -> None:
    """Replaces every nn.MultiheadAttention by a PrunedMultiheadAttention with the same weights (exact),
    so that its out_proj is called as a module (hookable) and its heads can be cut."""
    for name, m in list(module.named_modules()):
        if isinstance(m, nn.MultiheadAttention):
            _mha_heads(name, m)  # refuses what it cannot express
            new = PrunedMultiheadAttention(m.embed_dim, m.num_heads, m.head_dim, m.batch_first,
                                           m.in_proj_bias is not None, m.dropout)
            new.to(next(m.parameters()).device)  # where the student lives (the policy's device)
            new.load_state_dict(m.state_dict())
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, new.train(m.training))
            for owner in module.modules():  # an encoder that would take the nested-tensor fast path
                if isinstance(owner, nn.TransformerEncoder):
                    owner.use_nested_tensor = False


# ---- surgery ---------------------------------------------------------------------------------------


def _add_bias(layer: nn.Linear) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype,
                                              device=layer.weight.device))


def cut_heads(h: Heads, keep_groups: torch.Tensor, mean_contrib: torch.Tensor) -> None:
    """Keeps kv groups `keep_groups` (sorted) with their query heads; the removed query heads' mean
    contribution (nq, D) goes into the output projection's bias."""
    hd, r = h.head_dim, h.per_group
    removed = sorted(set(range(h.groups)) - set(keep_groups.tolist()))
    q_heads = [g * r + j for g in removed for j in range(r)]
    q_rows = [x * hd + i for x in q_heads for i in range(hd)]
    kv_rows = [g * hd + i for g in removed for i in range(hd)]
    o = getattr(h.module, h.o)
    _add_bias(o)
    with torch.no_grad():
        o.bias += mean_contrib[q_heads].sum(0)
    tp.prune_linear_in_channels(o, q_rows)
    if h.q:
        for name, rows in ((h.q, q_rows), (h.k, kv_rows), (h.v, kv_rows)):
            tp.prune_linear_out_channels(getattr(h.module, name), rows)
    else:  # packed in_proj of PrunedMultiheadAttention: [q; k; v] rows
        m, inner = h.module, h.groups * hd
        keep = torch.tensor([i for i in range(3 * inner) if i % inner not in set(q_rows)],
                            device=m.in_proj_weight.device)
        m.in_proj_weight = nn.Parameter(m.in_proj_weight.data[keep].clone())
        if m.in_proj_bias is not None:
            m.in_proj_bias = nn.Parameter(m.in_proj_bias.data[keep].clone())
    new_groups = h.groups - len(removed)
    for names, old, value in ((QUERY_HEADS, h.groups * r, new_groups * r), (KV_HEADS, h.groups, new_groups)):
        for attr in names:  # the counts a forward reads (a count that is not this one is left alone)
            if getattr(h.module, attr, None) == old and isinstance(getattr(h.module, attr), int):
                setattr(h.module, attr, value)
    h.groups = new_groups


def cut_channels(c: Channels, removed: list[int], mean_act: torch.Tensor) -> None:
    """Removes hidden channels `removed`; their mean input to the output Linear goes into its bias."""
    _add_bias(c.output)
    with torch.no_grad():
        c.output.bias += c.output.weight[:, removed] @ mean_act[removed]
    c.group_of(removed).prune()


def record(student: nn.Module, units: Units, removed_layers: dict[str, list[int]],
           attention: list[nn.Module]) -> dict:
    """The `PythonPolicySpec.pruned` record of the shrunk student (format: vlaedge.models.pruned_shapes)."""
    touched = {id(getattr(h.module, n)) for h in units.heads for n in (h.q, h.k, h.v, h.o) if n}
    touched |= {id(x) for c in units.channels for x in (*c.inputs, c.output)}
    out: dict = {"version": RECORD_VERSION, "removed_layers": removed_layers, "attention": {}, "linear": {},
                 "attributes": {}}
    heads = {id(h.module) for h in units.heads}
    for name, m in student.named_modules():
        if id(m) in touched:
            out["linear"][name] = [m.out_features, m.in_features, m.bias is not None]
        if any(m is a for a in attention):
            out["attention"][name] = {"embed_dim": m.embed_dim, "num_heads": m.num_heads,
                                      "head_dim": m.head_dim, "batch_first": m.batch_first,
                                      "bias": m.in_proj_bias is not None}
        elif id(m) in heads:
            attrs = {a: getattr(m, a) for a in (*QUERY_HEADS, *KV_HEADS)
                     if isinstance(getattr(m, a, None), int)}
            if attrs:
                out["attributes"][name] = attrs
        if isinstance(m, nn.TransformerEncoder) and attention:
            out["attributes"].setdefault(name, {})["use_nested_tensor"] = False
        if isinstance(m, nn.TransformerEncoder) and removed_layers:
            out["attributes"].setdefault(name, {})["num_layers"] = len(m.layers)
    return out


# ---- importance ------------------------------------------------------------------------------------


def _frames_first(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, tokens, C): the first axis of size `batch` (batch_first=False layers) moved to the front."""
    axis = next((i for i, n in enumerate(x.shape[:-1]) if n == batch), 0)
    x = x.movedim(axis, 0)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _hooks(units: Units, store: dict[int, list]) -> list:
    def keep(key):
        return lambda mod, args, out: store[key].append((args[0], out))
    handles = []
    for i, h in enumerate(units.heads):
        handles.append(getattr(h.module, h.o).register_forward_hook(keep(i)))
    for j, c in enumerate(units.channels):
        handles.append(c.output.register_forward_hook(keep(len(units.heads) + j)))
    return handles


def unit_means(module: nn.Module, units: Units, calib: ops.Calib) -> list[torch.Tensor]:
    """Per head unit: mean o-projection contribution of each query head (nq, D); per MLP: mean channel
    input of the output Linear (H,); over every token of every call on the calibration frames."""
    store: dict[int, list] = {i: [] for i in range(len(units.heads) + len(units.channels))}
    handles = _hooks(units, store)
    sums: list = [0.0] * len(store)
    counts = [0] * len(store)
    try:
        for args in calib.batches():
            with torch.no_grad():
                ops.forward(module, args)
            for i, h in enumerate(units.heads):
                o = getattr(h.module, h.o)
                for y, _ in store[i]:
                    nq = h.groups * h.per_group
                    y = y.reshape(-1, nq, h.head_dim)
                    sums[i] = sums[i] + torch.einsum("mhk,dhk->hd", y, o.weight.view(-1, nq, h.head_dim))
                    counts[i] += y.shape[0]
            for j in range(len(units.heads), len(store)):
                for a, _ in store[j]:
                    a = a.reshape(-1, a.shape[-1])
                    sums[j], counts[j] = sums[j] + a.sum(0), counts[j] + a.shape[0]
            for v in store.values():
                v.clear()
    finally:
        for handle in handles:
            handle.remove()
    return [s / max(n, 1) for s, n in zip(sums, counts, strict=True)]


def taylor_scores(module: nn.Module, units: Units, calib: ops.Calib, means: list[torch.Tensor],
                  seed: int = 0) -> list[torch.Tensor]:
    """Per head unit (groups,) and per MLP (H,): |first-order change| of every output of every frame
    when the unit is replaced by its mean, summed over outputs and frames (`prune_ops.taylor_scores`;
    a kv group's change is the sum of its query heads' changes)."""
    store: dict[int, list] = {i: [] for i in range(len(means))}
    handles = _hooks(units, store)
    device = module_device(module)
    scores = [torch.zeros(h.groups, device=device) for h in units.heads] + [
        torch.zeros(c.output.in_features, device=device) for c in units.channels]
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same probes whatever the device
    try:
        for args in progress.track(calib.batches(), "prune: importance scores, calibration batches"):
            for v in store.values():
                v.clear()
            with torch.enable_grad():
                view = ops.output_view(ops.forward(module, args), calib.logits, gen)
                pairs = [(i, y, z) for i, v in store.items() for y, z in v]
                tensors = [t for _, y, z in pairs for t in (y, z)]
                for _, grads in ops.per_output_grads(view, tensors, allow_unused=True):
                    for n, (i, y, z) in enumerate(pairs):
                        gy, gz = grads[2 * n], grads[2 * n + 1]
                        if gy is None:
                            continue
                        scores[i] += _change(units, i, y, z, gy, gz, means[i], len(view)).abs().sum(0)
    finally:
        for handle in handles:
            handle.remove()
    return scores


def _change(units: Units, i: int, y, z, gy, gz, mean: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, units) first-order change of one output per frame."""
    y, gy = _frames_first(y.detach(), batch), _frames_first(gy, batch)
    if i >= len(units.heads):  # MLP channel -> its mean
        return torch.einsum("bnh,h->bh", gy, mean) - (gy * y).sum(1)
    h = units.heads[i]
    gz = _frames_first(gz, batch)
    nq = h.groups * h.per_group
    at_mean = torch.einsum("bnd,hd->bh", gz, mean)
    actual = (gy * y).reshape(y.shape[0], y.shape[1], nq, h.head_dim).sum((1, 3))
    return (at_mean - actual).reshape(len(at_mean), h.groups, h.per_group).sum(-1)


def random_scores(rng: np.random.Generator, n: int) -> torch.Tensor:
    return torch.from_numpy(rng.random(n))


# ---- the pass ----------------------------------------------------------------------------------------


@dataclass
class Shrunk:
    """What `shrink` did to the student."""

    record: dict  # PythonPolicySpec.pruned
    blocks_before: list[dict]  # [{"block": "llm.layers.0", "heads": 4, "mlp": 64}, ...] per stack layer
    blocks_after: list[dict]
    removed_blocks: list[str]
    notes: list[str] = field(default_factory=list)  # what could not be done as asked


def shrink(student: nn.Module, config, calib: ops.Calib, ranking: str, rng: np.random.Generator,
           how_many, seed: int = 0) -> Shrunk:
    """Removes `config.blocks` layers, then `config.heads` of the kv groups and `config.mlp` of the MLP
    channels of every unit, from `student` in place (`how_many(n, fraction, what)` -> count removed).

    Raises:
        VlaedgeError: heads/mlp/blocks asked of a model that has no such unit vlaedge can cut (the
            module and its type named where one was found but cannot be cut).
    """
    stacks = find_stacks(student)
    labels = {id(layer): f"{name}.{i}" for name, s in stacks for i, layer in enumerate(s)}
    before = _layer_shapes(student, stacks, labels, calib)
    notes: list[str] = []
    removed = _remove_layers(student, stacks, config.blocks, calib, ranking, rng, labels,
                             bool(config.heads or config.mlp), notes)
    attention: list[nn.Module] = []
    units = Units(stacks=stacks)
    if config.heads:
        to_pruned_attention(student)
        attention = [m for m in student.modules() if isinstance(m, PrunedMultiheadAttention)]
        units.heads = [h for _, h in find_heads(student)]
        if not units.heads:
            raise VlaedgeError("prune: prune.heads is set but the model has no attention vlaedge can cut "
                               "(q/k/v_proj + o_proj/out_proj modules, nn.MultiheadAttention)", FIX_HEADS)
    if config.mlp:
        units.channels = [c for _, c in find_channels(student, calib)]
        if not units.channels:
            raise VlaedgeError("prune: prune.mlp is set but the model has no MLP (Linear -> activation -> "
                               "Linear in one module) vlaedge can cut", "set prune.mlp: 0")
    if units.heads or units.channels:
        means = unit_means(student, units, calib)
        scores = (taylor_scores(student, units, calib, means, seed) if ranking == "importance" else
                  [random_scores(rng, h.groups) for h in units.heads]
                  + [random_scores(rng, c.output.in_features) for c in units.channels])
        for h, s, m in zip(units.heads, scores, means, strict=False):
            n = how_many(h.groups, config.heads, "heads (kv groups)")
            if n:
                cut_heads(h, ops.lowest(s, n), m)
        for c, s, m in zip(units.channels, scores[len(units.heads):], means[len(units.heads):], strict=True):
            n = how_many(c.output.in_features, config.mlp, "mlp")
            if n:
                cut_channels(c, sorted(set(range(len(s))) - set(ops.lowest(s, n).tolist())), m)
    removed_ids = removed.pop("_ids", [])
    rec = record(student, units, removed, attention)
    stacks = find_stacks(student) or stacks
    labels_after = {id(layer): labels[id(layer)] for _, s in stacks for layer in s if id(layer) in labels}
    after = _layer_shapes(student, stacks, labels_after, calib)
    return Shrunk(rec, before, after, [labels[k] for k in removed_ids], notes)


def _layer_shapes(module: nn.Module, stacks, labels: dict[int, str], calib: ops.Calib) -> list[dict]:
    """Query heads and MLP channels of every stack layer."""
    try:
        heads = [h for _, h in find_heads(module)]
    except VlaedgeError:
        heads = []
    channels = [c for _, c in find_channels(module, calib)]
    out = []
    for _, stack in stacks:
        for layer in stack:
            if id(layer) not in labels:
                continue
            inside = {id(m) for m in layer.modules()}
            out.append({"block": labels[id(layer)],
                        "heads": sum(h.groups * h.per_group for h in heads if id(h.module) in inside),
                        "mlp": sum(c.output.in_features for c in channels if id(c.output) in inside)})
    return out


def _residual(module: nn.Module, stacks, calib: ops.Calib) -> set[int]:
    """Layers whose first output has the shape of their first input (skipping them is valid)."""
    ok: set[int] = set()

    def hook(mod, args, kwargs, out):
        x = args[0] if args else next(iter(kwargs.values()), None)
        y = out[0] if isinstance(out, tuple | list) else out
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
            ok.add(id(mod))
    _first_frame(module, calib, [layer.register_forward_hook(hook, with_kwargs=True)
                                 for _, s in stacks for layer in s])
    return ok


def _remove_layers(student: nn.Module, stacks, count: int, calib: ops.Calib, ranking: str,
                   rng: np.random.Generator, labels: dict[int, str], also_units: bool = False,
                   notes: list[str] | None = None) -> dict:
    """Greedily removes the `count` residual layers whose skipping moves the outputs least (never a
    stack's last); returns {stack path: original indices removed, "_ids": [layer ids]}. With fewer
    removable layers than `count`: refused, unless heads or MLP channels are pruned too (`also_units`),
    then as many as can go and a note in `notes`."""
    if not count:
        return {}
    residual = _residual(student, stacks, calib)
    original = {id(layer): i for _, s in stacks for i, layer in enumerate(s)}
    available = sum(len(s) - 1 for _, s in stacks if all(id(x) in residual for x in s))
    if count > available:
        sizes = ", ".join(f"{name} ({len(s)})" for name, s in stacks) or "none"
        what = (f"prune.blocks={count} but the model's residual layer stacks ({sizes}) can give at most "
                f"{available}")
        if not also_units:  # layers were all that was asked
            raise VlaedgeError(f"prune: {what} (every stack keeps one)", "lower prune.blocks")
        notes.append(f"{what} (every stack keeps one): {available} removed, heads and MLP channels pruned "
                     "as asked")
        count = available
        if not count:
            return {}
    if ranking == "importance":
        layers = [x for _, s in stacks if all(id(y) in residual for y in s) for x in s]
        influence = dict(zip(map(id, layers), ops.block_influence(student, layers, calib), strict=True))
        few = ops.subset(calib, ops.SKIP_FRAMES)
        refs = ops.run(student, few)
    removed: dict = {"_ids": []}
    for _ in progress.track(range(count), "prune: layers removed (Block Influence shortlist, skips scored)"):
        candidates = [(name, s, i) for name, s in stacks if len(s) > 1 and all(id(x) in residual for x in s)
                      for i in range(len(s))]
        pick = (int(np.argmin(rng.random(len(candidates)))) if ranking == "random" else
                ops.least_skip_effect(student, [s[i] for _, s, i in candidates], influence, few, refs))
        name, stack, i = candidates[pick]
        removed.setdefault(name, []).append(original[id(stack[i])])
        removed["_ids"].append(id(stack[i]))
        del stack[i]
    return removed
