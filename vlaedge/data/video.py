"""Video cameras: LeRobot v3 mp4 files decoded frame-exactly with PyAV (FFmpeg bundled in its wheel).

LeRobot v3 stores each camera as mp4 files holding several episodes one after another; an episode's
frames start at ``from_timestamp`` (seconds, in meta/episodes) and frame k is shown at
``from_timestamp + k / fps``. `VideoFrames` is one episode's camera as a lazy uint8 [N, H, W, 3] array:
nothing is decoded until frames are asked for, and `VideoFrames.take` seeks to the keyframe before the
first wanted frame and decodes forward only as far as the last one (seeking again across long gaps),
so sampling calibration frames never decodes whole files. `check_ends` decodes, through the same `take`,
the first and last frame of every file when a dataset is loaded, so that `vlaedge data` and every command
refuse a file that is not video, is shorter than meta/episodes says or holds frames of another size before
any stage runs. `encode_video` writes such files (tests, `save_lerobot(..., video_codec=...)`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from vlaedge import progress
from vlaedge.errors import VlaedgeError

# Encoders PyAV's wheels bundle, by the codec name LeRobot writes in info.json ("video.codec").
ENCODERS = {"av1": "libsvtav1", "h264": "libx264", "hevc": "libx265"}
_RESEEK_S = 2.0  # seek again when the next wanted frame is this far past the last decoded one


def _av():
    try:
        import av
    except ImportError as e:
        raise VlaedgeError("dataset: decoding video cameras needs PyAV, which is not installed",
                           "pip install -c constraints.txt av") from e
    return av


class VideoFrames:
    """One episode of one video camera, as a lazy uint8 [N, H, W, 3] RGB array.

    Args:
        path: the mp4 file.
        start: the episode's ``from_timestamp`` in seconds.
        length: the episode's number of frames (N).
        fps: frames per second of the recording.
        height: frame height in pixels (from info.json).
        width: frame width in pixels.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: Path, start: float, length: int, fps: float, height: int, width: int):
        self.path, self.start, self.length, self.fps = Path(path), float(start), int(length), float(fps)
        self.shape = (self.length, int(height), int(width), 3)
        self.frames_decoded = 0  # frames the decoder produced so far (seeking keeps it near those asked for)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            return self.take([int(index)])[0]
        return self.take(np.arange(self.length)[index])

    def __array__(self, dtype=None, copy=None):
        frames = self.take(np.arange(self.length))
        return frames if dtype is None else frames.astype(dtype)

    def take(self, frames: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode the given frames of the episode.

        Args:
            frames: frame indices within the episode, 0 .. N-1, any order, repeats allowed.

        Returns:
            uint8 [len(frames), H, W, 3] RGB, in the order asked.

        Raises:
            VlaedgeError: the file is missing or unreadable, or a frame is not in it (a truncated file or
                timestamps that disagree with meta/episodes).
        """
        wanted = np.asarray(frames, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.length):
            raise IndexError(f"frame indices must be in [0, {self.length}), got {wanted}")
        unique = np.unique(wanted)
        times = self.start + unique / self.fps
        decoded, count = decode_at(self.path, times, 0.5 / self.fps, self.shape[1:3])
        self.frames_decoded += count
        order = np.searchsorted(unique, wanted)
        return decoded[order] if wanted.size else np.zeros((0, *self.shape[1:]), np.uint8)


def check_ends(clips: Sequence[VideoFrames]) -> None:
    """Decode the first and the last frame of every video file the clips lie in: the first frame of the
    clip that starts earliest and the last frame of the clip that ends latest, seeking as sampling does.

    Args:
        clips: every episode of every video camera of a dataset.

    Raises:
        VlaedgeError: the message `VideoFrames.take` gives for a missing or undecodable file, a frame that
            is not in it (a file shorter than meta/episodes says) or frames of another size than info.json's.
    """
    by_file: dict[Path, list[VideoFrames]] = {}
    for clip in clips:
        by_file.setdefault(clip.path, []).append(clip)
    for group in progress.track(list(by_file.values()), "dataset: first and last frame of each video file"):
        first = min(group, key=lambda c: c.start)
        last = max(group, key=lambda c: c.start + (c.length - 1) / c.fps)
        first.take([0])
        last.take([last.length - 1])


def decode_at(path: Path, times: np.ndarray, tolerance: float,
              size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Decode the frames shown at sorted `times` (seconds) of a video file.

    Each wanted time is matched to the decoded frame whose presentation time is within `tolerance`
    (half a frame period), seeking to the preceding keyframe before the first wanted time and again
    whenever the next one lies more than two seconds past the last decoded frame.

    Args:
        path: the video file.
        times: float [K] presentation times in seconds, ascending.
        tolerance: the largest |frame time - wanted time| accepted, in seconds.
        size: the (height, width) the frames must have.

    Returns:
        (uint8 [K, H, W, 3] RGB frames, how many frames were decoded to get them).

    Raises:
        VlaedgeError: the file is missing, unreadable or has no video stream, a wanted time has no frame,
            or the frames are not `size`.
    """
    av = _av()
    fix = "re-download the dataset, or re-encode the video with LeRobot"
    if not path.is_file():
        raise VlaedgeError(f"dataset: video {path} is missing", fix)
    out = np.zeros((len(times), *size, 3), np.uint8)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VlaedgeError(f"dataset: {path} has no video stream", fix)
            stream = container.streams.video[0]
            if not stream.time_base:
                raise VlaedgeError(f"dataset: {path} has a video stream without a time base", fix)
            stream.thread_type = "AUTO"
            k, last, count = 0, None, 0
            while k < len(times):
                if last is None or times[k] - last > _RESEEK_S:
                    offset = int(max(times[k] - tolerance, 0.0) / stream.time_base)
                    container.seek(offset, stream=stream, backward=True, any_frame=False)
                k, last, n = _decode_forward(container, stream, times, k, tolerance, out, path)
                count += n
    except av.error.FFmpegError as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VlaedgeError(f"dataset: cannot decode {path} ({reason})", fix) from None
    return out, count


def _decode_forward(container, stream, times, k, tolerance, out, path) -> tuple[int, float, int]:
    """Decode from the current position, filling `out[k:]`; returns (next k, last frame time, frames
    decoded). Stops early (so that the caller seeks) when the next wanted frame is far ahead, but only
    after a match: right after a seek the decoder may start far before the wanted frame."""
    last, count, start = None, 0, k
    for frame in container.decode(stream):
        count += 1
        t = frame.pts * stream.time_base if frame.pts is not None else frame.time
        if t is None:
            raise VlaedgeError(f"dataset: {path} has frames without timestamps",
                               "re-encode the video with LeRobot")
        t = float(t)
        if k < len(times) and t > times[k] + tolerance:
            raise VlaedgeError(f"dataset: {path} has no frame at {times[k]:.4f} s (next frame at {t:.4f} s)",
                               "meta/episodes timestamps disagree with the video; re-export the dataset")
        if k < len(times) and abs(t - times[k]) <= tolerance:
            image = frame.to_ndarray(format="rgb24")
            if image.shape[:2] != out.shape[1:3]:
                raise VlaedgeError(f"dataset: {path} frames are {image.shape[1]}x{image.shape[0]}, "
                                   f"info.json says {out.shape[2]}x{out.shape[1]}",
                                   "fix the camera's shape (video.height, video.width) in meta/info.json")
            out[k] = image
            k += 1
        last = t
        if k == len(times) or (k > start and times[k] - t > _RESEEK_S):
            return k, t, count
    if k < len(times):
        raise VlaedgeError(f"dataset: {path} ends before {times[k]:.4f} s (last frame at {last} s)",
                           "the video is truncated; re-download the dataset")
    return k, last, count


def encode_video(frames: np.ndarray, path: str | Path, fps: float, codec: str = "av1", gop: int = 2) -> Path:
    """Write frames as an mp4 file (yuv420p), frame i shown at i / fps, as LeRobot encodes cameras.

    Args:
        frames: uint8 [N, H, W, 3] RGB; H and W even (yuv420p), at least 64 for AV1.
        path: the file to write.
        fps: frames per second.
        codec: "av1", "h264" or "hevc" (or an FFmpeg encoder name).
        gop: frames between keyframes (LeRobot encodes with 2, so that seeking is cheap).

    Returns:
        `path` as a Path.

    Raises:
        VlaedgeError: the encoder is not in this FFmpeg build.
    """
    av = _av()
    encoder = ENCODERS.get(codec, codec)
    if encoder not in av.codecs_available:
        raise VlaedgeError(f"video: encoder {encoder} is not in PyAV's FFmpeg build",
                           f"use one of {sorted(set(ENCODERS.values()) & av.codecs_available)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told: errors only
    options = {"x265-params": "log-level=error"} if encoder == "libx265" else {}
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = 1 / rate
        stream.codec_context.gop_size = gop
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
