"""Pictures a person can read: panoptic overlays with a legend, and labelled database thumbnails.

Colours come from the class name alone (a hash), so "cat" has the same colour in every run, every
picture and in the legend. Labels are drawn inside their segment, at its most interior pixel, and
only when the segment is large enough; every segment has a legend row (colour, class, score,
thing/stuff) beside the image. Shared by ``tools/demo.py``, the web demo and
``tools/inspect_database.py thumbnails``.
"""
from __future__ import annotations

import colorsys
import hashlib
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_MIN_AREA_FRACTION",
    "class_colour",
    "draw_panoptic",
    "draw_thumbnail",
    "label_positions",
]

#: Segments smaller than this fraction of the image get no label inside (legend only).
LABEL_MIN_AREA_FRACTION = 0.01
_OVERLAY_ALPHA = 0.5
_FONT_SIZE = 12
_LEGEND_WIDTH = 230
_ROW_HEIGHT = 18
_MIN_CROP = 64


def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def class_colour(name: str) -> Tuple[int, int, int]:
    """A vivid RGB colour that depends only on the class name (first synonym, case-insensitive)."""
    key = name.split(",")[0].strip().lower().encode()
    digest = hashlib.sha256(key).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    saturation = 0.55 + 0.35 * digest[2] / 255.0
    value = 0.75 + 0.2 * digest[3] / 255.0
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_colour(rgb: Tuple[int, int, int]) -> Tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def label_positions(
    panoptic: np.ndarray, segment_ids: Sequence[int], min_area_fraction: float = LABEL_MIN_AREA_FRACTION
) -> Dict[int, Optional[Tuple[int, int]]]:
    """(x, y) inside each segment farthest from its border, or None when the segment is under
    ``min_area_fraction`` of the image (its label then appears in the legend only)."""
    total = panoptic.size
    out: Dict[int, Optional[Tuple[int, int]]] = {}
    for sid in segment_ids:
        mask = panoptic == sid
        if mask.sum() < min_area_fraction * total:
            out[sid] = None
            continue
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(distance.argmax()), distance.shape)
        out[sid] = (int(x), int(y))
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=1, border_value=0)


def _segment_text(segment: Dict) -> str:
    name = segment["class"].split(",")[0].strip()
    return name if segment.get("score") is None else f"{name} {segment['score']:.2f}"


def draw_panoptic(
    image: np.ndarray,
    panoptic: np.ndarray,
    segments: Sequence[Dict],
    min_area_fraction: float = LABEL_MIN_AREA_FRACTION,
    legend: bool = True,
) -> np.ndarray:
    """The image with coloured segments, outlines and labels, and a legend panel on its right
    (``legend=False``: the picture alone, for pages that show the legend as a table).

    Args:
        image: (H, W, 3) uint8 RGB.
        panoptic: (H, W) int segment ids (0 = no segment).
        segments: dicts with "id", "class", optional "score" and "isthing", in legend order.
    Returns:
        (max(H, legend height), W + legend width, 3) uint8 RGB ((H, W, 3) without legend).
    """
    height, width = panoptic.shape
    canvas = image.astype(np.float32).copy()
    for segment in segments:
        mask = panoptic == segment["id"]
        colour = np.asarray(class_colour(segment["class"]), np.float32)
        canvas[mask] = (1 - _OVERLAY_ALPHA) * canvas[mask] + _OVERLAY_ALPHA * colour
        canvas[_outline(mask)] = colour
    positions = label_positions(panoptic, [s["id"] for s in segments], min_area_fraction)
    legend_height = _ROW_HEIGHT * (len(segments) + 1) + 8 if legend else 0
    panel = _LEGEND_WIDTH if legend else 0
    out = Image.new("RGB", (width + panel, max(height, legend_height)), (255, 255, 255))
    out.paste(Image.fromarray(canvas.clip(0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(out)
    font = _font()
    for segment in segments:
        position = positions[segment["id"]]
        if position is None:
            continue
        colour = class_colour(segment["class"])
        text = segment["class"].split(",")[0].strip()
        left, top, right, bottom = draw.textbbox(position, text, font=font, anchor="mm")
        # Keep the label inside the picture (a segment's inmost pixel can lie near the border).
        dx = max(0, 2 - left) - max(0, right + 2 - width)
        dy = max(0, 1 - top) - max(0, bottom + 1 - height)
        position = (position[0] + dx, position[1] + dy)
        left, top, right, bottom = left + dx, top + dy, right + dx, bottom + dy
        draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=colour)
        draw.text(position, text, fill=_text_colour(colour), font=font, anchor="mm")
    if legend:
        _draw_legend(draw, segments, width + 8, font)
    return np.asarray(out)


def _draw_legend(draw: ImageDraw.ImageDraw, segments: Sequence[Dict], x0: int, font: ImageFont.ImageFont) -> None:
    draw.text((x0, 4), "class  score  kind", fill=(0, 0, 0), font=font)
    for row, segment in enumerate(segments, start=1):
        y = 4 + row * _ROW_HEIGHT
        draw.rectangle((x0, y + 2, x0 + 12, y + 14), fill=class_colour(segment["class"]), outline=(0, 0, 0))
        kind = "" if segment.get("isthing") is None else ("thing" if segment["isthing"] else "stuff")
        draw.text((x0 + 18, y + 1), f"{_segment_text(segment)}  {kind}", fill=(0, 0, 0), font=font)


def draw_thumbnail(
    image: np.ndarray,
    box: Optional[Sequence[float]],
    mask: Optional[np.ndarray],
    caption: Sequence[str],
    size: int = 160,
    margin: float = 0.15,
) -> np.ndarray:
    """A crop around ``box`` (x0, y0, x1, y1; the mask's extent when absent) with the mask
    outlined in red, scaled to ``size`` on its longer side, with caption lines underneath."""
    height, width = image.shape[:2]
    if (box is None or not np.all(np.isfinite(box))) and mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    if box is None or not np.all(np.isfinite(box)):
        box = (0, 0, width, height)
    x0, y0, x1, y1 = (float(v) for v in box)
    # Context around the box: a margin, and at least _MIN_CROP pixels so tiny masks stay legible.
    pad_x = max(margin * (x1 - x0), (_MIN_CROP - (x1 - x0)) / 2, 0)
    pad_y = max(margin * (y1 - y0), (_MIN_CROP - (y1 - y0)) / 2, 0)
    left, top = int(max(0, x0 - pad_x)), int(max(0, y0 - pad_y))
    right, bottom = int(min(width, np.ceil(x1 + pad_x))), int(min(height, np.ceil(y1 + pad_y)))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    scale = size / max(bottom - top, right - left)
    shape = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    thumb = np.asarray(Image.fromarray(image[top:bottom, left:right]).resize(shape, Image.BILINEAR)).copy()
    if mask is not None and mask.shape == (height, width):
        small = Image.fromarray(mask[top:bottom, left:right].astype(np.uint8) * 255).resize(shape, Image.NEAREST)
        thumb[_outline(np.asarray(small) > 127)] = (255, 0, 0)
    thumb = Image.fromarray(thumb)
    font = _font(11)
    lines: List[str] = [str(c) for c in caption]
    out = Image.new("RGB", (size, thumb.height + 14 * len(lines) + 4), (255, 255, 255))
    out.paste(thumb, ((size - thumb.width) // 2, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((3, thumb.height + 2 + 14 * i), line, fill=(0, 0, 0), font=font)
    return np.asarray(out)
