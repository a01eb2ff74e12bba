"""Sampling calibration frames: a LeRobot v3 dataset whose camera is mp4 video (PyAV, seeking) against
the same frames stored as PNG images in parquet (Pillow).

Writes one synthetic dataset (moving shapes over a gradient, `--episodes` x `--length` frames of
`--size` x `--size`) three ways: PNG in parquet, AV1 and H.264 video (keyframe every 2 frames, as LeRobot
encodes). Each round loads every dataset fresh and draws the same `--frames` calibration frames
(`sample_frames`, seed 0), interleaved round by round in one run; the ratio of medians is the figure
(single times drift ~40% on a shared machine). PNG frames are decoded when the dataset loads, video
frames only when sampled, so both times cover load + sample.

    .venv/bin/python benchmarks/data_decode.py --rounds 7 --out benchmarks/results/data_decode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from vlaedge.data import Episode, EpisodeDataset, load_dataset, sample_frames, save_lerobot


def synthetic(episodes: int, length: int, size: int) -> EpisodeDataset:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for e in range(episodes):
        frames = np.empty((length, size, size, 3), np.uint8)
        for k in range(length):
            cx, cy = (size / 2 + size / 3 * np.cos([k / 7 + e, k / 5 + 2 * e]))
            blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < (size / 8) ** 2)
            frames[k, ..., 0] = (xx * 255 // size + 3 * k) % 256
            frames[k, ..., 1] = np.where(blob, 230, yy * 200 // size)
            frames[k, ..., 2] = (40 * e) % 256
        out.append(Episode("pick up the red block", frames, rng.uniform(-1, 1, (length, 4)),
                           rng.uniform(-1, 1, (length, 3)), index=e))
    return EpisodeDataset.from_episodes(out, fps=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ds = synthetic(args.episodes, args.length, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"png in parquet": save_lerobot(ds, Path(tmp) / "png"),
                 "av1 video": save_lerobot(ds, Path(tmp) / "av1", video_codec="av1"),
                 "h264 video": save_lerobot(ds, Path(tmp) / "h264", video_codec="h264")}
        sizes = {k: sum(p.stat().st_size for p in r.rglob("*") if p.is_file()) for k, r in roots.items()}
        times: dict[str, list[float]] = {k: [] for k in roots}
        decoded: dict[str, int] = {}
        errors: dict[str, float] = {}
        reference = None
        for _ in range(args.rounds):
            for name, root in roots.items():
                start = time.perf_counter()
                loaded = load_dataset(root)
                batch = sample_frames(loaded, args.frames, seed=0)
                times[name].append(time.perf_counter() - start)
                decoded[name] = sum(getattr(ep.images, "frames_decoded", len(ep)) for ep in loaded.episodes)
                if reference is None:
                    reference = batch["image"].astype(np.int16)
                errors[name] = float(np.abs(batch["image"].astype(np.int16) - reference).mean())
    result = {
        "command": "python benchmarks/data_decode.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "dataset": f"{args.episodes} episodes x {args.length} frames, {args.size}x{args.size} RGB, 10 fps",
        "frames_sampled": args.frames,
        "per_format": {
            name: {"median_s": statistics.median(t), "frames_per_s": args.frames / statistics.median(t),
                   "frames_decoded": decoded[name], "bytes_on_disk": sizes[name],
                   "mean_abs_error_vs_png_0_255": errors[name]}
            for name, t in times.items()},
    }
    base = result["per_format"]["png in parquet"]["median_s"]
    for entry in result["per_format"].values():
        entry["speed_vs_png"] = base / entry["median_s"]
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
