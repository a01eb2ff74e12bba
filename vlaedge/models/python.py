"""Any torch module as a `Policy`, through `package.module:factory` and a small spec in config.json.

Example config.json (weights, if any, in model.safetensors beside it)::

    {"family": "python",
     "factory": "my_robot.policy:build", "factory_kwargs": {"width": 256},
     "inputs": [{"name": "rgb", "shape": ["B", 3, 224, 224], "dtype": "uint8", "low": 0, "high": 255,
                 "source": "image"},
                {"name": "proprio", "shape": ["B", 7], "dtype": "float32", "source": "state"},
                {"name": "text", "shape": ["B", 16], "dtype": "int64", "source": "instruction"}],
     "tokenizer": {"vocab": ["pick", "up", "the", "cup"]},
     "outputs": ["actions"],
     "actions": {"names": ["x", "y", "z", "grip"], "low": [-1, -1, -1, 0], "high": [1, 1, 1, 1],
                 "gripper_dims": [3], "chunk": 8, "decode": "continuous"}}

`source` says which frame field feeds an input: `image` (HWC frames become CHW and are resized),
`state`, `instruction` (token ids from the tokenizer) or `noise` (standard normal, seeded).
`decode` is `continuous` (outputs already in [low, high], or in [-1, 1] with `normalised: true`) or
`tokens` (logits [B, T, A, bins] over [low, high]).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import ActionSpec, Policy, TensorSpec
from vlaedge.models.checkpoint import check_state_dict, load_weights, write_checkpoint
from vlaedge.models.reference import resize_nearest
from vlaedge.models.tokenizer import WordTokenizer

FAMILY = "python"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    name: str  # model argument / ONNX input name, in call order
    shape: list[int | Literal["B"]]  # "B" marks the batch dimension
    dtype: Literal["uint8", "int64", "int32", "float32", "float16"] = "float32"
    low: float = -1.0  # valid range, used for example inputs
    high: float = 1.0
    source: Literal["image", "state", "instruction", "noise"]  # which frame field feeds it


class TokenizerSpec(_Strict):
    vocab: list[str]  # known words; ids start at 2 (0 pad, 1 unknown)


class ActionsSpec(_Strict):
    names: list[str]
    low: list[float]
    high: list[float]
    gripper_dims: list[int] = []
    chunk: int = 1  # actions per inference (T)
    decode: Literal["continuous", "tokens"] = "continuous"
    normalised: bool = False  # continuous outputs are in [-1, 1] rather than [low, high]
    output: str | None = None  # which output holds the actions (default: the first)


class PythonPolicySpec(_Strict):
    family: Literal["python"] = "python"
    factory: str  # "package.module:callable" returning an nn.Module
    factory_kwargs: dict = {}
    inputs: list[InputSpec]
    outputs: list[str]
    actions: ActionsSpec
    tokenizer: TokenizerSpec | None = None


class PythonPolicy(Policy):
    """A user's torch module behind the adapter protocol, described by a `PythonPolicySpec`."""

    def __init__(self, spec: PythonPolicySpec, module=None):
        self.spec = spec
        self.module = module if module is not None else _call_factory(spec)
        self.name = spec.factory
        self.input_spec = tuple(TensorSpec(i.name, tuple(i.shape), i.dtype, i.low, i.high)
                                for i in spec.inputs)
        self.output_names = tuple(spec.outputs)
        a = spec.actions
        self.action_spec = ActionSpec(tuple(a.names), tuple(a.low), tuple(a.high), tuple(a.gripper_dims),
                                      a.chunk)
        text = [i for i in spec.inputs if i.source == "instruction"]
        if text and spec.tokenizer is None:
            raise VlaedgeError(f"policy spec: input {text[0].name!r} reads the instruction but no "
                               "tokenizer is given", 'add "tokenizer": {"vocab": [...]} to config.json')
        self.tokenizer = WordTokenizer(spec.tokenizer.vocab, int(text[0].shape[-1])) if text else None

    def make_inputs(self, frames: dict, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        batch = len(frames["instruction"])
        feeds = {}
        for spec, i in zip(self.input_spec, self.spec.inputs, strict=True):
            shape = spec.concrete_shape(batch)
            if i.source == "image":
                value = resize_nearest(np.asarray(frames["image"]), shape[-1]).transpose(0, 3, 1, 2)
            elif i.source == "state":
                value = np.asarray(frames["state"]).reshape(shape)
            elif i.source == "instruction":
                value = self.tokenizer.encode(list(frames["instruction"]))
            else:
                value = rng.standard_normal(shape)
            feeds[spec.name] = np.ascontiguousarray(value, dtype=spec.dtype)
        return feeds

    def decode(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        a = self.spec.actions
        out = outputs[a.output or self.output_names[0]]
        low, high = np.asarray(a.low, np.float32), np.asarray(a.high, np.float32)
        if a.decode == "tokens":
            bins = out.shape[-1]
            unit = (out.argmax(-1).astype(np.float32) + 0.5) / bins
        elif a.normalised:
            unit = (np.clip(out, -1.0, 1.0) + 1.0) * 0.5
        else:
            return np.clip(out, low, high).astype(np.float32).reshape(len(out), a.chunk, len(a.names))
        return (low + unit * (high - low)).astype(np.float32).reshape(len(out), a.chunk, len(a.names))

    def save(self, path: str | Path) -> Path:
        return write_checkpoint(Path(path), self.spec.model_dump(), self.module.state_dict())

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, raw: dict, allow_pickle: bool = False) -> PythonPolicy:
        try:
            spec = PythonPolicySpec.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise VlaedgeError(f"policy spec: {checkpoint}/config.json: {where}: {err['msg']}",
                               "see the PythonPolicy docstring in vlaedge/models/python.py for the "
                               "format") from e
        policy = cls(spec)
        has_weights = checkpoint.is_dir() and any(
            p.name == "model.safetensors" or p.suffix in (".pt", ".pth") for p in checkpoint.iterdir())
        if has_weights:
            check_state_dict(policy.module, load_weights(checkpoint, allow_pickle), checkpoint)
        policy.module.eval()
        return policy


def _call_factory(spec: PythonPolicySpec):
    module_name, _, attr = spec.factory.partition(":")
    if not module_name or not attr:
        raise VlaedgeError(f"policy spec: factory {spec.factory!r} is not of the form "
                           "'package.module:callable'", 'e.g. "factory": "my_robot.policy:build"')
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as e:
        raise VlaedgeError(f"policy spec: cannot import {module_name!r} ({e})",
                           "install the package that defines the policy, or add it to PYTHONPATH") from e
    except AttributeError as e:
        raise VlaedgeError(f"policy spec: {module_name!r} has no {attr!r}", "check the factory name") from e
    try:
        module = factory(**spec.factory_kwargs)
    except Exception as e:  # noqa: BLE001 (the user's code: any failure is the checkpoint's, named here)
        raise VlaedgeError(f"policy spec: factory {spec.factory} raised {type(e).__name__}: {str(e)[:200]}",
                           "check factory_kwargs in config.json against the factory's signature") from e
    import torch

    if not isinstance(module, torch.nn.Module):
        raise VlaedgeError(f"policy spec: factory {spec.factory} returned a {type(module).__name__}, "
                           "not a torch.nn.Module", "point factory at a function that builds the model")
    return module
