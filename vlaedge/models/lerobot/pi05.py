"""pi0.5 (LeRobot 0.4.4's `PI05Policy`): the network is `pi0.py`'s with `type: pi05`; this module adds the
state prompt LeRobot's preprocessor builds before tokenizing.

pi0.5 does not feed the state to the network: `pi05_prepare_state_tokenizer_processor_step` writes it into
the prompt. After the normalizer step (QUANTILES by default, so the state is about [-1, 1]), the state is
zero-padded to `max_state_dim`, each value is put in one of 256 bins over [-1, 1]
(`np.digitize(x, np.linspace(-1, 1, 257)[:-1]) - 1`: below -1 gives -1, 1 and above give 255, a padded 0
gives 128), and the task becomes

    "Task: {task, stripped, '_' and '\\n' -> ' '}, State: {bins joined by ' '};\\nAction: "

which the tokenizer step (PaliGemma's, `padding: max_length`, right) tokenizes; no new-line step runs.

An adapter feeding pi0.5 therefore: normalizes the raw state exactly as LeRobot's normalizer does (torch
float32, `2 * (x - q01) / (q99 - q01) - 1`, a zero range replaced by eps: bins are discontinuous, so the
arithmetic must be the same), calls `state_prompts(tasks, normalized, max_state_dim)`, and tokenizes the
prompts; the graph then takes images, tokens, mask and noise (`observation.state` is not read).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlaedge.models.lerobot.pi0 import PI0, build, resize_with_pad
from vlaedge.models.lerobot.pi0_spec import PI0Spec, noise_shapes

__all__ = ["ROOT", "PI0", "PI0Spec", "build", "noise_shapes", "resize_with_pad", "discretize_state",
           "prompt_with_state", "state_prompts"]
ROOT = "model"  # PI05Policy holds the network as `self.model`: the checkpoint's key prefix
STATE_BINS = 256
_EDGES = np.linspace(-1, 1, STATE_BINS + 1)[:-1]  # float64, as LeRobot's step computes them


def discretize_state(normalized: np.ndarray, max_state_dim: int = 32) -> np.ndarray:
    """LeRobot's pi0.5 state bins.

    Args:
        normalized: (B, D) or (D,) float32 state after LeRobot's normalizer (D <= max_state_dim).
        max_state_dim: config.json's `max_state_dim`; the state is zero-padded to it first.

    Returns:
        (B, max_state_dim) or (max_state_dim,) int64 bins in -1..255.
    """
    state = np.asarray(normalized, np.float32)
    if state.shape[-1] < max_state_dim:
        pad = [(0, 0)] * (state.ndim - 1) + [(0, max_state_dim - state.shape[-1])]
        state = np.pad(state, pad)
    return (np.digitize(state, bins=_EDGES) - 1).astype(np.int64)


def prompt_with_state(task: str, bins: Sequence[int]) -> str:
    """One sample's prompt: the cleaned task and its state bins (`discretize_state`), as LeRobot writes it.

    Example:
        >>> prompt_with_state("open_the drawer\\n", [95, 24, 128])
        'Task: open the drawer, State: 95 24 128;\\nAction: '
    """
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    return f"Task: {cleaned}, State: {' '.join(str(int(b)) for b in bins)};\nAction: "


def state_prompts(tasks: Sequence[str], normalized: np.ndarray, max_state_dim: int = 32) -> list[str]:
    """`pi05_prepare_state_tokenizer_processor_step` for a batch.

    Args:
        tasks: B task strings (the dataset's / environment's `task`).
        normalized: (B, state_dim) float32 state after LeRobot's normalizer step.
        max_state_dim: config.json's `max_state_dim`.

    Returns:
        B prompts for the tokenizer step.
    """
    bins = discretize_state(np.asarray(normalized).reshape(len(tasks), -1), max_state_dim)
    return [prompt_with_state(task, row) for task, row in zip(tasks, bins, strict=True)]
