"""The one image reader of the demo, the database builder and the data mappers.

Why not ``PIL.Image.open(path).convert("RGB")``: Pillow clips 16-bit grayscale ("I;16", "I") to
255 on that conversion, so a 16-bit PNG becomes all white, and it ignores the EXIF orientation that
detectron2's ``read_image`` applies, so the builder and the model would see different pictures.
Here every reader gets the same pixels: EXIF orientation applied, 16/32-bit and float images
scaled to 8 bits by their range, palette / LA / CMYK / RGBA converted by Pillow (alpha dropped, as
detectron2 does), and an :class:`ImageReadError` naming the file for an empty, truncated,
undecodable or degenerate image. No detectron2 import.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadFileError

logger = logging.getLogger(__name__)

__all__ = ["ImageReadError", "read_image", "check_resized_shape", "MIN_IMAGE_SIDE", "IMAGE_FORMATS"]

#: Smallest height or width accepted (a 1-pixel line has no segments to find).
MIN_IMAGE_SIDE = 2

#: Channel orders :func:`read_image` returns (detectron2's names).
IMAGE_FORMATS = ("RGB", "BGR", "L")

PathLike = Union[str, "os.PathLike[str]"]


class ImageReadError(BadFileError):
    """An image that cannot be used; the message names the file. A ``ValueError`` too, so callers
    that skip unreadable images keep catching it."""


def _high_bit_depth_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float pixels -> uint8 by their range.

    Integer images whose values fit in 0..65535 are 16-bit data (Pillow opens 16-bit PNGs as "I;16"
    or "I"): v * 255 / 65535. Anything else (negative or > 16-bit integers, floats) is stretched
    from its own minimum..maximum, the only range it has.
    """
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ValueError(f"mode {mode} image has no finite pixel")
    if np.issubdtype(array.dtype, np.integer) and values.min() >= 0 and values.max() <= 65535:
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = float(values[finite].min()), float(values[finite].max())
    scaled = (np.where(finite, values, lo) - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_array(img: Image.Image, format: str) -> np.ndarray:
    """A decoded Pillow image -> HxWx3 (RGB/BGR) or HxW (L) uint8."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _high_bit_depth_to_uint8(np.asarray(img), img.mode)
        if format == "L":
            return gray
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        if format == "L":
            return np.array(img.convert("L"), dtype=np.uint8)
        rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1]) if format == "BGR" else rgb


def read_image(path: PathLike, format: str = "RGB", data: Optional[bytes] = None) -> np.ndarray:
    """Read an image file as uint8 pixels, EXIF orientation applied.

    Args:
        path: the image file.
        format: "RGB" or "BGR" (H x W x 3) or "L" (H x W), as detectron2 names them.
        data: the file's bytes when they were already read (a member of a webdataset tar);
            ``path`` then only names the image in errors.
    Returns:
        uint8 numpy array.
    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, or smaller than
            :data:`MIN_IMAGE_SIDE` pixels on a side; the message names ``path``.
    """
    if format not in IMAGE_FORMATS:
        raise ValueError(f"image format {format!r} is not one of {IMAGE_FORMATS}")
    path = os.fspath(path)
    if data is None and not os.path.isfile(path):
        raise ImageReadError(f"image {path}: no such file")
    if (len(data) if data is not None else os.path.getsize(path)) == 0:
        raise ImageReadError(f"image {path}: the file is empty")
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
            img.load()  # decode now, so a truncated file fails here and not in a later convert
            oriented = ImageOps.exif_transpose(img)
            array = _to_array(oriented, format)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"image {path}: cannot be decoded ({e})") from e
    height, width = array.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"image {path} is {width}x{height} pixels; both sides must be at least {MIN_IMAGE_SIDE}"
        )
    return array


def check_resized_shape(path: PathLike, shape: Tuple[int, int], resized: Tuple[int, int],
                        min_side: int = MIN_IMAGE_SIDE) -> None:
    """Refuse an image whose aspect ratio makes the model's resize collapse a side.

    A 4000x8 image resized to at most 160 pixels on its long side is 0 pixels high; Pillow would
    fail with "height and width must be > 0", which names neither the file nor the cause.

    Args:
        shape: original (height, width); resized: (height, width) after the test-time resize.
    """
    if min(resized) < min_side:
        raise ImageReadError(
            f"image {os.fspath(path)} is {shape[1]}x{shape[0]} pixels: resized for the model it would "
            f"be {resized[1]}x{resized[0]}, too thin to segment (aspect ratio too extreme; crop it)"
        )
