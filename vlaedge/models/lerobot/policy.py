"""A LeRobot `pretrained_model/` folder as a vlaedge `Policy`: LeRobot's processors folded into the graph.

The exported graph is what the robot runs between LeRobot's `prepare_observation_for_inference` and its
robot-side action processors: camera images float32 (B, 3, H, W) in [0, 1], the raw state, the task's
token ids and attention mask (language policies) and the sampler's noise (diffusion / flow policies) in;
the `n_action_steps` executed actions (B, n_action_steps, A) in the dataset's units out. In between, as
LeRobot runs it: the preprocessor's normalizer (per `normalization_mapping`, statistics from its state
file), the network (`<type>.build`), the postprocessor's unnormalizer. Nothing of LeRobot is imported.

Inputs are named after LeRobot's features (`observation.images.top`, `observation.state`,
`observation.language.tokens`, `observation.language.attention_mask`, `noise`), so a LeRobot v3 dataset
feeds them by name (the rename step, if any, inverted).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from vlaedge.models.base import ActionSpec, Policy, TensorSpec
from vlaedge.models.lerobot.features import EMPTY_CAMERA, MASK_KEY, STATE_KEY, TOKENS_KEY
from vlaedge.models.lerobot.layout import WEIGHTS, LeRobotCheckpoint, Normalization, read_checkpoint
from vlaedge.models.preprocess import DataInput, frame_field, image_feed, vector_feed
from vlaedge.models.stages import StagePlan, check_plan

STAGED = ("embed_images", "encode_prefix", "denoise_step", "unpad_actions")  # a flow network's stage methods
SAMPLER_STAGED = ("encode_observation", "denoise_step", "executed_actions")  # Diffusion Policy's


def network_module(kind: str):
    """The module that builds type `kind`'s network (`ROOT`, `build`, `noise_shapes`)."""
    return importlib.import_module(f"vlaedge.models.lerobot.{kind}")


class LeRobotNetwork(torch.nn.Module):
    """normalize -> LeRobot's network -> first n_action_steps -> unnormalize, with positional inputs (the
    ONNX graph's inputs, in `names` order).

    The network sits at LeRobot's attribute (`root`: "model", "diffusion"), so the state dict's keys are
    model.safetensors' keys; the statistics are non-persistent buffers (they live in the processor files).
    The arithmetic is LeRobot's normalizer's: MEAN_STD (x - mean) / (std + eps), inverse y * std + mean;
    MIN_MAX / QUANTILES / QUANTILE10 2 (x - lo) / (hi - lo) - 1 with a zero range replaced by eps.
    """

    def __init__(self, net: torch.nn.Module, root: str, names: list[str], norms: dict[str, Normalization],
                 steps: int):
        super().__init__()
        self.root, self.names, self.steps = root, list(names), steps
        setattr(self, root, net)
        self.modes: dict[str, tuple[int, str, float]] = {}
        for i, (name, norm) in enumerate(norms.items()):
            self.modes[name] = (i, norm.mode, norm.eps)
            for j, value in enumerate(norm.stats.values()):
                self.register_buffer(f"stat_{i}_{j}", torch.from_numpy(np.ascontiguousarray(value)),
                                     persistent=False)

    def _norm(self, name: str, x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        i, mode, eps = self.modes.get(name, (0, "IDENTITY", 0.0))
        if mode == "IDENTITY":
            return x
        lo, hi = getattr(self, f"stat_{i}_0"), getattr(self, f"stat_{i}_1")
        if mode == "MEAN_STD":
            return x * hi + lo if inverse else (x - lo) / (hi + eps)
        span = torch.where(hi - lo == 0, torch.full_like(lo, eps), hi - lo)
        return (x + 1) / 2 * span + lo if inverse else 2 * (x - lo) / span - 1

    def stage_images(self, *images: torch.Tensor) -> torch.Tensor:
        """Stage `vision`: cameras (B, 3, H, W) in [0, 1], normalized, -> the network's image tokens."""
        cameras = [n for n in self.names if n.startswith("observation.images.") or n == "observation.image"]
        return getattr(self, self.root).embed_images(*(self._norm(n, x) for n, x in zip(cameras, images,
                                                                                       strict=True)))

    @property
    def net(self) -> torch.nn.Module:
        """The LeRobot network (at its attribute `root`)."""
        return getattr(self, self.root)

    def stage_prefix(self, image_tokens: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                     *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stage `prefix`: image tokens, task tokens and mask[, raw state] -> the KV cache batch first
        (keys, values (B, layers, kv_heads, L, head_dim); prefix_mask (B, L)): every stage tensor has the
        batch on axis 0, so each graph has one dynamic batch axis. pi0.5 takes no state here (its prompt
        holds it)."""
        keys, values, prefix_mask = self.net.encode_prefix(image_tokens, tokens, mask.bool(),
                                                           *(self._norm(STATE_KEY, s) for s in state))
        return keys.transpose(0, 1), values.transpose(0, 1), prefix_mask

    def stage_expert(self, x: torch.Tensor, t: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     prefix_mask: torch.Tensor) -> torch.Tensor:
        """Stage `expert` (the denoise loop's): the velocity at (x, t) given the batch-first cache."""
        return getattr(self, self.root).denoise_step(x, t, keys.transpose(0, 1), values.transpose(0, 1),
                                                     prefix_mask)

    def stage_actions(self, sample: torch.Tensor) -> torch.Tensor:
        """Stage `actions`: the denoise loop's sample -> the executed actions in the dataset's units."""
        actions = getattr(self, self.root).unpad_actions(sample)
        return self._norm("action", actions[:, : self.steps], inverse=True)

    def stage_observation(self, *observations: torch.Tensor) -> torch.Tensor:
        """Stage `observation` (Diffusion Policy): the observation inputs, the first of `names` in order
        (cameras (B[, n_obs], 3, H, W) in [0, 1], raw state / environment state), normalized -> the global
        condition (B, G)."""
        batch = {n: self._norm(n, x) for n, x in zip(self.names, observations, strict=False)}
        return getattr(self, self.root).encode_observation(batch)

    def stage_window(self, sample: torch.Tensor) -> torch.Tensor:
        """Stage `actions` (Diffusion Policy): the sampled horizon (B, horizon, A) -> the executed window in
        the dataset's units (B, n_action_steps, A)."""
        actions = getattr(self, self.root).executed_actions(sample)
        return self._norm("action", actions[:, : self.steps], inverse=True)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """args in `names` order -> actions (B, n_action_steps, A) in the dataset's units."""
        batch = {name: x.bool() if name == MASK_KEY else self._norm(name, x)
                 for name, x in zip(self.names, args, strict=True)}
        actions = getattr(self, self.root)(batch)  # (B, chunk_size, A), normalized
        return self._norm("action", actions[:, : self.steps], inverse=True)


class LeRobotPolicy(Policy):
    """A LeRobot checkpoint behind the adapter protocol (see the module docstring)."""

    def __init__(self, ckpt: LeRobotCheckpoint, module=None):
        self.ckpt = ckpt
        root = ckpt.root.resolve()  # "." inside the folder has no name of its own
        folder = root.parent if root.name == "pretrained_model" else root  # LeRobot's run folder names it
        self.name = f"lerobot {ckpt.type} ({folder.name})"
        kinds = network_module(ckpt.type)
        self.history = ckpt.n_obs_steps
        self.tokenizer = _tokenizer(ckpt) if ckpt.text is not None else None
        self.input_spec = tuple(self._specs(kinds.noise_shapes(ckpt.config)))
        self.output_names = ("action",)
        dims = ckpt.action.shape[0]
        low, high = _range(ckpt.norms["action"], dims)
        self.action_spec = ActionSpec(tuple(f"action.{i}" for i in range(dims)), tuple(low), tuple(high), (),
                                      ckpt.n_action_steps, "the action statistics in policy_postprocessor's "
                                      "state file (the range of the dataset it was trained on)")
        if module is None:
            fed = [f.name for f in ckpt.inputs if f.type != "LANGUAGE"] + ["action"]
            module = LeRobotNetwork(kinds.build(ckpt.config, ckpt.root), kinds.ROOT,
                                    [s.name for s in self.input_spec], {n: ckpt.norms[n] for n in fed},
                                    ckpt.n_action_steps)
        self.module = module
        self.stage_plan = self._plan(kinds)

    def _plan(self, kinds) -> StagePlan | None:
        """The per-stage graphs (`vlaedge.models.stages`) of a network that has stage methods, checked
        against the module; None for one that has not (ACT: one graph)."""
        net = getattr(self.module, kinds.ROOT)
        if all(hasattr(net, m) for m in STAGED):
            plan = self._flow_plan()
        elif all(hasattr(net, m) for m in SAMPLER_STAGED):
            plan = self._sampler_plan(kinds)
        else:
            return None
        check_plan(plan, self.module, [s.name for s in self.input_spec], list(self.output_names))
        return plan

    def _sampler_plan(self, kinds) -> StagePlan:
        """observation (global condition) -> denoise x `num_inference_steps` (U-Net + scheduler step in the
        graph, the runtime feeding each step's timestep, index and DDPM draw) -> actions: Diffusion Policy."""
        steps = getattr(self.module, kinds.ROOT).steps  # the reverse steps (`diffusion_sampler.plan`)
        draws = sum(s.std is not None for s in steps)
        noise = ["variance_noise_k"] if draws else []
        loop = {"stage": "denoise", "steps": len(steps), "init": kinds.NOISE_KEY, "update": "sample",
                "next": "x_next", "times": [float(s.t) for s in steps], "index": "k", "output": "sample"}
        if draws:  # DDPM: N - 1 draws; the last step (t = 0) is fed zeros and weighs them by 0
            loop |= {"step_inputs": {"variance_noise_k": kinds.VARIANCE_NOISE_KEY}, "step_input_steps": draws}
        denoise = ["x", "t", "k", "global_cond", *noise]
        return StagePlan.model_validate({
            "graphs": [
                {"name": "observation", "call": "stage_observation",
                 "inputs": [f.name for f in self.ckpt.inputs], "outputs": ["global_cond"]},
                {"name": "denoise", "call": f"{kinds.ROOT}.denoise_step", "inputs": denoise,
                 "outputs": ["x_next"]},
                {"name": "actions", "call": "stage_window", "inputs": ["sample"], "outputs": ["action"]}],
            "denoise": loop})

    def _flow_plan(self) -> StagePlan:
        """vision -> prefix (KV cache) -> expert x `num_steps` (Euler, t from 1 to 0 as LeRobot) -> actions:
        the per-stage graphs of a flow-matching VLA (`vlaedge.models.stages`)."""
        cameras = [f.name for f in self.fed_features if f.type == "VISUAL"]
        kv = ["keys", "values", "prefix_mask"]
        steps = self.module.net.spec.num_steps
        state = [STATE_KEY] if any(f.name == STATE_KEY for f in self.fed_features) else []
        return StagePlan.model_validate({
            "graphs": [
                {"name": "vision", "call": "stage_images", "inputs": cameras, "outputs": ["image_tokens"]},
                {"name": "prefix", "call": "stage_prefix",
                 "inputs": ["image_tokens", TOKENS_KEY, MASK_KEY, *state], "outputs": kv},
                {"name": "expert", "call": "stage_expert", "inputs": ["x", "t", *kv],
                 "outputs": ["velocity"]},
                {"name": "actions", "call": "stage_actions", "inputs": ["sample"], "outputs": ["action"]}],
            "denoise": {"stage": "expert", "steps": steps, "init": "noise", "t_start": 1.0, "t_end": 0.0,
                        "output": "sample"}})

    @property
    def fed_features(self):
        """The input features the graph takes: all but LeRobot's `empty_camera_<i>` placeholders (the
        network pads those itself) and, for pi0.5, the state (written into the prompt instead)."""
        prompt = self.ckpt.text is not None and self.ckpt.text.state_prompt
        return [f for f in self.ckpt.inputs if not f.name.startswith(EMPTY_CAMERA)
                and not (prompt and f.name == STATE_KEY)]

    def _specs(self, noise: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
        """Cameras float32 [0, 1], state/env vectors (range from their statistics), the task's tokens and
        attention mask, then the noise inputs: the graph's inputs in order."""
        ckpt, specs = self.ckpt, []
        history = (self.history,) if self.history > 1 else ()
        for f in self.fed_features:
            low, high = (0.0, 1.0) if f.type == "VISUAL" else _range(ckpt.norms[f.name])
            specs.append(TensorSpec(f.name, ("B", *history, *f.shape), "float32", low, high))
        if self.tokenizer is not None:
            length = ckpt.text.max_length
            specs += [TensorSpec(TOKENS_KEY, ("B", length), "int64", 0, self.tokenizer.size - 1),
                      TensorSpec(MASK_KEY, ("B", length), "int64", 0, 1)]
        return specs + [TensorSpec(n, ("B", *s), "float32", -3.0, 3.0) for n, s in noise.items()]

    def data_inputs(self) -> list[DataInput]:
        kinds = {f.name: "image" if f.type == "VISUAL" else "state" for f in self.ckpt.inputs}
        kinds.update({TOKENS_KEY: "instruction", MASK_KEY: "instruction_mask"})
        out = []
        for s in self.input_spec:
            source = kinds.get(s.name, "noise")
            feature = {"instruction": "task", "instruction_mask": "task", "noise": "noise"}.get(
                source, self.ckpt.rename.get(s.name, s.name))
            out.append(DataInput(s.name, source, feature, history=self.history if source in ("image", "state")
                                 else 1))
        return out

    def make_inputs(self, frames: dict, seed: int = 0) -> dict[str, np.ndarray]:
        """Frames -> feeds: images resized to the feature's H x W and scaled to [0, 1] (LeRobot's
        `prepare_observation_for_inference`), state as recorded, the task tokenized as the tokenizer step
        says (with "\\n" appended where a new-line step runs first), noise standard normal from `seed`.

        A policy with an observation history (`n_obs_steps` > 1, e.g. Diffusion Policy) gets each frame
        repeated `n_obs_steps` times, which is what LeRobot's observation queue holds at an episode's first
        step; the exported graph takes the history as axis 1, so a robot feeds its real history."""
        rng = np.random.default_rng(seed)
        batch = _batch_size(frames)
        feeds = {}
        texts = None
        for s in self.input_spec:
            d, _ = self.fed(s.name)
            shape = s.concrete_shape(batch)
            if d.history > 1:  # one step, repeated below
                shape = (shape[0], *shape[2:])
            if d.source == "noise":
                feeds[s.name] = rng.standard_normal(shape).astype(np.float32)
            elif d.source in ("instruction", "instruction_mask"):
                if texts is None:
                    texts = self._tokens(list(frame_field(frames, d.feature, d.source)), frames)
                feeds[s.name] = texts[0] if d.source == "instruction" else texts[1]
            elif d.source == "image":
                images = frame_field(frames, d.feature, "image")
                feeds[s.name] = image_feed(images, shape, "float32", 0.0, 1.0, d, None)
            else:
                values = frame_field(frames, d.feature, "state")
                feeds[s.name] = vector_feed(values, shape, "float32", d, None)
            if d.history > 1:
                feeds[s.name] = np.ascontiguousarray(np.repeat(feeds[s.name][:, None], d.history, axis=1))
        return feeds

    def _tokens(self, tasks: list[str], frames: dict) -> tuple[np.ndarray, np.ndarray]:
        """The tokenizer step's (ids, mask), after the new-line step, or pi0.5's state prompt: the raw state
        normalized by the graph's own normalizer (the same float32 arithmetic: the bins are discontinuous),
        binned and written into the prompt (`pi05.state_prompts`)."""
        text = self.ckpt.text
        if text.state_prompt:
            from vlaedge.models.lerobot.pi05 import state_prompts

            raw = frame_field(frames, self.ckpt.rename.get(STATE_KEY, STATE_KEY), "state")
            with torch.no_grad():
                state = self.module._norm(STATE_KEY, torch.from_numpy(np.asarray(raw, np.float32))).numpy()
            tasks = state_prompts(tasks, state, int(self.ckpt.config.get("max_state_dim", 32)))
        elif text.new_line:
            tasks = [t if t.endswith("\n") else t + "\n" for t in tasks]
        return self.tokenizer.encode_with_mask(tasks)

    def decode(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output is already (B, n_action_steps, A) in the dataset's units."""
        return np.asarray(outputs["action"], np.float32)

    def save(self, path: str | Path) -> Path:
        """Writes the pretrained_model/ folder atomically: every file as it was, model.safetensors from the
        module (keys as LeRobot's), so LeRobot and vlaedge both load it back."""
        from vlaedge.models.checkpoint import write_checkpoint
        from vlaedge.models.lerobot.legacy import read_buffers

        root = self.ckpt.root
        files = {p.name: p for p in root.iterdir() if p.is_file() and p.name not in (WEIGHTS, "config.json")}
        state = {**self.module.state_dict(), **read_buffers(root / WEIGHTS, self.ckpt.consumed)}
        return write_checkpoint(Path(path), self.ckpt.config, state, "config.json", files)

    @classmethod
    def from_checkpoint(cls, root: Path, dtype: str = "float32") -> LeRobotPolicy:
        """Reads and checks the folder, builds the network without weights (meta device) and loads
        model.safetensors into it with vlaedge's strict checks (missing, unexpected, shape, dtype, NaN).

        Raises:
            VlaedgeError: see `read_checkpoint` and `vlaedge.models.checkpoint.check_state_dict`.
        """
        from vlaedge.models.checkpoint import check_state_dict, load_weights
        from vlaedge.models.weights import HALF, empty_parameters

        ckpt = read_checkpoint(root)
        with empty_parameters():
            policy = cls(ckpt)
        weights = load_weights(root, read_elsewhere=ckpt.state_files)
        for name in ckpt.consumed:  # LeRobot <= 0.3 normalization buffers: statistics, read by the layout
            del weights[name]
        check_state_dict(policy.module, weights, root, dtype if dtype in HALF else None)
        policy.module.eval()
        return policy


def _batch_size(frames: dict) -> int:
    """Frames in a batch: the length of any array in it (an env's observation may have no instruction)."""
    for value in frames.values():
        if isinstance(value, np.ndarray) and value.ndim:
            return len(value)
    return len(frames.get("instruction") or frames.get("task") or [])


def _range(norm: Normalization, dims: int | None = None):
    """A feature's value range: its recorded [min, max] where the state file has them, else the mode's
    statistics ([q01, q99], [q10, q90], mean +- 3 std), else [-1, 1] (normalized units). Per dimension
    (lists) when `dims` is given, else one (low, high) pair."""
    s = norm.stats
    if norm.bounds is not None:
        low, high = norm.bounds
    elif norm.mode == "MEAN_STD":
        low, high = s["mean"] - 3 * s["std"], s["mean"] + 3 * s["std"]
    elif norm.mode != "IDENTITY":
        low, high = s.values()
    else:
        low, high = np.full(dims or 1, -1.0), np.full(dims or 1, 1.0)
    low, high = np.ravel(low).astype(float), np.ravel(high).astype(float)
    if dims is None:
        return float(low.min()), float(high.max())
    return low.tolist(), np.maximum(high, low + 1e-6).tolist()


def _tokenizer(ckpt: LeRobotCheckpoint):
    """The task tokenizer: tokenizer.json from the tokenizer step's folder (never the Hub)."""
    from vlaedge.models.lerobot.local_files import local_folder
    from vlaedge.models.tokenizer import FileTokenizer

    t = ckpt.text
    folder = local_folder(t.tokenizer_name, ckpt.root, "tokenizer.json",
                          "policy_preprocessor.json: tokenizer_processor.tokenizer_name")
    # LeRobot's tokenizer step truncates at max_length on the right (Hugging Face's default side)
    return FileTokenizer(folder / "tokenizer.json", t.max_length, t.padding_side, "right")

