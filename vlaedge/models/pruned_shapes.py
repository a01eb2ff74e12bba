"""The reload contract of structured pruning: shrink a freshly built module to the recorded shapes.

Structured pruning of a `python`-family policy (`vlaedge.compress.prune_modules`) stores, in the policy
spec's `pruned` field, a JSON record of what it changed; `reshape_pruned` applies it to the factory's
module before the weights load, so the pruned checkpoint loads strictly at its pruned size::

    {"version": 1,
     "removed_layers": {"llm.layers": [1]},                 # ModuleList -> original indices removed
     "attention": {"enc.layers.0.self_attn":               # nn.MultiheadAttention -> PrunedMultiheadAttention
                   {"embed_dim": 32, "num_heads": 2, "head_dim": 8, "batch_first": true, "bias": true}},
     "linear": {"llm.layers.0.mlp.up_proj": [32, 32, false]},  # Linear -> [out_features, in_features, bias]
     "attributes": {"llm.layers.0.self_attn": {"num_heads": 2}}}   # ints/bools that forwards read

Layers are removed first; every other path names a module of the module *after* that removal.
`PrunedMultiheadAttention` exists because `nn.MultiheadAttention` (and torch's fused encoder fast path)
assume that the attention width equals the model width: a head-pruned one computes the same attention
with fewer heads, keeps `nn.MultiheadAttention`'s parameter names and call signature, and declares
`_qkv_same_embed_dim = False` so that `nn.TransformerEncoder(Layer)` take their ordinary path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlaedge.errors import VlaedgeError

RECORD_VERSION = 1


class PrunedMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` with `num_heads * head_dim` != `embed_dim` (heads removed).

    Parameters as in `nn.MultiheadAttention`: `in_proj_weight` (3 * num_heads * head_dim, embed_dim),
    `in_proj_bias` (3 * num_heads * head_dim,) or None, `out_proj` Linear(num_heads * head_dim, embed_dim).
    `forward` takes `nn.MultiheadAttention`'s arguments (boolean masks: True = not attended; float
    masks are added to the scores) and returns (output, head-averaged weights or None).
    """

    _qkv_same_embed_dim = False  # torch's encoder fast paths test this and then call forward()

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, batch_first: bool = False,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        b, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        w = self.in_proj_weight.chunk(3)
        bias = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(x, wi, bi).view(b, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
                   for x, wi, bi in zip((query, key, value), w, bias, strict=True))  # (B, h, L, hd)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, h, Lq, Lk)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask.view(b, self.num_heads, lq, lk) if attn_mask.dim() == 3 else attn_mask
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            scores = (scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool
                      else scores + pad.to(scores.dtype))
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(b, lq, -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


def reshape_pruned(module: nn.Module, record: dict) -> None:
    """Shrinks `module` (fresh from the policy factory) in place to the shapes in `record`.

    Parameters get the recorded shapes (values uninitialised: load the checkpoint's weights next).

    Args:
        module: the factory's module, unpruned.
        record: `PythonPolicySpec.pruned`, as written by structured pruning (format in the module doc).

    Raises:
        VlaedgeError: the record names a module the factory's module does not have, or of another type
            (the factory or its kwargs changed since pruning), or has an unknown version.
    """
    if record.get("version") != RECORD_VERSION:
        raise VlaedgeError(f"pruned: record version {record.get('version')!r} is not {RECORD_VERSION}",
                           "prune the original checkpoint again with this vlaedge")
    for path, indices in record.get("removed_layers", {}).items():
        layers = _get(module, path, nn.ModuleList)
        for i in sorted(indices, reverse=True):
            if i >= len(layers):
                raise VlaedgeError(f"pruned: {path} has {len(layers)} layers, the record removes layer {i}",
                                   "load with the factory_kwargs the policy was pruned with")
            del layers[i]
    for path, a in record.get("attention", {}).items():
        old = _get(module, path, (nn.MultiheadAttention, PrunedMultiheadAttention))
        new = PrunedMultiheadAttention(a["embed_dim"], a["num_heads"], a["head_dim"], a["batch_first"],
                                       a["bias"], getattr(old, "dropout", 0.0))
        _set(module, path, new)
    for path, (out_features, in_features, bias) in record.get("linear", {}).items():
        layer = _get(module, path, nn.Linear)
        ref = layer.weight
        layer.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=ref.dtype,
                                                device=ref.device))
        layer.bias = (nn.Parameter(torch.zeros(out_features, dtype=ref.dtype, device=ref.device))
                      if bias else None)
        layer.in_features, layer.out_features = in_features, out_features
    for path, values in record.get("attributes", {}).items():
        target = _get(module, path, nn.Module)
        for name, value in values.items():
            setattr(target, name, value)


def _get(module: nn.Module, path: str, kind) -> nn.Module:
    try:
        found = module.get_submodule(path) if path else module
    except AttributeError as e:
        raise VlaedgeError(f"pruned: the record names {path!r}, which the factory's module lacks",
                           "load with the factory and factory_kwargs the policy was pruned with") from e
    if not isinstance(found, kind):
        raise VlaedgeError(f"pruned: {path!r} is a {type(found).__name__}, the record expects "
                           f"{getattr(kind, '__name__', 'another type')}",
                           "load with the factory and factory_kwargs the policy was pruned with")
    return found


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, new)
