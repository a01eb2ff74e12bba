"""The .npz episode layout: one compressed file per episode (`save_npz`, `load_npz`)."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from vlaedge.data.episodes import Episode, EpisodeDataset, atomic_dir, check_episode, default_names
from vlaedge.errors import VlaedgeError


def save_npz(dataset: EpisodeDataset, path: str | Path, overwrite: bool = False) -> Path:
    """Write a dataset as a folder with one compressed .npz file per episode.

    Layout: ``path/episode_000000.npz``, ``episode_000001.npz``, ... (episodes renumbered 0..n-1 in
    order), each with ``images`` uint8 [N, H, W, 3], ``state`` float32 [N, S], ``action`` float32 [N, A],
    ``instruction`` (0-d str), ``fps`` (0-d float), ``state_names`` / ``action_names`` (1-d str) and
    ``success`` (0-d bool, only when known). `load_dataset` requires the first four and ``fps``.
    The folder is written next to `path` and renamed into place, like `save_lerobot`.

    Args:
        dataset: the episodes to write.
        path: the folder to create.
        overwrite: replace `path` if it exists.

    Returns:
        `path` as a Path.

    Raises:
        VlaedgeError: `path` exists and is not empty while `overwrite` is False.
    """
    path = Path(path)
    with atomic_dir(path, overwrite) as tmp:
        for i, ep in enumerate(dataset.episodes):
            arrays = {"images": ep.images, "state": ep.state, "action": ep.action}
            arrays |= {"instruction": np.array(ep.instruction), "fps": np.array(dataset.fps)}
            arrays |= {"state_names": np.array(dataset.state_names, dtype=str)}
            arrays |= {"action_names": np.array(dataset.action_names, dtype=str)}
            if ep.success is not None:
                arrays["success"] = np.array(ep.success)
            np.savez_compressed(tmp / f"episode_{i:06d}.npz", **arrays)
    return path


def load_npz(files: list[Path], source: str) -> EpisodeDataset:
    episodes, first_meta = [], []
    for i, path in enumerate(files):
        arrays = _read_npz(path)
        missing = [k for k in ("images", "state", "action", "instruction", "fps") if k not in arrays]
        if missing:
            raise VlaedgeError(
                f"dataset: {path} lacks array(s) {missing}; it has {sorted(arrays)}",
                "write them with vlaedge.data.save_npz (fps: the control rate in Hz, e.g. np.array(10.0))",
            )
        instruction = arrays["instruction"]
        if instruction.ndim != 0 or instruction.dtype.kind != "U":
            raise VlaedgeError(
                f"dataset: {path}: instruction is {instruction.dtype} {instruction.shape}",
                "store it as a 0-d string array, np.array('pick up the cube')",
            )
        meta = [arrays[k].tolist() if k in arrays else None for k in ("fps", "state_names", "action_names")]
        if first_meta and meta != first_meta:
            raise VlaedgeError(
                f"dataset: {path} has fps/names {meta}, {files[0]} has {first_meta}", "make them agree"
            )
        first_meta = meta
        success = bool(arrays["success"]) if "success" in arrays else None
        ep = Episode(
            str(instruction), arrays["images"], arrays["state"], arrays["action"], index=i, success=success
        )
        episodes.append(check_episode(ep, f"dataset: {path}"))
    fps, state_names, action_names = first_meta
    action_names = action_names or default_names("action", episodes[0].action.shape[1])
    state_names = state_names or default_names("state", episodes[0].state.shape[1])
    return EpisodeDataset(episodes, float(fps), action_names, state_names, source)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise VlaedgeError(
            f"dataset: {path} is not a readable .npz ({type(exc).__name__}: {exc})",
            "it is truncated or corrupt, or holds object arrays; re-export it with vlaedge.data.save_npz",
        ) from None
