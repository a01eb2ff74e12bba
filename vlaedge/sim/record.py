"""Recording datasets from the tabletop expert (how calibration/ was made)."""

from __future__ import annotations

from pathlib import Path

from vlaedge.data import EpisodeDataset, save_npz
from vlaedge.data.lerobot import save_lerobot
from vlaedge.errors import VlaedgeError

FORMATS = ("lerobot", "npz")


def record_dataset(out: Path, episodes: int, seed: int = 0, image_size: int = 64, fmt: str = "lerobot",
                   force: bool = False) -> tuple[Path, EpisodeDataset]:
    """Records `episodes` scripted-expert episodes of the tabletop task and saves them.

    Args:
        out: dataset directory to create.
        episodes: number of episodes.
        seed: seeds the episodes; evaluation uses seeds from 10000, so keep recordings below that.
        image_size: camera image side.
        fmt: "lerobot" (LeRobot v3 layout) or "npz" (one file per episode).
        force: replace an existing `out`.

    Returns:
        The written path and the dataset.
    """
    from vlaedge.sim import TabletopEnv, record_episodes

    if fmt not in FORMATS:
        raise VlaedgeError(f"format: {fmt!r} is not supported", f"use one of {', '.join(FORMATS)}")
    if episodes < 1:
        raise VlaedgeError(f"episodes: {episodes} must be at least 1", "record one or more episodes")
    out = Path(out)
    if out.exists() and not force:
        raise VlaedgeError(f"output: {out} already exists",
                           "pass --force to replace it, or choose another path")
    env = TabletopEnv(image_size=image_size)
    dataset = EpisodeDataset(record_episodes(episodes, seed=seed, image_size=image_size), fps=env.fps,
                             action_names=list(env.action_names), state_names=list(env.state_names),
                             source="vlaedge record")
    save = save_lerobot if fmt == "lerobot" else save_npz
    path = save(dataset, out, overwrite=force)
    return Path(path), dataset
