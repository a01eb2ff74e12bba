"""The runtime contract: `infer(feeds) -> outputs` on numpy arrays. Inputs are checked once, here, so
backends only run the model (as in Polygraphy's runners)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from vlaedge.errors import VlaedgeError
from vlaedge.models.base import BATCH, TensorSpec


class Runtime(ABC):
    """A loaded model on one backend.

    Subclasses set `name`, `input_spec` and `output_names` and implement `_infer`.
    """

    name: str
    input_spec: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model on `feeds` (keyed by input name) after checking them against `input_spec`."""
        self.check_feeds(feeds)
        return self._infer(feeds)

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Backend-specific inference on already checked feeds."""

    def check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        """Raises VlaedgeError when feeds miss an input, add one, or have a wrong dtype or shape."""
        expected = [s.name for s in self.input_spec]
        if sorted(feeds) != sorted(expected):
            raise VlaedgeError(f"{self.name}: inputs {sorted(feeds)} do not match the model's {expected}",
                               "the candidate and the reference must take the same inputs")
        batch = None
        for spec in self.input_spec:
            value = feeds[spec.name]
            if value.dtype != np.dtype(spec.dtype):
                raise VlaedgeError(f"{self.name}: input {spec.name} is {value.dtype}, the model needs "
                                   f"{spec.dtype}", "build feeds with the policy's make_inputs")
            batch = value.shape[0] if batch is None and value.ndim else batch
            if not _shape_matches(value.shape, spec.shape, batch):
                raise VlaedgeError(f"{self.name}: input {spec.name} has shape {value.shape}, the model needs "
                                   f"{spec.concrete_shape(batch)}",
                                   "build feeds with the policy's make_inputs")

    def close(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing to release)
        """Releases backend resources."""


def _shape_matches(shape: tuple[int, ...], spec: tuple[int | str, ...], batch: int) -> bool:
    if len(shape) != len(spec):
        return False
    return all(d == (batch if s == BATCH else s) for d, s in zip(shape, spec, strict=True))
