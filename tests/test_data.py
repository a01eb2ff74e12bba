"""Datasets: LeRobot v3 and .npz round trips, PNG image columns (Pillow), the episode split and user-facing
errors."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import vlaedge.data.lerobot_write as lerobot
from vlaedge.data import (
    Episode,
    EpisodeDataset,
    iter_frames,
    load_dataset,
    sample_frames,
    save_npz,
    split_episodes,
)
from vlaedge.data.images import decode_images, encode_png
from vlaedge.data.lerobot import save_lerobot
from vlaedge.errors import VlaedgeError

INSTRUCTIONS = ["pick up the red cube", "open the drawer", "push the button"]


def make_dataset(num_episodes: int = 4, seed: int = 0) -> EpisodeDataset:
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(num_episodes):
        n = 5 + i
        episodes.append(
            Episode(
                instruction=INSTRUCTIONS[i % len(INSTRUCTIONS)],
                images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                state=rng.normal(size=(n, 4)).astype(np.float32),
                action=rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
                index=i,
                success=[True, False, None][i % 3],
            )
        )
    return EpisodeDataset.from_episodes(
        episodes, fps=15, action_names=["dx", "dy", "grip"], state_names=["q0", "q1", "q2", "q3"]
    )


def assert_same(a: EpisodeDataset, b: EpisodeDataset) -> None:
    assert (a.fps, a.action_names, a.state_names) == (b.fps, b.action_names, b.state_names)
    assert len(a.episodes) == len(b.episodes)
    for x, y in zip(a.episodes, b.episodes, strict=True):
        assert (x.instruction, x.index, x.success) == (y.instruction, y.index, y.success)
        assert y.images.dtype == np.uint8 and np.array_equal(x.images, y.images)
        assert y.state.dtype == np.float32 and np.array_equal(x.state, y.state)
        assert y.action.dtype == np.float32 and np.array_equal(x.action, y.action)


# --- round trips --------------------------------------------------------------------------------------------


def test_lerobot_round_trip(tmp_path: Path) -> None:
    ds = make_dataset()
    root = save_lerobot(ds, tmp_path / "lerobot")
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, ds.num_frames, 3)
    image = info["features"]["observation.images.top"]
    assert image == {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]}
    rows = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet")
    assert rows.num_rows == ds.num_frames
    assert rows.column("observation.images.top")[0]["bytes"].as_py().startswith(b"\x89PNG")
    tasks = pq.read_table(root / "meta" / "tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1, 2], "task": INSTRUCTIONS}

    loaded = load_dataset(root)
    assert_same(ds, loaded)
    assert loaded.source == str(root)


def test_npz_round_trip(tmp_path: Path) -> None:
    ds = make_dataset()
    folder = save_npz(ds, tmp_path / "npz")
    assert sorted(p.name for p in folder.iterdir()) == [f"episode_{i:06d}.npz" for i in range(4)]
    assert_same(ds, load_dataset(folder))
    single = load_dataset(folder / "episode_000002.npz")
    assert len(single.episodes) == 1 and np.array_equal(single.episodes[0].action, ds.episodes[2].action)


def test_save_refuses_to_clobber_unless_asked(tmp_path: Path) -> None:
    ds = make_dataset()
    save_npz(ds, tmp_path / "out")
    with pytest.raises(VlaedgeError, match="already exists"):
        save_npz(ds, tmp_path / "out")
    save_npz(make_dataset(num_episodes=2), tmp_path / "out", overwrite=True)
    assert len(load_dataset(tmp_path / "out").episodes) == 2


def test_interrupted_save_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_dataset()
    root = tmp_path / "lerobot"
    real_write, calls = lerobot._write_parquet, []

    def flaky_write(table, path):  # writes the data file, then "crashes" on the next one
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(table, path)

    monkeypatch.setattr(lerobot, "_write_parquet", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        save_lerobot(ds, root)
    assert not (root / "meta" / "info.json").exists()
    assert list(tmp_path.iterdir()) == []  # no dataset, no leftover partial folder

    monkeypatch.setattr(lerobot, "_write_parquet", real_write)
    save_lerobot(ds, root)
    calls.clear()
    monkeypatch.setattr(lerobot, "_write_parquet", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        save_lerobot(make_dataset(num_episodes=2), root, overwrite=True)
    assert_same(ds, load_dataset(root))  # the old dataset is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["lerobot"]


# --- PNG image columns ----------------------------------------------------------------------------------


def reference_png(pixels: np.ndarray, filters: list[int]) -> bytes:
    """A PNG built by hand, straight from the spec: row y uses filter `filters[y]`; IDAT split in two."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(int).tolist()
    raw, prev = bytearray(), [0] * (width * channels)
    for cur, kind in zip(rows, filters, strict=True):
        raw.append(kind)
        for i, x in enumerate(cur):
            a = cur[i - channels] if i >= channels else 0
            b, c = prev[i], (prev[i - channels] if i >= channels else 0)
            p = a + b - c
            paeth = min((abs(p - a), 0, a), (abs(p - b), 1, b), (abs(p - c), 2, c))[2]
            raw.append((x - [0, a, b, (a + b) // 2, paeth][kind]) % 256)
        prev = cur

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    color = {1: 0, 3: 2, 4: 6}[channels]
    idat = zlib.compress(bytes(raw))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
        + chunk(b"tEXt", b"Comment\x00ancillary chunks are skipped")
        + chunk(b"IDAT", idat[:10])
        + chunk(b"IDAT", idat[10:])
        + chunk(b"IEND", b"")
    )


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """What an image column yields: gray repeated over three channels, alpha dropped."""
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4, "mixed"])
def test_png_decodes_every_filter_type(channels: int, kind: int | str) -> None:
    pixels = np.random.default_rng(channels).integers(0, 256, (9, 7, channels), dtype=np.uint8)
    filters = [i % 5 for i in range(9)] if kind == "mixed" else [kind] * 9
    assert np.array_equal(decode_images([reference_png(pixels, filters)], "test")[0], as_rgb(pixels))


def test_png_round_trip() -> None:
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 3, (13, 17, 3)), axis=1).astype(np.uint8)
    noisy = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    for image in (smooth, noisy, np.zeros((1, 1, 3), np.uint8)):
        blob = encode_png(image)
        assert blob.startswith(b"\x89PNG\r\n\x1a\n")  # the column holds PNG files, as LeRobot writes them
        assert np.array_equal(decode_images([blob], "test")[0], image)
    batch = [encode_png(img) for img in (smooth, noisy)]
    assert np.array_equal(decode_images(batch, "test"), np.stack([smooth, noisy]))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(noisy.astype(np.float32))


def test_png_rejects_what_it_cannot_decode() -> None:
    good = encode_png(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    bad_crc = bytearray(good)
    bad_crc[-16] ^= 0xFF  # the last byte of the IDAT chunk's CRC (IEND, 12 bytes, follows it)
    depth = io.BytesIO()  # a 16-bit gray PNG (Pillow mode I;16), as a depth camera writes
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(depth, format="PNG")
    cases = [
        ("cannot decode", b"GIF89a" + good[6:]),  # not an image at all
        ("cannot decode", good[: len(good) // 2]),  # truncated
        ("cannot decode", bytes(bad_crc)),  # bad CRC
        ("not 8 bits", depth.getvalue()),
    ]
    for message, blob in cases:
        with pytest.raises(VlaedgeError, match=f"where: frame 0: .*{message}") as e:
            decode_images([blob], "where")
        assert "\n" not in e.value.message and "8-bit" in e.value.hint
    with pytest.raises(VlaedgeError, match="frame 1: cannot decode"):
        decode_images([good, good[: len(good) // 2]], "where")
    with pytest.raises(VlaedgeError, match="frame 1 has no embedded image bytes"):
        decode_images([good, None], "where")
    with pytest.raises(VlaedgeError, match="different sizes"):
        decode_images([good, encode_png(np.zeros((5, 16, 3), np.uint8))], "where")


# --- split and frames ---------------------------------------------------------------------------------------


def test_split_is_by_episode_and_deterministic() -> None:
    ds = make_dataset(num_episodes=10)
    calib, evals = split_episodes(ds, eval_fraction=0.3, seed=7)
    assert (len(calib.episodes), len(evals.episodes)) == (7, 3)
    assert set(calib.episode_indices).isdisjoint(evals.episode_indices)
    assert sorted(calib.episode_indices + evals.episode_indices) == list(range(10))
    again = split_episodes(ds, eval_fraction=0.3, seed=7)
    assert (again[0].episode_indices, again[1].episode_indices) == (
        calib.episode_indices,
        evals.episode_indices,
    )
    others = {tuple(split_episodes(ds, 0.3, seed=s)[1].episode_indices) for s in range(5)}
    assert len(others) > 1
    tiny_calib, tiny_eval = split_episodes(make_dataset(num_episodes=2), eval_fraction=0.01)
    assert len(tiny_calib.episodes) == len(tiny_eval.episodes) == 1
    with pytest.raises(VlaedgeError, match="needs at least 2"):
        split_episodes(make_dataset(num_episodes=1))
    with pytest.raises(VlaedgeError, match="eval_fraction=1.5"):
        split_episodes(ds, eval_fraction=1.5)


def test_frames_batches() -> None:
    ds = make_dataset()
    batch = sample_frames(ds, 8, seed=3)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["state"].shape == (8, 4) and batch["action"].shape == (8, 3)
    assert len(batch["instruction"]) == 8
    for j in range(8):
        ep = ds.episodes[batch["episode"][j]]
        assert np.array_equal(batch["action"][j], ep.action[batch["frame"][j]])
        assert batch["instruction"][j] == ep.instruction
    assert np.array_equal(sample_frames(ds, 8, seed=3)["frame"], batch["frame"])
    seen = np.concatenate([b["action"] for b in iter_frames(ds, batch_size=5)])
    assert np.array_equal(seen, np.concatenate([ep.action for ep in ds.episodes]))
    assert np.array_equal(ds.action_low(), seen.min(axis=0)) and ds.action_high().dtype == np.float32
    with pytest.raises(VlaedgeError, match=f"has {ds.num_frames} in 4 episodes"):
        sample_frames(ds, ds.num_frames + 1)


# --- errors ---------------------------------------------------------------------------------------------


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(VlaedgeError, match="does not exist") as err:
        load_dataset(tmp_path / "nope")
    assert "LeRobot v3" in err.value.hint
    with pytest.raises(VlaedgeError, match="no meta/info.json and no .npz files"):
        load_dataset(tmp_path)


def test_truncated_parquet(tmp_path: Path) -> None:
    root = save_lerobot(make_dataset(), tmp_path / "lerobot")
    data_file = root / "data" / "chunk-000" / "file-000.parquet"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(VlaedgeError, match="file-000.parquet is not a readable parquet file"):
        load_dataset(root)


def test_missing_column_and_length_mismatch(tmp_path: Path) -> None:
    root = save_lerobot(make_dataset(), tmp_path / "lerobot")
    data_file = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data_file)
    pq.write_table(table.drop_columns(["action"]), data_file)
    with pytest.raises(VlaedgeError, match=r"lacks column\(s\) \['action'\]"):
        load_dataset(root)
    pq.write_table(table.slice(0, table.num_rows - 1), data_file)  # last frame of the last episode lost
    with pytest.raises(VlaedgeError, match="episode 3 has 7 frames in data/, meta/episodes says 8"):
        load_dataset(root)


def test_corrupt_npz(tmp_path: Path) -> None:
    folder = save_npz(make_dataset(), tmp_path / "npz")
    victim = folder / "episode_000001.npz"
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(VlaedgeError, match="episode_000001.npz is not a readable .npz"):
        load_dataset(folder)


def test_npz_validation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    fields = {
        "images": images,
        "state": np.zeros((6, 2)),
        "instruction": np.array("go"),
        "fps": np.array(10.0),
    }
    action = np.zeros((6, 2), np.float32)
    action[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", action=action, **fields)
    with pytest.raises(
        VlaedgeError, match=r"nan.npz: action has 1 NaN/Inf values \(first at frame 4, dim 1\)"
    ):
        load_dataset(tmp_path / "nan.npz")
    np.savez(tmp_path / "short.npz", action=np.zeros((5, 2)), **fields)
    with pytest.raises(VlaedgeError, match="frame counts differ"):
        load_dataset(tmp_path / "short.npz")
    np.savez(tmp_path / "float.npz", **(fields | {"images": images / 255.0, "action": np.zeros((6, 2))}))
    with pytest.raises(VlaedgeError, match=r"images are float64 \(6, 8, 8, 3\), expected uint8"):
        load_dataset(tmp_path / "float.npz")
    np.savez(
        tmp_path / "nofps.npz", **{k: v for k, v in fields.items() if k != "fps"}, action=np.zeros((6, 2))
    )
    with pytest.raises(VlaedgeError, match=r"lacks array\(s\) \['fps'\]"):
        load_dataset(tmp_path / "nofps.npz")


def test_video_and_unknown_image_key(tmp_path: Path) -> None:
    root = save_lerobot(make_dataset(), tmp_path / "lerobot")
    with pytest.raises(
        VlaedgeError, match=r"'observation.images.wrist' .*cameras: \['observation.images.top'\]"
    ):
        load_dataset(root, image_key="observation.images.wrist")
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.images.top"]["dtype"] = "video"
    info_path.write_text(json.dumps(info))
    with pytest.raises(VlaedgeError, match=r"meta/episodes lacks \['videos/observation.images.top/chunk"):
        load_dataset(root)  # a video camera needs its location in meta/episodes
    info["codebase_version"] = "v2.1"
    info_path.write_text(json.dumps(info))
    with pytest.raises(VlaedgeError, match="codebase_version v2.1"):
        load_dataset(root)


def test_lerobot_variants_from_other_writers(tmp_path: Path) -> None:
    """list<double> vectors, pandas' unnamed task index, gray and RGBA PNGs written by other encoders."""
    ds = make_dataset(num_episodes=2)
    root = save_lerobot(ds, tmp_path / "lerobot")
    data_file = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data_file)
    gray = np.random.default_rng(1).integers(0, 256, (ds.num_frames, 32, 32, 1), dtype=np.uint8)
    blobs = [reference_png(g, [4] * 32) for g in gray]
    blobs[-1] = reference_png(np.concatenate([ds.episodes[1].images[-1], gray[-1]], axis=2), [1] * 32)
    images = pa.StructArray.from_arrays(
        [pa.array(blobs), pa.nulls(len(blobs), pa.string())], ["bytes", "path"]
    )
    state = pa.array(np.concatenate([ep.state for ep in ds.episodes]).astype(np.float64).tolist())
    table = table.set_column(0, "observation.images.top", images)
    table = table.set_column(table.schema.get_field_index("observation.state"), "observation.state", state)
    pq.write_table(table, data_file)
    tasks = pa.table({"task_index": [0, 1], "__index_level_0__": INSTRUCTIONS[:2]})
    pq.write_table(tasks, root / "meta" / "tasks.parquet")

    loaded = load_dataset(root)
    assert [ep.instruction for ep in loaded.episodes] == INSTRUCTIONS[:2]
    assert np.array_equal(loaded.episodes[0].images, np.repeat(gray[:5], 3, axis=3))
    assert np.array_equal(loaded.episodes[1].images[-1], ds.episodes[1].images[-1])  # alpha dropped
    assert np.array_equal(loaded.episodes[1].state, ds.episodes[1].state)
