"""Reading the committed calibration set: Pillow (now) against the hand-written PNG codec it replaced.

The old codec (`vlaedge/png.py`, removed after commit 1c2bbb8) is taken from git history, so this needs
the git checkout. Both decode the same PNG blobs of `vlaedge/assets/calibration/tabletop` (every frame),
interleaved round by round in one run; the ratio of medians is the figure (single times drift ~40% here).
Also times the whole `load_dataset` (parquet + decode + checks) as it is now.

    .venv/bin/python benchmarks/calibration_read.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import types
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vlaedge.data import load_dataset
from vlaedge.data.images import decode_images
from vlaedge.defaults import DEFAULT_DATASET

ROOT = Path(__file__).resolve().parents[1]
OLD_CODEC_COMMIT = "1c2bbb8"


def old_codec() -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{OLD_CODEC_COMMIT}:vlaedge/png.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("old_png")
    exec(compile(source, "old_png.py", "exec"), module.__dict__)  # noqa: S102 (our own file, from git)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    files = sorted((DEFAULT_DATASET / "data").rglob("*.parquet"))
    blobs = [row["bytes"] for f in files for row in pq.read_table(f, columns=["observation.images.top"])
             .column("observation.images.top").to_pylist()]
    old = old_codec()
    new_frames = decode_images(blobs, "calibration")
    old_frames = np.stack(old.decode_pngs(blobs))
    assert np.array_equal(new_frames, old_frames), "the two decoders disagree"
    timings: dict[str, list[float]] = {"old codec": [], "Pillow": [], "load_dataset (Pillow)": []}
    runs = {"old codec": lambda: old.decode_pngs(blobs),
            "Pillow": lambda: decode_images(blobs, "calibration"),
            "load_dataset (Pillow)": lambda: load_dataset(DEFAULT_DATASET)}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            timings[name].append((time.perf_counter() - start) * 1e3)
    base = statistics.median(timings["old codec"])
    print(f"{len(blobs)} frames {new_frames.shape[1:]} from {DEFAULT_DATASET}, "
          f"{args.rounds} interleaved rounds")
    for name, values in timings.items():
        med = statistics.median(values)
        print(f"{name:<24} median {med:8.1f} ms  ({len(blobs) / med * 1e3:8.0f} frames/s)  "
              f"{base / med:5.2f}x the old codec's speed")


if __name__ == "__main__":
    main()
