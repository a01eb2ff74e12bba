"""Calibration inputs of a staged policy's stages (`vlaedge.models.stages`), made once.

A later stage calibrates on what the torch stages before it return (the prefix on the vision stage's
patches, the expert on the prefix's context at every denoise step). `StageInputs.record` runs the torch
plan once per calibration batch, stopping after the last stage anyone needs, and writes each needed call's
feeds to .npy files in a folder on disk (the quantizer's staging folder); `StageCalibration` hands one
stage's calls to ONNX Runtime's calibrator from there, one call in memory at a time. So each torch stage
runs at most once per batch, whatever the number of stages quantized, and no stage's inputs for all frames
sit in memory.

Measured on the SmolVLA-size policy (issue 23; 256 frames at 384 px): streaming by re-running the torch
stages before each stage ran the vision stage twice and the 16-layer prefix once (and each stage itself,
whose outputs nobody read) before ONNX Runtime saw a frame of the prefix; see benchmarks/results/scale.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.models.base import Policy
from vlaedge.models.stages import StagePlan


class _PlanDone(Exception):
    """Stops a torch run of the plan once every call needed from this batch is recorded."""


class StageInputs:
    """The feeds of stage calls on the calibration batches, recorded to `folder` by one torch run per batch.

    Args:
        policy: the staged policy.
        plan: its plan.
        batches: the calibration feed batches, each input (B, ...); torch runs them in parts of
            `run_frames` frames (None: whole), and each part is a batch here: torch's activations at 32
            frames of a SmolVLA-size prefix at 384 px were +1.75 GB.
        folder: where the .npy files go (created; the caller removes it).
        full: stages whose calls are needed on every batch (static quantization calibrates on them).
        first: stages whose calls are needed on the first batch only (input specs, a smoke run).

    A stage whose inputs are all policy inputs runs no torch stage (its calls are the batches' own arrays).
    """

    def __init__(self, policy: Policy, plan: StagePlan, batches: list[dict[str, np.ndarray]], folder: Path,
                 full: set[str], first: set[str] = frozenset(), run_frames: int | None = None):
        from vlaedge.compress.quantize_ort import parts

        self.policy, self.plan, self.folder = policy, plan, Path(folder)
        self.batches = [part for b in batches for part in parts(b, run_frames)]
        self.full, self.first = set(full), set(first) | set(full)
        self.index: dict[tuple[str, int], list[dict[str, str]]] = {}  # (stage, batch) -> call -> name -> file
        self.folder.mkdir(parents=True, exist_ok=True)

    def needed(self, stage: str, batch: int) -> bool:
        """Whether the calls of `stage` on batch `batch` are recorded."""
        return stage in self.full or (batch == 0 and stage in self.first)

    def record(self) -> StageInputs:
        """Runs the torch plan on every batch (up to the last stage needed from it) and writes the needed
        calls' feeds; returns self. A feed array that several calls share (the loop's context) is written
        once per batch."""
        names = [g.name for g in self.plan.graphs]
        own = {g.name for g in self.plan.graphs if not self.plan.is_loop(g)
               and set(g.inputs) <= set(self.batches[0])}  # fed by policy inputs only
        todo = [b for b in range(len(self.batches))
                if any(self.needed(n, b) and n not in own for n in names)]
        with progress.stage("calibration: torch stage inputs", total=len(todo)) as bar:
            for b in range(len(self.batches)):
                for name in own:
                    if self.needed(name, b):
                        g = self.plan.stage(name)
                        self._write(name, b, {n: self.batches[b][n] for n in g.inputs}, {})
                if b in todo:
                    self._run(b, names, own)
                    bar.advance()
        return self

    def _run(self, b: int, names: list[str], own: set[str]) -> None:
        from vlaedge.models.stages import run_plan, torch_runner

        last = max(names.index(n) for n in names if self.needed(n, b) and n not in own)
        inner, written = torch_runner(self.policy.module), {}

        def run(g, feeds):
            i = names.index(g.name)
            if i > last:
                raise _PlanDone
            if self.needed(g.name, b) and g.name not in own:
                self._write(g.name, b, feeds, written)
                calls = len(self.index[g.name, b])
                if i == last and (not self.plan.is_loop(g) or calls == self.plan.denoise.steps):
                    raise _PlanDone  # its own outputs are read by nobody
            return inner(g, feeds)

        self.policy.module.eval()
        with contextlib.suppress(_PlanDone):
            run_plan(self.plan, run, self.batches[b], self.policy.output_names)

    def _write(self, stage: str, b: int, feeds: dict[str, np.ndarray], written: dict) -> None:
        """Writes one call's feeds; `written` (one batch's: id -> (array, file)) keeps each array it names
        alive, so an id is never reused for another array within the batch."""
        calls = self.index.setdefault((stage, b), [])
        files = {}
        for name, array in feeds.items():
            if id(array) not in written:  # the same array object fed to several calls: one file
                file = self.folder / f"{stage}.{b}.{len(calls)}.{name}.npy"
                np.save(file, np.ascontiguousarray(array))
                written[id(array)] = (array, file.name)
            files[name] = written[id(array)][1]
        calls.append(files)

    def calls(self, stage: str) -> int:
        """Calls of `stage` per batch."""
        return self.plan.denoise.steps if self.plan.is_loop(self.plan.stage(stage)) else 1


class StageCalibration(Sequence):
    """One stage's calibration feeds from `StageInputs`: item i is call `i % calls_per_batch` of batch
    `i // calls_per_batch` (the loop's stage: its `steps` calls of each batch, with what the loop fed it
    at that step: t_k, the step index, x_k; its ranges must cover every step).

    Only the current batch's shared arrays (the loop's context) stay loaded between items; each item's
    other arrays are read when it is asked for.
    """

    def __init__(self, inputs: StageInputs, stage: str):
        self.inputs, self.stage = inputs, stage
        self.calls_per_batch = inputs.calls(stage)
        self.batches = [b for b in range(len(inputs.batches)) if inputs.needed(stage, b)]
        self._batch, self._shared = -1, {}

    @property
    def frames(self) -> int:
        """Stage calls x batch rows: what the stage's calibration saw (the loop's stage: frames x steps)."""
        return self.calls_per_batch * sum(len(next(iter(self.inputs.batches[b].values())))
                                          for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches) * self.calls_per_batch

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = index + len(self) if index < 0 else index
        if not 0 <= index < len(self):
            raise IndexError(index)
        position, call = divmod(index, self.calls_per_batch)
        batch = self.batches[position]
        files = self.inputs.index[self.stage, batch]
        if batch != self._batch:
            counts: dict[str, int] = {}
            for c in files:
                for f in c.values():
                    counts[f] = counts.get(f, 0) + 1
            self._shared, self._batch = {f: None for f, n in counts.items() if n > 1}, batch
        feeds = {}
        for name, file in files[call].items():
            if file in self._shared:
                if self._shared[file] is None:
                    self._shared[file] = np.load(self.inputs.folder / file)
                feeds[name] = self._shared[file]
            else:
                feeds[name] = np.load(self.inputs.folder / file)
        return feeds
