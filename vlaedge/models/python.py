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

`source` says what kind of input it is: `image`, `state`, `instruction` (token ids from the tokenizer),
`instruction_mask` (1 on tokens, 0 on padding) or `noise` (standard normal, seeded); `feature` names the
dataset feature that feeds it (default: the first camera, `observation.state`, `task`), and `layout`,
`normalize` and `stats` its preprocessing (`vlaedge.models.preprocess`; the recipe's `data.map` overrides
`feature`). `tokenizer` is `{"vocab": [...]}` (the word tokenizer) or `{"file": "tokenizer.json"}` (a
Hugging Face tokenizer.json or a SentencePiece .model in the checkpoint folder, with `padding` and
`truncation` "right" or "left").
`decode` is `continuous` (outputs already in [low, high], or in [-1, 1] with `normalised: true`) or
`tokens` (logits [B, T, A, bins] over [low, high]; [B, A, bins] when `chunk` is 1).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from vlaedge.errors import VlaedgeError, missing_extra
from vlaedge.models.base import ActionSpec, Policy, TensorSpec
from vlaedge.models.checkpoint import (
    CONFIG_FILE,
    SPEC_FILE,
    check_state_dict,
    load_weights,
    read_json,
    weight_files,
    write_checkpoint,
)
from vlaedge.models.preprocess import DataInput, frame_field, image_feed, vector_feed
from vlaedge.models.stages import StagePlan, check_plan
from vlaedge.models.tokenizer import PAD, FileTokenizer, WordTokenizer
from vlaedge.models.weights import HALF, empty_parameters

FAMILY = "python"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatsSpec(_Strict):
    """Normalisation statistics stored with the checkpoint (they win over the dataset's stats.json)."""

    mean: list[float] | None = None
    std: list[float] | None = None
    min: list[float] | None = None
    max: list[float] | None = None


class InputSpec(_Strict):
    name: str  # model argument / ONNX input name, in call order
    shape: list[int | Literal["B"]]  # "B" marks the batch dimension
    dtype: Literal["uint8", "int64", "int32", "float32", "float16"] = "float32"
    low: float = -1.0  # valid range: float images are scaled to it, example inputs drawn from it
    high: float = 1.0
    source: Literal["image", "state", "instruction", "instruction_mask", "noise"]  # what kind of input
    # The dataset feature that feeds it, e.g. "observation.images.cam_high"; default: the first camera
    # ("image"), "observation.state" or "task" by `source`. The recipe's data.map overrides it.
    feature: str | None = None
    layout: Literal["CHW", "HWC"] = "CHW"  # images: channels first or last
    normalize: Literal["none", "mean_std", "min_max"] = "none"  # images: mean/std in [0, 1] pixel units
    stats: StatsSpec | None = None  # default: the dataset's meta/stats.json for `feature`


class TokenizerSpec(_Strict):
    vocab: list[str] | None = None  # the built-in word tokenizer: known words; ids start at 2 (0 pad, 1 unk)
    file: str | None = None  # or a file in the checkpoint folder: "tokenizer.json" or a SentencePiece .model
    padding: Literal["right", "left"] = "right"  # where pad ids go (file tokenizers)
    truncation: Literal["right", "left"] = "right"  # which end is cut past the input's length
    pad_id: int | None = None  # default: the tokenizer's pad token, else 0
    add_special_tokens: bool = True  # BOS/EOS as the tokenizer defines them

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.vocab is None) == (self.file is None):
            raise ValueError("give exactly one of 'vocab' (word tokenizer) or 'file' (tokenizer.json or "
                             "a SentencePiece .model)")
        return self


class ActionsSpec(_Strict):
    names: list[str]
    low: list[float]
    high: list[float]
    gripper_dims: list[int] = []
    chunk: int = 1  # actions per inference (T)
    decode: Literal["continuous", "tokens"] = "continuous"
    normalised: bool = False  # continuous outputs are in [-1, 1] rather than [low, high]
    output: str | None = None  # which output holds the actions (default: the first)
    feature: str = "action"  # the dataset feature holding the recorded actions
    dataset_units: Literal["env", "normalised"] = "env"  # recorded actions in [low, high] or in [-1, 1]


class PythonPolicySpec(_Strict):
    family: Literal["python"] = "python"
    # "package.module:callable" (an installed module) or "policy.py:callable" (a file in the checkpoint
    # folder, copied on save, as Hugging Face's trust_remote_code files) returning an nn.Module
    factory: str
    factory_kwargs: dict = {}
    # a JSON file in the checkpoint folder passed to the factory as its first argument (a dict), e.g. the
    # config.json that save_pretrained wrote; the spec itself then lives in vlaedge.json beside it
    factory_config: str | None = None
    # module name patterns (fnmatch) of the action head, e.g. ["action_head*"]: what `quantize.keep:
    # [action_head]` keeps in higher precision
    action_head: list[str] = []
    inputs: list[InputSpec]
    outputs: list[str]
    actions: ActionsSpec
    tokenizer: TokenizerSpec | None = None
    # Structured pruning's record of the shrunk modules (vlaedge.models.pruned_shapes): applied to the
    # factory's module before the weights load, so a pruned checkpoint reloads at its pruned size.
    pruned: dict | None = None
    # Per-stage graphs (vlaedge.models.stages): one ONNX graph per stage and the denoise loop run by the
    # runtime; checked against the module at load
    stages: StagePlan | None = None


class PythonPolicy(Policy):
    """A user's torch module behind the adapter protocol, described by a `PythonPolicySpec`."""

    def __init__(self, spec: PythonPolicySpec, module=None, root: Path | None = None):
        self.spec, self.root = spec, root
        self.module = module if module is not None else _call_factory(spec, root)
        self.action_head = tuple(spec.action_head)
        self.name = spec.factory
        self.input_spec = tuple(TensorSpec(i.name, tuple(i.shape), i.dtype, i.low, i.high)
                                for i in spec.inputs)
        self.output_names = tuple(spec.outputs)
        a = spec.actions
        self.action_spec = ActionSpec(tuple(a.names), tuple(a.low), tuple(a.high), tuple(a.gripper_dims),
                                      a.chunk)
        self.dataset_action_units = a.dataset_units
        self.tokenizer = _tokenizer(spec, root)
        self.stage_plan = spec.stages  # None: one graph
        if spec.stages is not None:
            check_plan(spec.stages, self.module, [i.name for i in spec.inputs], list(spec.outputs))

    def data_inputs(self) -> list[DataInput]:
        default = {"image": "image", "state": "observation.state", "noise": "noise"}
        return [DataInput(i.name, i.source, i.feature or default.get(i.source, "task"), i.layout, i.normalize,
                          i.stats.model_dump(exclude_none=True) if i.stats else None)
                for i in self.spec.inputs]

    @property
    def logits_output(self) -> str | None:
        a = self.spec.actions
        return (a.output or self.output_names[0]) if a.decode == "tokens" else None

    def make_inputs(self, frames: dict, seed: int = 0) -> dict[str, np.ndarray]:
        """Frames -> feeds, each input from its (bound) dataset feature, preprocessed as its spec says
        (see `vlaedge.models.preprocess`).

        Raises:
            VlaedgeError: a feature missing from `frames`, or a normalised input whose statistics are not
                in config.json while the policy is not bound to a dataset (`bind_data`).
        """
        rng = np.random.default_rng(seed)
        batch = len(frames["instruction"])
        feeds = {}
        for spec in self.input_spec:
            d, stats = self.fed(spec.name)
            shape = spec.concrete_shape(batch)
            if d.source == "noise":
                value = rng.standard_normal(shape)
            elif d.source in ("instruction", "instruction_mask"):
                ids, mask = self._tokens(list(frame_field(frames, d.feature, d.source)))
                value = ids if d.source == "instruction" else mask
            else:
                if d.normalize != "none" and not stats:
                    raise VlaedgeError(f"inputs: {spec.name!r} is normalised ({d.normalize}) but has no "
                                       "statistics", "add them to config.json (stats) or pass --data with "
                                       "a dataset whose meta/stats.json has them")
                values = frame_field(frames, d.feature, d.source)
                value = (image_feed(values, shape, spec.dtype, spec.low, spec.high, d, stats)
                         if d.source == "image" else vector_feed(values, shape, spec.dtype, d, stats))
            feeds[spec.name] = np.ascontiguousarray(value, dtype=spec.dtype)
        return feeds

    def _tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(self.tokenizer, FileTokenizer):
            return self.tokenizer.encode_with_mask(texts)
        ids = self.tokenizer.encode(texts)
        return ids, (ids != PAD).astype(np.int64)

    def decode(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        a = self.spec.actions
        out = outputs[a.output or self.output_names[0]]
        low, high = np.asarray(a.low, np.float32), np.asarray(a.high, np.float32)
        if a.decode == "tokens":
            logits = self.token_logits(out)
            unit = (logits.argmax(-1).astype(np.float32) + 0.5) / logits.shape[-1]
        elif a.normalised:
            unit = (np.clip(out, -1.0, 1.0) + 1.0) * 0.5
        else:
            return np.clip(out, low, high).astype(np.float32).reshape(len(out), a.chunk, len(a.names))
        return (low + unit * (high - low)).astype(np.float32).reshape(len(out), a.chunk, len(a.names))

    def token_logits(self, out: np.ndarray) -> np.ndarray:
        """A tokens head's logits as [B, T, A, bins]; [B, A, bins] (no chunk axis) is read as chunk 1.

        Raises:
            VlaedgeError: any other shape, naming it, the shape the spec expects and the output.
        """
        a = self.spec.actions
        n = len(a.names)
        if out.ndim == 3 and a.chunk == 1 and out.shape[1] == n:
            out = out[:, None]
        if out.ndim != 4 or tuple(out.shape[1:3]) != (a.chunk, n):
            chunkless = f" (or [B, {n}, bins])" if a.chunk == 1 else ""
            raise VlaedgeError(
                f"policy spec: actions.decode 'tokens' reads logits [B, chunk={a.chunk}, actions={n}, bins]"
                f"{chunkless} from output {a.output or self.output_names[0]!r}; the module gives "
                f"{list(out.shape)}",
                "return logits [B, chunk, actions, bins] from forward ([B, actions, bins] when a call gives "
                "one action), or set actions.chunk and actions.names to what it returns")
        return out

    def check_token_logits(self) -> None:
        """Runs the module once (batch 1, `example_inputs`) and checks its logits' shape (`token_logits`),
        so that a tokens head the spec misdescribes is refused at load, not after export and quantization."""
        out = self.run_torch(self.example_inputs(batch=1))
        self.token_logits(out[self.logits_output])

    def save(self, path: str | Path) -> Path:
        """Writes the spec, model.safetensors and the files the spec names (factory file, factory config,
        tokenizer) into `path`, atomically. A spec that came from vlaedge.json (beside a Hugging Face
        config.json) is written back to vlaedge.json."""
        needed = _local_files(self.spec)
        files = {name: _in_folder(self.root, name, "file") for name in needed}
        if isinstance(self.tokenizer, FileTokenizer):
            files[self.spec.tokenizer.file] = self.tokenizer.path
        return write_checkpoint(Path(path), self.spec.model_dump(exclude_none=True), self.module.state_dict(),
                                _spec_file(self.spec), files)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, raw: dict, allow_pickle: bool = False,
                        dtype: str = "float32") -> PythonPolicy:
        """The policy of a checkpoint directory whose spec is `raw`, with exactly the weights on disk.

        The factory runs with parameters on the meta device (`empty_parameters`: no memory, no random
        init; buffers real), then each weight, memory-mapped, becomes its parameter in `dtype` ("float32"
        keeps the factory's dtypes; "float16" / "bfloat16" cast floating weights and buffers).

        Raises:
            VlaedgeError: an invalid spec, a factory that cannot be imported or fails, no weights, or
                weights that do not match the module (see `load_weights`, `check_state_dict`).
        """
        try:
            spec = PythonPolicySpec.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            name = SPEC_FILE if (checkpoint / SPEC_FILE).is_file() else CONFIG_FILE
            raise VlaedgeError(f"policy spec: {checkpoint}/{name}: {where}: {err['msg']}",
                               "see the PythonPolicy docstring in vlaedge/models/python.py for the "
                               "format") from e
        with empty_parameters(bool(weight_files(checkpoint, allow_pickle))):
            policy = cls(spec, root=checkpoint)
            if spec.pruned:
                from vlaedge.models.pruned_shapes import reshape_pruned

                reshape_pruned(policy.module, spec.pruned)
        check_state_dict(policy.module, load_weights(checkpoint, allow_pickle), checkpoint,
                         dtype if dtype in HALF else None)
        policy.module.eval()
        if spec.actions.decode == "tokens":
            policy.check_token_logits()
        return policy


def _spec_file(spec: PythonPolicySpec) -> str:
    """The file the spec lives in: vlaedge.json beside a Hugging Face config.json the factory reads, else
    config.json."""
    return SPEC_FILE if spec.factory_config == CONFIG_FILE else CONFIG_FILE


def _local_files(spec: PythonPolicySpec) -> list[str]:
    """The files of the checkpoint folder the spec itself needs (factory file, factory config)."""
    module = spec.factory.partition(":")[0]
    return [f for f in (module if module.endswith(".py") else None, spec.factory_config) if f]


def _tokenizer(spec: PythonPolicySpec, root: Path | None) -> WordTokenizer | FileTokenizer | None:
    """The instruction tokenizer the spec declares (None when no input reads the instruction)."""
    text = [i for i in spec.inputs if i.source in ("instruction", "instruction_mask")]
    if not text:
        return None
    t = spec.tokenizer
    if t is None:
        raise VlaedgeError(f"policy spec: input {text[0].name!r} reads the instruction but no tokenizer is "
                           "given", 'add "tokenizer": {"file": "tokenizer.json"} or {"vocab": [...]} to '
                           "config.json")
    if t.vocab is not None:
        return WordTokenizer(t.vocab, int(text[0].shape[-1]))
    if root is None or Path(t.file).is_absolute() or ".." in Path(t.file).parts:
        raise VlaedgeError(f"policy spec: tokenizer.file {t.file!r} must be a file in the checkpoint folder",
                           "ship it next to config.json and load the policy with load_policy(CHECKPOINT)")
    return FileTokenizer(root / t.file, int(text[0].shape[-1]), t.padding, t.truncation, t.pad_id,
                         t.add_special_tokens)


def _call_factory(spec: PythonPolicySpec, root: Path | None):
    module_name, _, attr = spec.factory.partition(":")
    if not module_name or not attr:
        raise VlaedgeError(f"policy spec: factory {spec.factory!r} is not of the form "
                           "'package.module:callable' or 'file.py:callable'",
                           'e.g. "factory": "my_robot.policy:build" or "policy.py:build"')
    try:
        source = _import_file(root, module_name) if module_name.endswith(".py") else (
            importlib.import_module(module_name))
        factory = getattr(source, attr)
    except (SystemExit, KeyboardInterrupt) as e:  # the checkpoint's code must not end vlaedge (exit 0)
        raise _stopped(f"importing {module_name!r} for factory {spec.factory}", e) from None
    except ImportError as e:
        raise VlaedgeError(f"policy spec: cannot import {module_name!r} ({e})", missing_extra(e) or
                           "install the package that defines the policy, or add it to PYTHONPATH") from e
    except AttributeError as e:
        raise VlaedgeError(f"policy spec: {module_name!r} has no {attr!r}", "check the factory name") from e
    args = [_factory_config(spec, root)] if spec.factory_config else []
    try:
        module = factory(*args, **spec.factory_kwargs)
    except (SystemExit, KeyboardInterrupt) as e:
        raise _stopped(f"factory {spec.factory}", e) from None
    except Exception as e:  # noqa: BLE001 (the user's code: any failure is the checkpoint's, named here)
        passed = f"{spec.factory_config} as the first argument and " if spec.factory_config else ""
        fix = (f"check factory_kwargs in {_spec_file(spec)} against the factory's signature (it is called "
               f"with {passed}factory_kwargs as keywords)")
        raise VlaedgeError(f"policy spec: factory {spec.factory} raised {type(e).__name__}: {str(e)[:200]}",
                           missing_extra(e) or fix) from e
    import torch

    if not isinstance(module, torch.nn.Module):
        raise VlaedgeError(f"policy spec: factory {spec.factory} returned a {type(module).__name__}, "
                           "not a torch.nn.Module", "point factory at a function that builds the model")
    return module


def _stopped(what: str, e: SystemExit | KeyboardInterrupt) -> VlaedgeError:
    """A factory (or its module) that tried to end the process: a user error naming it, exit 2, so that
    a `sys.exit(0)` in a checkpoint's code is never read as a passing run."""
    how = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else "raised KeyboardInterrupt"
    return VlaedgeError(f"policy spec: {what} {how}",
                        "a factory must return the model (a torch.nn.Module), never exit or interrupt: "
                        "remove the sys.exit/exit()/KeyboardInterrupt from the checkpoint's code")


def _in_folder(root: Path | None, name: str, what: str) -> Path:
    if root is None or Path(name).is_absolute() or ".." in Path(name).parts or not (root / name).is_file():
        raise VlaedgeError(f"policy spec: {what} {name!r} must be a file in the checkpoint folder",
                           f"ship it next to the spec{f' in {root}' if root else ''} and load the policy "
                           "with load_policy(CHECKPOINT)")
    return root / name


def _import_file(root: Path | None, name: str):
    """Imports `name` (a .py file in the checkpoint folder) as a module of its own, once per file."""
    import hashlib
    import importlib.util
    import sys

    path = _in_folder(root, name, "factory file").resolve()
    key = "vlaedge_checkpoint_" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    if key in sys.modules:
        return sys.modules[key]
    loader_spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[key] = module  # before exec: dataclasses and transformers look the module up
    try:
        loader_spec.loader.exec_module(module)
    except (SystemExit, KeyboardInterrupt):
        del sys.modules[key]
        raise
    except Exception as e:  # noqa: BLE001 (the checkpoint's code)
        del sys.modules[key]
        if isinstance(e, ImportError):
            raise
        raise VlaedgeError(f"policy spec: importing {path} raised {type(e).__name__}: {str(e)[:200]}",
                           "fix the factory file") from e
    return module


def _factory_config(spec: PythonPolicySpec, root: Path | None) -> dict:
    return read_json(_in_folder(root, spec.factory_config, "factory_config"))
