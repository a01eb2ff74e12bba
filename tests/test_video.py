"""LeRobot v3 video cameras: written by the tests (AV1, H.264, HEVC with PyAV), decoded frame-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vlaedge.data import Episode, EpisodeDataset, load_dataset, sample_frames, save_lerobot
from vlaedge.data.video import ENCODERS, VideoFrames, encode_video
from vlaedge.errors import VlaedgeError

av = pytest.importorskip("av")
CODECS = [c for c, encoder in ENCODERS.items() if encoder in av.codecs_available]
CAMERAS = ("observation.images.cam_high", "observation.images.cam_left_wrist")


def pattern(n: int, offset: int = 0) -> np.ndarray:
    """uint8 [n, 64, 64, 3] frames that differ from each other far beyond codec error: a bright band
    whose row encodes i % 8, a column band encoding i // 8, and a red level encoding i."""
    frames = np.zeros((n, 64, 64, 3), np.uint8)
    for i in range(n):
        j = i + offset
        frames[i, :, :, 0] = (j * 37) % 200
        frames[i, (j % 8) * 8:(j % 8) * 8 + 8, :, 1] = 255
        frames[i, :, (j // 8 % 8) * 8:(j // 8 % 8) * 8 + 8, 2] = 220
    return frames


def two_camera_dataset(lengths=(7, 12, 5, 9), state_dim=4, action_dim=3) -> EpisodeDataset:
    rng = np.random.default_rng(0)
    episodes, start = [], 0
    for i, n in enumerate(lengths):
        cams = {key: pattern(n, start + 500 * c) for c, key in enumerate(CAMERAS)}
        episodes.append(Episode(f"pick up the {['red', 'blue'][i % 2]} block", cams[CAMERAS[0]],
                                rng.uniform(-1, 1, (n, state_dim)), rng.uniform(-1, 1, (n, action_dim)),
                                index=i, cameras=cams))
        start += n
    return EpisodeDataset.from_episodes(episodes, fps=10)


def nearest(decoded: np.ndarray, written: np.ndarray) -> tuple[int, float]:
    """(index of the written frame closest to `decoded`, its mean absolute error in 0-255 levels)."""
    errors = np.abs(written.astype(np.int16) - decoded.astype(np.int16)).mean(axis=(1, 2, 3))
    return int(errors.argmin()), float(errors.min())


@pytest.mark.parametrize("codec", CODECS)
def test_decoded_frame_k_of_episode_e_is_the_frame_written(tmp_path: Path, codec: str) -> None:
    ds = two_camera_dataset()
    root = save_lerobot(ds, tmp_path / "ds", video_codec=codec)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"][CAMERAS[0]]["dtype"] == "video"
    assert info["features"][CAMERAS[0]]["info"]["video.codec"] == codec
    assert sorted(p.name for p in (root / "videos").rglob("*.mp4")) == ["file-000.mp4"] * 2  # one per camera
    meta = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert meta[f"videos/{CAMERAS[0]}/from_timestamp"] == pytest.approx([0.0, 0.7, 1.9, 2.4])
    loaded = load_dataset(root)
    assert loaded.camera_keys == list(CAMERAS)
    for e, (ep, written) in enumerate(zip(loaded.episodes, ds.episodes, strict=True)):
        for key in CAMERAS:
            truth = np.asarray(written.cameras[key])
            for k in (0, len(ep) // 2, len(ep) - 1):
                index, error = nearest(ep.cameras[key][k], truth)
                assert index == k, (codec, e, key, k, index)
                assert error < 6.0, (codec, e, key, k, error)  # codec tolerance, 0-255 levels


@pytest.mark.parametrize("codec", CODECS[:1])
def test_sampling_seeks_instead_of_decoding_the_file(tmp_path: Path, codec: str) -> None:
    frames = pattern(300)
    path = encode_video(frames, tmp_path / "long.mp4", fps=10, codec=codec)  # keyframe every 2 frames
    video = VideoFrames(path, start=0.0, length=300, fps=10, height=64, width=64)
    got = video.take([290, 3, 150, 150])  # any order, repeats
    assert [nearest(g, frames)[0] for g in got] == [290, 3, 150, 150]
    assert video.frames_decoded <= 12  # 3 distinct frames, each a seek + at most a GOP: not 300
    assert np.array_equal(video[150], got[2])


def test_sampled_batches_come_from_every_camera_of_a_video_dataset(tmp_path: Path) -> None:
    ds = two_camera_dataset()
    root = save_lerobot(ds, tmp_path / "ds", video_codec=CODECS[0])
    loaded = load_dataset(root)
    batch = sample_frames(loaded, 10, seed=3)
    for key in CAMERAS:
        assert batch[key].shape == (10, 64, 64, 3) and batch[key].dtype == np.uint8
        truth = ds.frames(_global(batch, ds))[key]  # the same frames as written
        assert [nearest(f, truth)[0] for f in batch[key]] == list(range(10))
    assert np.array_equal(batch["image"], batch[CAMERAS[0]])


def _global(batch: dict, ds: EpisodeDataset) -> np.ndarray:
    starts = np.cumsum([0] + [len(ep) for ep in ds.episodes])
    return starts[batch["episode"]] + batch["frame"]


def test_truncated_or_missing_video_is_one_line(tmp_path: Path) -> None:
    root = save_lerobot(two_camera_dataset(), tmp_path / "ds", video_codec=CODECS[0])
    mp4 = root / f"videos/{CAMERAS[1]}/chunk-000/file-000.mp4"
    mp4.unlink()
    with pytest.raises(VlaedgeError, match="file-000.mp4 is missing"):
        load_dataset(root)  # loading decodes the first and last frame of every file
    encode_video(pattern(10), mp4, fps=10, codec=CODECS[0])  # shorter than the 33 frames meta/episodes says
    with pytest.raises(VlaedgeError, match=r"ends before|has no frame at"):
        load_dataset(root)


def test_png_cameras_keep_working_with_two_cameras(tmp_path: Path) -> None:
    ds = two_camera_dataset()
    loaded = load_dataset(save_lerobot(ds, tmp_path / "ds"))
    assert loaded.camera_keys == list(CAMERAS)
    for ep, written in zip(loaded.episodes, ds.episodes, strict=True):
        for key in CAMERAS:
            assert np.array_equal(ep.cameras[key], written.cameras[key])  # PNG is lossless
    stats = json.loads((Path(loaded.source) / "meta/stats.json").read_text())
    assert np.asarray(stats[CAMERAS[0]]["mean"]).shape == (3, 1, 1)
    assert loaded.stats["action"]["mean"] == pytest.approx(np.concatenate([e.action for e in ds.episodes])
                                                            .mean(0).tolist(), abs=1e-6)
