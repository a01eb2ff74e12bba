"""Episode datasets: the LeRobot v3 layout and plain .npz, split by episode."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Episode:
    """One recorded episode: N frames of one camera, proprio state and the action taken.

    Attributes:
        instruction: the language instruction, one per episode.
        images: uint8 [N, H, W, 3] camera frames (HWC, RGB).
        state: float32 [N, S] proprio state.
        action: float32 [N, A] action labels, in the environment's units.
        index: episode index within its dataset.
        success: whether the episode reached its goal (None when unknown).
    """

    instruction: str
    images: np.ndarray
    state: np.ndarray
    action: np.ndarray
    index: int = 0
    success: bool | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.action)
