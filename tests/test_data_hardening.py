"""Bad datasets (issue 25, round 3): every number, shape and template in a LeRobot dataset's metadata is
checked before use, `vlaedge data` decodes the first and last frame of every video file and refuses what
compress refuses with the same line, both read statistics from meta/stats.json only, and a tokenizer's
pad id is a token id. Each case: exit 2, one `error:` line naming the file, field and value, its fix,
no traceback, nothing written."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_runner import run_cli
from test_data_mapping import E2E, LENGTHS, camera_spec, policy_of
from test_hardening import assert_refused
from test_video import CAMERAS, CODECS, pattern, two_camera_dataset

from vlaedge.data import save_lerobot
from vlaedge.data.video import encode_video

CAM = CAMERAS[0]
EPISODES = "meta/episodes/chunk-000/file-000.parquet"
MP4 = f"videos/{CAM}/chunk-000/file-000.mp4"
CODEC = "h264" if "h264" in CODECS else CODECS[0]  # the fastest to encode


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    """A two-camera LeRobot v3 video dataset (4 episodes, 33 frames, 64x64), never modified."""
    return save_lerobot(two_camera_dataset(), tmp_path_factory.mktemp("video") / "ds", video_codec=CODEC)


@pytest.fixture
def bad_copy(video_root: Path, tmp_path: Path):
    """`bad_copy(mutate)` -> a copy of `video_root` changed by `mutate(root)`."""
    def make(mutate) -> Path:
        root = shutil.copytree(video_root, tmp_path / "bad")
        mutate(root)
        return root
    return make


def _json(name: str, change):
    def mutate(root: Path) -> None:
        path = root / "meta" / name
        data = json.loads(path.read_text())
        data = change(data) or data
        path.write_text(json.dumps(data))
    return mutate


def _feature(key: str, **fields):
    """info.json's feature `key` updated with `fields` (None deletes a field); ``info`` merges."""
    def change(info: dict) -> None:
        feature = info["features"][key]
        for name, value in fields.items():
            if value is None:
                feature.pop(name, None)
            elif name == "info":
                feature["info"] |= value
            else:
                feature[name] = value
    return _json("info.json", change)


def _episodes(column: str, value, kind=None):
    """meta/episodes' `column` with episode 1's value replaced (the column retyped as `kind`)."""
    def mutate(root: Path) -> None:
        table = pq.read_table(root / EPISODES)
        values = [str(v) if kind == pa.string() and v is not None else v for v in table[column].to_pylist()]
        values[1] = value
        i = table.schema.get_field_index(column)
        pq.write_table(table.set_column(i, column, pa.array(values, kind)), root / EPISODES)
    return mutate


def _stats(feature: str, stat: str, value):
    def change(stats: dict) -> None:
        stats[feature][stat] = value
    return _json("stats.json", change)


def _write(relative: str, content):
    def mutate(root: Path) -> None:
        path = root / relative
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
    return mutate


NAN = math.nan
METADATA = {  # case -> (mutation, needles of the error line)
    "from_timestamp NaN": (_episodes(f"videos/{CAM}/from_timestamp", NAN),
                           [EPISODES, "episode 1", f"videos/{CAM}/from_timestamp is nan"]),
    "from_timestamp huge": (_episodes(f"videos/{CAM}/from_timestamp", 1e300),
                            [EPISODES, "from_timestamp is 1e+300", "seconds in [0, 1e+06]"]),
    "from_timestamp negative": (_episodes(f"videos/{CAM}/from_timestamp", -3.0), ["from_timestamp is -3.0"]),
    "chunk_index a string": (_episodes(f"videos/{CAM}/chunk_index", "a", pa.string()),
                             [EPISODES, "chunk_index is '0'", "non-negative integer"]),
    "file_index negative": (_episodes(f"videos/{CAM}/file_index", -1), ["file_index is -1"]),
    "length NaN": (_episodes("length", NAN, pa.float64()), [EPISODES, "episode 1: length is nan"]),
    "success a string": (_episodes("success", "yes", pa.string()), ["success is 'yes'"]),
    "fps 0": (_json("info.json", lambda i: i.update(fps=0)), ["meta/info.json: fps is 0"]),
    "video.fps 0": (_feature(CAM, info={"video.fps": 0}), ["info.json", "['video.fps'] is 0"]),
    "video.fps NaN": (_feature(CAM, info={"video.fps": NAN}), ["['video.fps'] is nan"]),
    "video shape 300000x300000": (
        _feature(CAM, shape=[300000, 300000, 3], info={"video.height": 300000, "video.width": 300000}),
        ["info.json", "['video.height'] is 300000", "[1, 8192]"]),
    "shape 300000x300000 without video info": (
        _feature(CAM, shape=[300000, 300000, 3], info=None), [f"features['{CAM}'].shape[0] is 300000"]),
    "no shape": (_feature(CAM, shape=None, info=None), [f"features['{CAM}']", "shape None"]),
    "shape a string": (_feature("observation.state", shape="4"), ["['observation.state'].shape is 4"]),
    "feature not a mapping": (_json("info.json", lambda i: i["features"].update(action=[3])),
                              ["features['action'] is [3]"]),
    "video_path unknown key": (_json("info.json", lambda i: i.update(video_path="videos/{camera}/f.mp4")),
                               ["video_path", "{camera}"]),
    "video_path attribute": (
        _json("info.json", lambda i: i.update(video_path="videos/{video_key.__class__}/f.mp4")),
        ["{video_key.__class__}"]),
    "video_path huge format spec": (
        _json("info.json", lambda i: i.update(video_path="v/{video_key}/{chunk_index:>999999999}.mp4")),
        ["{chunk_index:>999999999}"]),
    "video_path outside the dataset": (
        _json("info.json", lambda i: i.update(video_path="../../{video_key}/{file_index}.mp4")),
        ["leads outside the dataset folder"]),
    "video_path a number": (_json("info.json", lambda i: i.update(video_path=5)), ["video_path 5"]),
    "info.json nested 100000 deep": (_write("meta/info.json", b"[" * 100000), ["info.json is not readable"]),
    "stats strings": (_stats("action", "mean", ["a", "b", "c"]), ["stats.json: action.mean holds 'a'"]),
    "stats NaN": (_stats("observation.state", "std", [1.0, NAN, 1.0, 1.0]), ["state.std holds nan"]),
    "stats wrong size": (_stats("observation.state", "mean", [0.0, 0.0]),
                         ["observation.state.mean has 2 values, the feature has 4"]),
    "stats negative std": (_stats("action", "std", [1.0, -1.0, 1.0]),
                           ["action.std has the value -1, expected non-negative"]),
    "stats camera std 0": (_stats(CAM, "std", [[[0.1]], [[0.0]], [[0.2]]]),
                           [f"{CAM}.std has the value 0, expected positive"]),
    "stats min above max": (_stats("action", "min", [0.0, 5.0, 0.0]), ["action.min[1] = 5 is above max[1]"]),
    "stats a list": (_json("stats.json", lambda s: [1, 2]), ["stats.json is a list"]),
    "stats entry a string": (_json("stats.json", lambda s: s.update(action="x")), ["'action' is 'x'"]),
}

VIDEO = {  # what compress refused only once a stage read the frames
    "mp4 random bytes": (_write(MP4, os.urandom(4096)), [MP4, "cannot decode", "Invalid data"]),
    "mp4 truncated": (_write(MP4, lambda p: p.write_bytes(p.read_bytes()[:3000])), [MP4, "cannot decode"]),
    "mp4 missing": (_write(MP4, lambda p: p.unlink()), [MP4, "is missing"]),
    "mp4 shorter than the parquet": (
        _write(MP4, lambda p: encode_video(pattern(20), p, fps=10, codec=CODEC)),  # 33 frames in the data
        [MP4, "ends before 3.2000 s"]),
    "mp4 frames of another size": (
        _feature(CAM, shape=[32, 48, 3], info={"video.height": 32, "video.width": 48}),
        [MP4, "frames are 64x64, info.json says 48x32"]),
}


@pytest.mark.parametrize("case", list(METADATA) + list(VIDEO))
def test_data_refuses_bad_metadata_and_video_in_one_line(case, bad_copy, capsys, monkeypatch) -> None:
    mutate, needles = {**METADATA, **VIDEO}[case]
    root = bad_copy(mutate)
    code, text = run_cli(["data", root], capsys, monkeypatch)
    assert_refused(code, text, *needles)
    assert "episodes:" not in text  # refused before the summary


@pytest.mark.parametrize("case", ["mp4 random bytes", "mp4 shorter than the parquet", "from_timestamp huge"])
def test_compress_refuses_what_data_refuses_with_the_same_line(case, bad_copy, tmp_path, capsys,
                                                               monkeypatch) -> None:
    mutate, _ = {**METADATA, **VIDEO}[case]
    root = bad_copy(mutate)
    _, data_text = run_cli(["data", root], capsys, monkeypatch)
    out = tmp_path / "run"
    code, text = run_cli(["compress", "--data", root, "--out", out], capsys, monkeypatch)
    assert_refused(code, text)
    assert _error(text) == _error(data_text)
    assert not out.exists()


def test_a_good_video_dataset_still_loads_and_decodes_only_its_ends(video_root, capsys, monkeypatch) -> None:
    code, text = run_cli(["data", video_root], capsys, monkeypatch)
    assert code == 0, text
    assert "episodes: 4, frames: 33" in text and f"{CAM}: video [64, 64, 3] (camera, video {CODEC}" in text


def _error(text: str) -> list[str]:
    lines = text.strip().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("error:"))
    return lines[i:i + 2]


# --- statistics: meta/stats.json or none, the same for `vlaedge data` and compress ------------------------


def test_data_and_compress_agree_on_a_dataset_without_stats(tmp_path, capsys, monkeypatch) -> None:
    root = save_lerobot(two_camera_dataset(LENGTHS), tmp_path / "nostats", stats=False)
    code, text = run_cli(["data", root], capsys, monkeypatch)
    assert code == 0, text
    assert "stats: none (no meta/stats.json)" in text and ".mean: [" not in text  # nothing computed
    ck = policy_of(camera_spec(normalize="mean_std")).save(tmp_path / "ck")
    code, data_text = run_cli(["data", root, "--checkpoint", ck, "--trust-code"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in data_text
    out = tmp_path / "run"
    code, text = run_cli(["compress", ck, "--data", root, "--out", out, *E2E], capsys, monkeypatch)
    assert_refused(code, text, "normalised (mean_std) but neither config.json nor", "meta/stats.json")
    assert _error(text) == _error(data_text) and not out.exists()


def test_data_prints_the_stats_compress_normalises_with(tmp_path, capsys, monkeypatch) -> None:
    root = save_lerobot(two_camera_dataset(LENGTHS), tmp_path / "ds")
    _stats("observation.state", "mean", [0.25, -0.5, 1.0, 2.0])(root)
    _json("stats.json", lambda s: {k: v for k, v in s.items() if k != "action"})(root)
    code, text = run_cli(["data", root], capsys, monkeypatch)
    assert code == 0, text
    assert "observation.state.mean: [0.25, -0.5, 1, 2]" in text
    assert "action.mean" not in text and "none for action" in text


# --- tokenizer pad id ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_id", [-1, 12])
def test_tokenizer_pad_id_outside_the_vocabulary_is_refused(pad_id, tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("tokenizers")
    from test_tokenizers import write_tokenizer_json

    from vlaedge.models.python import PythonPolicy, PythonPolicySpec

    src = tmp_path / "src"
    src.mkdir()
    write_tokenizer_json(src / "tokenizer.json")  # 12 words: ids 0..11
    spec = {**camera_spec(), "tokenizer": {"file": "tokenizer.json"}}
    ck = PythonPolicy(PythonPolicySpec.model_validate(spec), root=src).save(tmp_path / "ck")
    config = json.loads((ck / "config.json").read_text())
    config["tokenizer"]["pad_id"] = pad_id
    (ck / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    code, text = run_cli(["compress", ck, "--out", out, "--trust-code"], capsys, monkeypatch)
    assert_refused(code, text, f"pad id {pad_id} (tokenizer.pad_id in config.json)", "ids are 0..11",
                   "tokenizer.pad_id")
    assert not out.exists()
