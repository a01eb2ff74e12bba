"""The policy adapter protocol: everything model-specific lives behind it.

The rest of the pipeline (quantize, export, verify, profile) only sees a `Policy`: a torch module, the
named inputs it takes (`input_spec`), the named outputs it returns, how dataset frames become inputs
(`make_inputs`) and how outputs become actions in the environment's units (`decode`). Which dataset
feature feeds which input (`data_inputs`) is resolved against a dataset and checked once by
`vlaedge.models.preprocess.bind_data`, which stores the result in `bound` / `bound_stats`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from vlaedge.models.preprocess import DataInput

BATCH = "B"  # the symbolic batch dimension in shapes


@dataclass(frozen=True)
class TensorSpec:
    """A named model input.

    Attributes:
        name: input name, also the ONNX input name.
        shape: dimensions; the string "B" marks the (dynamic) batch dimension.
        dtype: numpy dtype name ("uint8", "int64", "float32").
        low: smallest valid value (inclusive).
        high: largest valid value (inclusive).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    low: float
    high: float

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


@dataclass(frozen=True)
class ActionSpec:
    """What the policy's actions mean.

    Attributes:
        names: one name per action dimension, e.g. ("dx", "dy", "gripper").
        low: per-dimension lower bound in environment units.
        high: per-dimension upper bound in environment units.
        gripper_dims: indices of binary gripper dimensions (positive = closed).
        chunk: number of future actions predicted per inference (T).
        bounds_from: where low/high come from, named in errors about them (e.g. a LeRobot checkpoint's
            action statistics).
    """

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    gripper_dims: tuple[int, ...]
    chunk: int
    bounds_from: str = "the policy's action_spec low/high"

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def range(self) -> np.ndarray:
        return np.asarray(self.high, np.float32) - np.asarray(self.low, np.float32)


class Policy(ABC):
    """A loaded policy: a torch module plus the contract the pipeline relies on.

    Subclasses set `module`, `input_spec`, `output_names` and `action_spec`, and implement
    `make_inputs`, `decode` and `save`.
    """

    module: torch.nn.Module
    input_spec: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    action_spec: ActionSpec
    name: str = "policy"
    bound: dict | None = None  # input name -> the DataInput `bind_data` resolved (None: not bound yet)
    bound_stats: dict | None = None  # input name -> normalisation statistics taken at binding
    dataset_action_units: str = "env"  # recorded actions are in the env's units ("normalised": [-1, 1])

    def data_inputs(self) -> list[DataInput]:
        """Which dataset feature feeds each model input, and how, before any ``data.map`` override."""
        return []

    def fed(self, name: str) -> tuple[DataInput, dict | None]:
        """The bound (else the policy's own) `DataInput` of input `name` and its statistics."""
        if self.bound and name in self.bound:
            return self.bound[name], (self.bound_stats or {}).get(name)
        spec = next(d for d in self.data_inputs() if d.input == name)
        return spec, spec.stats

    @abstractmethod
    def make_inputs(self, frames: dict, seed: int = 0) -> dict[str, np.ndarray]:
        """Turns a batch of dataset frames into model inputs.

        Args:
            frames: {"image": uint8 [B,H,W,3], "state": float32 [B,S], "instruction": list[str]}.
            seed: seeds any sampled input (the flow-matching `noise`), so that reference and
                candidate see identical inputs.

        Returns:
            Feeds keyed by input name, matching `input_spec`.
        """

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Turns model outputs into actions float32 [B, T, A] in the environment's units."""

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Writes the policy as a checkpoint directory that `load_policy` reads back."""

    action_head: tuple[str, ...] = ()  # fnmatch patterns of the action head's module names (may be empty)

    def action_head_modules(self) -> tuple[list[str], str]:
        """The action head as module name patterns (fnmatch), and how they were found.

        Declared by the adapter (`action_head`, e.g. the python spec's `"action_head": ["head*"]`), else
        the last module with weights that runs in one batch-1 forward (the layer whose output is the
        action, or the flow expert's last layer).

        Returns:
            (patterns, how): e.g. (["action_head*"], "declared by the policy").
        """
        if self.action_head:
            return list(self.action_head), "declared by the policy"
        import torch

        order: list[str] = []
        hooks = [m.register_forward_hook(lambda mod, args, out, n=name: order.append(n))
                 for name, m in self.module.named_modules()
                 if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
        try:
            with torch.inference_mode():
                self.run_torch(self.example_inputs(1))
        finally:
            for h in hooks:
                h.remove()
        if not order:
            from vlaedge.errors import VlaedgeError

            raise VlaedgeError(f"policy: {self.name} runs no module with weights, so it has no action head",
                               "set quantize.keep_action_head: false")
        return [order[-1]], "not declared: the last layer with weights in forward (declare action_head)"

    @property
    def noise_inputs(self) -> tuple[str, ...]:
        """Inputs with `source: noise` (the flow-matching start noise, standard normal, seeded)."""
        return tuple(d.input for d in self.data_inputs() if d.source == "noise")

    @property
    def has_noise_input(self) -> bool:
        return bool(self.noise_inputs)

    @property
    def logits_output(self) -> str | None:
        """The output holding action-token logits [B, T, A, bins] (None for continuous heads)."""
        return None

    def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random valid feeds for tracing, export and latency runs."""
        rng = np.random.default_rng(seed)
        feeds = {}
        noise = self.noise_inputs
        for spec in self.input_spec:
            shape = spec.concrete_shape(batch)
            if spec.name in noise:
                feeds[spec.name] = rng.standard_normal(shape).astype(np.float32)
            elif np.issubdtype(np.dtype(spec.dtype), np.integer):
                feeds[spec.name] = rng.integers(spec.low, spec.high + 1, shape).astype(spec.dtype)
            else:
                feeds[spec.name] = rng.uniform(spec.low, spec.high, shape).astype(spec.dtype)
        return feeds

    @property
    def device(self) -> torch.device:
        """Where the module runs (its parameters' device): `run_torch` moves feeds there. Set by
        `load_policy(..., device=)` or `to`; see `vlaedge.models.device`."""
        from vlaedge.models.device import module_device

        return module_device(self.module)

    def to(self, device: str) -> Policy:
        """Moves the module to `device` ("auto", "cpu" or "cuda"; `vlaedge.models.device.resolve_device`)
        and returns the policy.

        Raises:
            VlaedgeError: an unknown device, "cuda" without CUDA, or a GPU without room for the weights.
        """
        from vlaedge.models.device import place, resolve_device

        place(self.module, resolve_device(device))
        return self

    def run_torch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the torch module on numpy feeds (inference mode) and returns numpy outputs (float32).

        Feeds are moved to the module's device (`device`) and outputs come back as CPU numpy; on a GPU the
        run is IEEE float32 (TensorFloat-32 off: `vlaedge.models.device.exact_float32`). Float feeds are cast
        to the module's float dtype when it was loaded in half precision (`load_policy(dtype=...)`); for a
        float32 module nothing changes."""
        import torch

        from vlaedge.models.device import exact_float32, feed_tensors, to_numpy

        self.module.eval()
        device = self.device
        half = next((p.dtype for p in self.module.parameters() if p.is_floating_point()), torch.float32)
        with torch.inference_mode(), exact_float32(device):
            args = feed_tensors([feeds[s.name] for s in self.input_spec], device)
            if half in (torch.float16, torch.bfloat16):
                args = [a.to(half) if a.is_floating_point() else a for a in args]
            out = self.module(*args)
        out = out if isinstance(out, tuple | list) else (out,)
        return {name: to_numpy(t.float()) for name, t in zip(self.output_names, out, strict=True)}

    def check_scale(self, reference: np.ndarray) -> np.ndarray | float:
        """What a difference in decoded outputs is a percentage of in the export check: the action range
        of each dimension (a stage's graph, whose outputs are not actions, overrides it)."""
        return np.maximum(self.action_spec.range, 1e-12)

    def act(self, frames: dict, seed: int = 0) -> np.ndarray:
        """Frames in, actions [B, T, A] out, with the torch module."""
        return self.decode(self.run_torch(self.make_inputs(frames, seed)))
