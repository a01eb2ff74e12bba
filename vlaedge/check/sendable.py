"""A candidate runtime's act function that can be sent to another process (a Ray worker): the closed loop's
candidate when its episodes fan out (`vlaedge.check.closedloop`, `vlaedge.executor`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vlaedge.executor import Blob


class RuntimeAct:
    """A candidate's act function, `policy.decode(runtime.infer(policy.make_inputs(frames)))`, that can be
    sent to a worker: pickled, it carries the policy, the runtime's name, threads and Q/DQ arithmetic and
    the model's files (a sha256-checked `Blob`: no shared file system), and reopens the runtime where it
    is first called.

    Args:
        policy: the reference policy (inputs and decoding).
        runtime: the open candidate runtime (`vlaedge.runtimes`).
        model: the candidate's .onnx file (None: a torch runtime, pickled as it is).
        threads: CPU threads of the reopened runtime.
    """

    def __init__(self, policy, runtime, model: str | Path | None = None, threads: int | None = None):
        self.policy, self.runtime, self.threads = policy, runtime, threads
        self.model = Path(model) if model is not None and runtime.name != "torch" else None
        self.name, self.qdq = runtime.name, getattr(runtime, "qdq", "fused")

    def __call__(self, frames: dict) -> np.ndarray:
        if self.runtime is None:
            from vlaedge.runtimes import open_runtime

            self._folder = tempfile.TemporaryDirectory(prefix="vlaedge-candidate-")
            files = self._files.unpack(Path(self._folder.name))
            self.runtime = open_runtime(self.name, self.policy, files[0], self.threads, qdq=self.qdq)
        return self.policy.decode(self.runtime.infer(self.policy.make_inputs(frames)))

    def __getstate__(self) -> dict:
        if self.model is None:
            return {k: v for k, v in self.__dict__.items() if k != "_folder"}
        if self.model.suffix != ".onnx":
            raise TypeError(f"{self.model.name}: only an .onnx candidate (and its external data) is sent")
        from vlaedge.onnx_file import external_data_files

        files = [self.model, *external_data_files(self.model)]
        state = {k: v for k, v in self.__dict__.items() if k not in ("runtime", "_folder", "_files")}
        return {**state, "runtime": None,
                "_files": Blob.of_files(f"candidate {self.model.name}", self.model.parent, files)}
