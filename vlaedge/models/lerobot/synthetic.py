"""Seeded LeRobot checkpoints from a config: the `pretrained_model/` folder LeRobot 0.4 saves, with random
weights, for benchmarks at a published size and for tests of policy shapes no fixture covers.

The layout follows what LeRobot's training script writes (see `layout.py` and the fixtures in
`../shared/cases/lerobot_policies/`): config.json, model.safetensors (the network's state dict under its
`ROOT` prefix), `policy_preprocessor.json` (rename -> to_batch -> [new line -> tokenizer] -> device ->
normalizer) with `policy_preprocessor_step_<i>_normalizer_processor.safetensors`, and
`policy_postprocessor.json` (unnormalizer -> device) with its state file. Statistics are per feature
`mean`, `std`, `min`, `max`, `q01`, `q99` (float32; images (3, 1, 1)).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from vlaedge.models.checkpoint import write_checkpoint

SHARD_BYTES = 2 * 1024**3  # streamed weights: at most this much per safetensors shard


def write_pretrained(folder: Path, config: dict, stats: dict[str, dict[str, np.ndarray]], seed: int = 0,
                     text: dict | None = None, stream: bool = False) -> Path:
    """Writes a LeRobot `pretrained_model/` folder for `config` with seeded random weights.

    Args:
        folder: where (replaced atomically).
        config: a LeRobot config.json (with `type`, `input_features`, `output_features`,
            `normalization_mapping`, `chunk_size`, `n_action_steps` and the network's sizes).
        stats: feature name -> {"mean", "std", "min", "max", ...} float arrays, for every input and
            "action" (images: (3, 1, 1)).
        seed: torch seed for the network's initialisation.
        text: the tokenizer step's config (`tokenizer_name`, `max_length`, ...) for language policies.
        stream: for published sizes: build the network without weights (meta parameters, real buffers)
            and draw each parameter alone (normal, std 0.02; 1-D norm weights 1, biases 0; seeded by
            `seed` and its name), so writing needs about one shard of memory; more than `SHARD_BYTES` of
            weights are written as shards with model.safetensors.index.json. Otherwise the network's own
            initialisation after `torch.manual_seed(seed)`, in one model.safetensors.

    Returns:
        `folder`.
    """
    import torch

    from vlaedge.models.lerobot.policy import network_module

    kinds = network_module(config["type"])
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.files"
    tmp.mkdir(parents=True, exist_ok=True)
    _write_processors(tmp, config, stats, text)
    try:
        if stream:
            _write_streamed(tmp, kinds, config, seed)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
            return folder
        torch.manual_seed(seed)
        state = {f"{kinds.ROOT}.{k}": v for k, v in kinds.build(config, tmp).state_dict().items()}
        files = {p.name: p for p in tmp.iterdir()}
        return write_checkpoint(folder, config, state, "config.json", files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_streamed(tmp: Path, kinds, config: dict, seed: int) -> None:
    """model.safetensors (or shards + index) of seeded draws, one parameter in memory at a time; the
    network is built against `tmp` (a sibling of the final folder that exists, so a backbone named
    relative to the checkpoint, e.g. ../vlm, resolves as it will in the final folder)."""
    from safetensors.torch import save_file

    from vlaedge.models.weights import empty_parameters

    with empty_parameters():
        net = kinds.build(config, tmp)
    shards, current, size = [], {}, 0
    for name, value in net.state_dict().items():
        tensor = _draw(name, value, seed) if value.is_meta else value.detach().clone()
        if current and size + tensor.nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[f"{kinds.ROOT}.{name}"] = tensor
        size += tensor.nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        return
    index = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(tmp / file), metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, file))
        shards[i - 1] = None
    total = sum(p.stat().st_size for p in tmp.glob("model-*.safetensors"))
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": index}))


def _draw(name: str, meta, seed: int):
    """A seeded draw for one meta parameter: normal(0, 0.02); 1-D norm weights 1, biases 0."""
    import zlib

    import torch

    if not meta.dtype.is_floating_point:
        return torch.zeros(meta.shape, dtype=meta.dtype)
    if name.endswith("bias"):
        return torch.zeros(meta.shape, dtype=meta.dtype)
    if meta.dim() == 1:
        return torch.ones(meta.shape, dtype=meta.dtype)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return (torch.randn(meta.shape, generator=gen) * 0.02).to(meta.dtype)


def _write_processors(folder: Path, config: dict, stats: dict[str, dict[str, np.ndarray]],
                      text: dict | None) -> None:
    """policy_preprocessor.json / policy_postprocessor.json and their normalizer state files."""
    from safetensors.numpy import save_file

    features = {**config["input_features"], **config["output_features"]}
    norm_map = config["normalization_mapping"]
    device = {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}}
    pre = [{"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
           {"registry_name": "to_batch_processor", "config": {}}]
    if text is not None:
        tokenizer = {"task_key": "task", "padding_side": "right", "padding": "longest", "truncation": True,
                     **text}
        pre += [{"registry_name": f"{config['type']}_new_line_processor", "config": {}},
                {"registry_name": "tokenizer_processor", "config": tokenizer}]
    pre_file = f"policy_preprocessor_step_{len(pre) + 1}_normalizer_processor.safetensors"
    pre += [device, {"registry_name": "normalizer_processor", "state_file": pre_file,
                     "config": {"eps": 1e-8, "features": features, "norm_map": norm_map}}]
    post_file = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
    post = [{"registry_name": "unnormalizer_processor", "state_file": post_file,
             "config": {"eps": 1e-8, "features": config["output_features"], "norm_map": norm_map}}, device]
    flat = {f"{name}.{k}": np.ascontiguousarray(v, np.float32)
            for name, values in stats.items() for k, v in values.items()}
    save_file(flat, str(folder / pre_file))
    save_file({k: v for k, v in flat.items() if k.startswith("action.")}, str(folder / post_file))
    for name, steps in (("policy_preprocessor", pre), ("policy_postprocessor", post)):
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "steps": steps}, indent=2))
