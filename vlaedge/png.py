"""A minimal PNG codec on numpy + zlib, enough to read and write LeRobot image columns without Pillow.

Encodes 8-bit RGB; decodes 8-bit grayscale, RGB and RGBA, non-interlaced, with any of the five row
filters. Anything else (palette, 16-bit, Adam7) raises `PngError`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 6: 4}  # PNG colour type -> channels (gray, RGB, RGBA)
_BATCH_ELEMENTS = 1 << 24  # elements of each of the two int16 skewed work arrays per batch (32 MiB)
_COLOR_NAMES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}


class PngError(ValueError):
    """The bytes are not a PNG this codec can decode (corrupt, truncated or an unsupported variant)."""


def encode_png(image: np.ndarray, filter_type: int | None = None, level: int = 6) -> bytes:
    """Encode an 8-bit RGB image as PNG.

    Args:
        image: uint8 [H, W, 3].
        filter_type: PNG row filter 0-4 for every row, or None to pick per row whichever of None, Sub and
            Up has the smallest sum of absolute residuals (libpng's heuristic, without Average and Paeth:
            they compress a few percent better but `decode_png` unfilters them about ten times slower).
        level: zlib compression level 0-9.

    Returns:
        The PNG file as bytes.

    Raises:
        ValueError: the image is not uint8 [H, W, 3] or `filter_type` is not 0-4.

    Example:
        >>> decode_png(encode_png(np.zeros((2, 3, 3), np.uint8))).shape
        (2, 3, 3)
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(
            f"encode_png needs a non-empty uint8 [H, W, 3] image, got {image.dtype} {image.shape}"
        )
    if filter_type is not None and filter_type not in range(5):
        raise ValueError(f"filter_type must be 0-4 or None, got {filter_type}")
    height, width, _ = image.shape
    kinds = [0, 1, 2] if filter_type is None else [filter_type]
    filtered = _filter_rows(image.reshape(height, width * 3), bpp=3, kinds=kinds)  # (K, H, W*3)
    signed = filtered.astype(np.int16)
    choice = np.minimum(signed, 256 - signed).sum(axis=2).argmin(axis=0)  # (H,) index into kinds
    body = np.concatenate(
        [np.array(kinds, np.uint8)[choice, None], filtered[choice, np.arange(height)]], axis=1
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(body.tobytes(), level)),
            _chunk(b"IEND", b""),
        ]
    )


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced grayscale, RGB or RGBA PNG.

    Args:
        data: the PNG file's bytes.

    Returns:
        uint8 [H, W, C] with C = 1 (gray), 3 (RGB) or 4 (RGBA).

    Raises:
        PngError: the bytes are not a PNG, are truncated or corrupt (bad CRC, bad zlib stream), or use a
            variant this codec does not support.
    """
    filtered, shape = _inflate(data)
    return _unfilter_rows([filtered], shape)[0]


def decode_pngs(blobs: Sequence[bytes]) -> list[np.ndarray]:
    """Decode many PNGs; images of the same size are unfiltered together, which is much faster.

    Args:
        blobs: PNG files' bytes, e.g. the frames of one episode.

    Returns:
        One uint8 [H, W, C] array per blob, in order (see `decode_png`).

    Raises:
        PngError: as `decode_png`; the message starts with the position of the failing blob.
    """
    rows: list[np.ndarray] = []
    groups: dict[tuple[int, int, int], list[int]] = {}  # (H, W, C) -> positions
    for i, data in enumerate(blobs):
        try:
            filtered, shape = _inflate(data)
        except PngError as exc:
            raise PngError(f"image {i}: {exc}") from None
        rows.append(filtered)
        groups.setdefault(shape, []).append(i)
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(rows)
    for (height, width, channels), members in groups.items():
        per_batch = max(1, _BATCH_ELEMENTS // ((height + width) * height * channels))
        for start in range(0, len(members), per_batch):
            batch = members[start : start + per_batch]
            pixels = _unfilter_rows([rows[i] for i in batch], (height, width, channels))
            for i, image in zip(batch, pixels, strict=True):
                out[i] = image
    return out


def _inflate(data: bytes) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Parse and decompress one PNG: uint8 [H, 1 + W*C] rows, each led by its filter byte, and (H, W, C)."""
    width, height, channels, idat = _read_chunks(data)
    try:
        raw = zlib.decompress(idat)
    except zlib.error as exc:
        raise PngError(f"corrupt image data ({exc})") from None
    stride = width * channels
    if len(raw) != height * (stride + 1):
        need = height * (stride + 1)
        raise PngError(f"image data holds {len(raw)} bytes, a {width}x{height} image needs {need}")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride + 1)
    if rows[:, 0].max() > 4:
        bad = int(np.argmax(rows[:, 0] > 4))
        raise PngError(f"row {bad} uses unknown filter type {int(rows[bad, 0])}")
    return rows, (height, width, channels)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _read_chunks(data: bytes) -> tuple[int, int, int, bytes]:
    """Walk the chunks; return width, height, channels and the concatenated IDAT payload."""
    if not data.startswith(_SIGNATURE):
        raise PngError("not a PNG file (bad signature)")
    pos, header, idat = len(_SIGNATURE), None, []
    while True:
        if pos + 8 > len(data):
            raise PngError("truncated PNG (no IEND chunk)")
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        payload, crc = data[pos + 8 : pos + 8 + length], data[pos + 8 + length : pos + 12 + length]
        if len(crc) != 4:
            raise PngError(f"truncated PNG (chunk {kind!r} runs past the end)")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + payload):
            raise PngError(f"corrupt PNG (bad CRC in chunk {kind!r})")
        pos += 12 + length
        if kind == b"IHDR":
            header = _parse_header(payload)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        elif kind[0] & 0x20 == 0 and kind != b"PLTE":  # critical chunk we do not know
            raise PngError(f"unsupported critical chunk {kind!r}")
    if header is None or not idat:
        raise PngError("PNG has no IHDR or no IDAT chunk")
    return (*header, b"".join(idat))


def _parse_header(payload: bytes) -> tuple[int, int, int]:
    if len(payload) != 13:
        raise PngError(f"IHDR has {len(payload)} bytes, expected 13")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", payload)
    if color not in _CHANNELS or depth != 8:
        kind = _COLOR_NAMES.get(color, f"colour type {color}")
        raise PngError(f"unsupported PNG: {depth}-bit {kind} (only 8-bit gray, RGB and RGBA are supported)")
    if interlace:
        raise PngError("unsupported PNG: Adam7 interlacing (only non-interlaced images are supported)")
    if width == 0 or height == 0:
        raise PngError(f"PNG has an empty size {width}x{height}")
    return width, height, _CHANNELS[color]


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Paeth predictor on int16 arrays: whichever of left, up, up-left is closest to left + up - up-left."""
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(rows: np.ndarray, bpp: int, kinds: list[int]) -> np.ndarray:
    """Apply each PNG filter in `kinds` to uint8 [H, stride] rows: uint8 [len(kinds), H, stride]."""
    x = rows.astype(np.int16)
    a = np.zeros_like(x)  # left
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)  # up
    b[1:] = x[:-1]
    c = np.zeros_like(x)  # up-left
    c[1:, bpp:] = x[:-1, :-bpp]
    return np.stack([(x - _predict(k, a, b, c)) & 0xFF for k in kinds]).astype(np.uint8)


def _predict(kind: int, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The predictor of PNG filter `kind` (None, Sub, Up, Average, Paeth) from left, up and up-left."""
    if kind == 4:
        return _paeth(a, b, c)
    return [np.zeros_like(a), a, b, (a + b) >> 1][kind]


def _unfilter_rows(rows: list[np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Unfilter same-shape [H, 1 + W*C] row blocks from `_inflate` into uint8 [B, H, W, C] images."""
    stack = np.stack(rows)
    filtered, filters = stack[:, :, 1:].reshape(len(rows), *shape), stack[:, :, 0]
    if filters.max() <= 2:
        return _unfilter_fast(filtered, filters)
    return _unfilter(filtered, filters)


def _unfilter_fast(filtered: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Undo None/Sub/Up filters of uint8 [B, H, W, C] images with cumulative sums (arithmetic mod 256).

    Sub is a running sum along the row; a run of Up rows is a running sum down the columns, restarted at
    each row that is not Up (and at row 0, whose "up" neighbour is zero).
    """
    batch, height = filters.shape
    kind = filters[:, :, None, None]
    local = np.where(kind == 1, np.cumsum(filtered, axis=2, dtype=np.uint8), filtered)
    total = np.cumsum(local, axis=1, dtype=np.uint8)
    starts = filters != 2  # row 0 needs no special case: its start_of is 0 either way
    start_of = np.maximum.accumulate(np.where(starts, np.arange(height), 0), axis=1)  # (B, H)
    before = np.concatenate([np.zeros_like(total[:, :1]), total[:, :-1]], axis=1)  # total up to row y - 1
    return total - np.take_along_axis(before, start_of[:, :, None, None], axis=1)


def _unfilter(filtered: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Undo the row filters of uint8 [B, H, W, C] images (filter types [B, H]), one anti-diagonal at a time.

    Pixel (y, x) depends only on (y, x-1), (y-1, x) and (y-1, x-1), so all pixels on the diagonal
    y + x = d are reconstructed at once. The images are skewed so that each diagonal is a contiguous
    `skew[:, d + 2, 1:]` (index y + 1), with zero padding standing for "outside the image".
    """
    batch, height, width, channels = filtered.shape
    yy, xx = np.indices((height, width))
    data = np.zeros((batch, height + width - 1, height, channels), np.int16)
    data[:, yy + xx, yy] = filtered
    skew = np.zeros((batch, height + width + 1, height + 1, channels), np.int16)
    kind = filters[:, :, None]  # (B, H, 1), broadcast over channels
    is_sub, is_up, is_avg, is_paeth = (kind == k for k in range(1, 5))
    for d in range(height + width - 1):
        a, b, c = skew[:, d + 1, 1:], skew[:, d + 1, :-1], skew[:, d, :-1]
        pred = np.where(is_paeth, _paeth(a, b, c), np.where(is_avg, (a + b) >> 1, b * is_up + a * is_sub))
        skew[:, d + 2, 1:] = (data[:, d] + pred) & 0xFF
    return skew[:, yy + xx + 2, yy + 1].astype(np.uint8)
