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

SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
                      "uint8": "U8", "bool": "BOOL"}  # torch dtype name -> the safetensors header's


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
            `seed` and its name) into one model.safetensors as it is drawn, so writing needs about one
            tensor of memory. Otherwise the network's own initialisation after `torch.manual_seed(seed)`.

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
    """model.safetensors of seeded draws, one tensor in memory at a time, as LeRobot saves it (one file,
    whatever its size: a pi0 checkpoint is 16 GB). The header is written first from the shapes, then each
    tensor as it is drawn. The network is built against `tmp` (a sibling of the final folder that exists,
    so a backbone named relative to the checkpoint, e.g. ../vlm, resolves as it will in the final folder)."""
    import torch

    from vlaedge.models.weights import empty_parameters

    with empty_parameters():
        net = kinds.build(config, tmp)
    state = net.state_dict()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, value in state.items():
        size = value.numel() * value.element_size()
        dtype = SAFETENSORS_DTYPES[str(value.dtype).removeprefix("torch.")]
        header[f"{kinds.ROOT}.{name}"] = {"dtype": dtype, "shape": list(value.shape),
                                          "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(tmp / "model.safetensors", "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for name, value in state.items():
            tensor = _draw(name, value, seed) if value.is_meta else value.detach()
            out.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())


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
