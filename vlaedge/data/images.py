"""Image columns: camera frames <-> PNG bytes, with Pillow.

LeRobot stores an image feature as a struct ``{bytes, path}`` per frame with the file's bytes embedded
(PNG when LeRobot writes it; any format Pillow reads is accepted here). Frames come out as uint8 RGB:
gray is repeated over three channels, alpha is dropped, palette images are expanded.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlaedge.errors import VlaedgeError

_EIGHT_BIT = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"}  # modes with 8-bit channels


def encode_png(image: np.ndarray) -> bytes:
    """One frame as PNG bytes (lossless; zlib level 6, Pillow's default filter choice).

    Args:
        image: uint8 [H, W, 3] RGB.

    Raises:
        ValueError: the image is not a non-empty uint8 [H, W, 3] array.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"encode_png needs a non-empty uint8 [H, W, 3] image, got {image.dtype} "
                         f"{image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_images(blobs: Sequence[bytes | None], where: str) -> np.ndarray:
    """Decodes one episode's embedded frames.

    Args:
        blobs: each frame's file bytes (PNG, or any 8-bit format Pillow reads).
        where: what to name in errors, e.g. ``"dataset: data/chunk-000/file-000.parquet episode 3"``.

    Returns:
        uint8 [N, H, W, 3] RGB frames, in order.

    Raises:
        VlaedgeError: a frame has no bytes, is not an image, is truncated or corrupt, has more than 8
            bits per channel, or the frames differ in size.
    """
    frames = []
    for i, blob in enumerate(blobs):
        if blob is None:
            raise VlaedgeError(f"{where}: frame {i} has no embedded image bytes", "embed the images")
        frames.append(_decode(blob, f"{where}: frame {i}"))
    if len({f.shape for f in frames}) > 1:
        raise VlaedgeError(f"{where}: frames have different sizes {sorted({f.shape for f in frames})}",
                           "resize them")
    return np.stack(frames)


def _decode(blob: bytes, where: str) -> np.ndarray:
    fix = "the camera column must hold 8-bit images (PNG); re-encode it"
    try:
        with Image.open(io.BytesIO(blob)) as image:
            if image.mode not in _EIGHT_BIT:
                raise VlaedgeError(f"{where}: image mode {image.mode} is not 8 bits per channel", fix)
            image.verify()  # every chunk's CRC: load() alone does not check them
        with Image.open(io.BytesIO(blob)) as image:  # verify() leaves the image unusable: reopen
            image.load()  # decodes now, so a truncated file is reported here
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow reports unreadable and truncated files as OSError (UnidentifiedImageError is one), bad
        # PNG chunks and checksums as SyntaxError.
        raise VlaedgeError(f"{where}: cannot decode the image ({exc})", fix) from None
