"""The torch eager runtime (the FP32 reference runs here)."""

from __future__ import annotations

import numpy as np

from vlaedge.models.base import Policy
from vlaedge.runtimes.base import Runtime


class TorchRuntime(Runtime):
    """Runs a policy's torch module where it lives (`Policy.device`: the CPU unless it was loaded with
    `device="cuda"`); feeds and outputs are numpy on the CPU either way.

    Args:
        policy: the policy whose module runs.
        threads: intra-op threads (None keeps torch's setting).
    """

    name = "torch"

    def __init__(self, policy: Policy, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.policy = policy
        self.input_spec = policy.input_spec
        self.output_names = policy.output_names

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.policy.run_torch(feeds)
