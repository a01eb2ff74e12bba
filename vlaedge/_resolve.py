"""What the verify/profile/gate commands are pointed at: an .onnx file or a `vlaedge compress` output
directory, whose manifest gives the checkpoint, the data and the calibration/evaluation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlaedge.errors import VlaedgeError


@dataclass
class Resolved:
    """A candidate model and what its run directory (if any) says about it."""

    model: Path | None
    manifest: dict | None
    checkpoint: Path | None
    data: Path | None


def resolve_model(path: Path | None, checkpoint: Path | None = None, data: Path | None = None) -> Resolved:
    """An .onnx file, a compress output directory (its model.onnx), a checkpoint directory or None.

    Explicit `checkpoint` / `data` win over the run directory's manifest.
    """
    if path is None:
        return Resolved(None, None, checkpoint, data)
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").is_file():
        from vlaedge.artifact import read_manifest

        manifest = read_manifest(path)
        inputs = manifest.get("inputs", {})
        ckpt = checkpoint or _existing(inputs.get("checkpoint", {}).get("path"))
        return Resolved(
            path / "model.onnx", manifest, ckpt, data or _existing(inputs.get("data", {}).get("path"))
        )
    if path.is_dir() and (path / "config.json").is_file():  # a checkpoint (runtime torch)
        return Resolved(path, None, checkpoint, data)
    if not path.is_file():
        raise VlaedgeError(
            f"model: {path} does not exist", "pass an .onnx file or a 'vlaedge compress' output directory"
        )
    return Resolved(path, None, checkpoint, data)


def _existing(value: str | None) -> Path | None:
    return Path(value) if value and Path(value).exists() else None


def evaluation_split(dataset, manifest: dict | None, seed: int = 0):
    """(calibration, evaluation): the run's recorded split when there is one, else a fresh split by episode
    with `vlaedge.compress`'s fraction and seed (the same split compress makes)."""
    from vlaedge.compress import EVAL_FRACTION
    from vlaedge.data import EpisodeDataset, split_episodes

    split = (manifest or {}).get("split") or {}
    if split.get("evaluation_episodes"):
        wanted = set(split["evaluation_episodes"])
        evaluation = [ep for ep in dataset.episodes if ep.index in wanted]
        calibration = [ep for ep in dataset.episodes if ep.index not in wanted]
        if len(evaluation) != len(wanted) or not calibration:
            raise VlaedgeError(
                f"data: {dataset.source} lacks the run's evaluation episodes "
                f"{sorted(wanted - {ep.index for ep in evaluation})[:5]}",
                "pass the dataset the run was compressed with (--data)",
            )
        make = EpisodeDataset
        return (
            make(calibration, dataset.fps, dataset.action_names, dataset.state_names, dataset.source),
            make(evaluation, dataset.fps, dataset.action_names, dataset.state_names, dataset.source),
        )
    return split_episodes(dataset, EVAL_FRACTION, seed)


def fingerprint(checkpoint: Path) -> str:
    """The checkpoint directory's sha256 (as the manifest records it)."""
    from vlaedge.artifact import sha256

    return sha256(Path(checkpoint))
