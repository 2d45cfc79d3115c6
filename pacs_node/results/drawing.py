"""Small raster helpers for the burned-in result images (numpy in, RGB ``uint8`` out).

Used by :mod:`pacs_node.results.sc` (key images and summary page) and by
:mod:`pacs_node.results.contours`. No DICOM here.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LOGGER = logging.getLogger(__name__)

__all__ = [
    "LUNG_WINDOW",
    "RESEARCH_TEXT",
    "Color",
    "font",
    "inner_outline",
    "text_box",
    "to_rgb",
    "window",
]

#: Lung window ``(center, width)`` in HU: L -600 / W 1500.
LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)
#: The line burned into every rendered image.
RESEARCH_TEXT = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"

Color = tuple[int, int, int]

FontType = ImageFont.FreeTypeFont | ImageFont.ImageFont


def window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map HU to display grey levels with a linear window (PS3.3 C.11.2.1.2.1, simplified).

    Parameters
    ----------
    hu: numpy.ndarray
        Hounsfield units, any shape.
    center, width: float
        Window center and width (HU); ``width`` > 0.

    Returns
    -------
    numpy.ndarray
        ``uint8``, same shape: 0 at or below ``center - width / 2``, 255 at
        or above ``center + width / 2``.

    Raises
    ------
    ValueError
        If ``width`` is not positive.
    """
    if not width > 0:
        raise ValueError(f'Argument "width" should be positive, got {width}')
    low = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """``(rows, columns)`` ``uint8`` grey -> ``(rows, columns, 3)`` RGB (R = G = B)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError('Argument "gray" should be a 2-D uint8 array.')
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; pixels outside the array count as background."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    return inner


def inner_outline(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The pixels of ``mask`` within ``thickness`` pixels of its border.

    The outline lies inside the region (``outline <= mask``): drawn over an
    image it covers the region's boundary pixels and never the surrounding
    tissue.

    Parameters
    ----------
    mask: numpy.ndarray
        2-D boolean mask.
    thickness: int
        Outline width in pixels (4-neighbour erosions), >= 1.

    Returns
    -------
    numpy.ndarray
        Boolean, same shape: ``mask & ~erode^thickness(mask)``.

    Raises
    ------
    ValueError
        If ``mask`` is not 2-D boolean or ``thickness`` < 1.
    """
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError('Argument "mask" should be a 2-D boolean array.')
    if isinstance(thickness, bool) or not isinstance(thickness, int) or thickness < 1:
        raise ValueError(f'Argument "thickness" should be a positive integer, got {thickness!r}')
    inner = mask
    for _ in range(thickness):
        inner = _erode(inner)
    return mask & ~inner


@lru_cache(maxsize=16)
def font(size: int) -> FontType:
    """Pillow's bundled font at ``size`` pixels (Pillow >= 10.1 with FreeType).

    Parameters
    ----------
    size: int
        Text height in pixels.

    Returns
    -------
    PIL.ImageFont.FreeTypeFont | PIL.ImageFont.ImageFont
        The scalable default font; Pillow's fixed bitmap font when it was
        built without FreeType.
    """
    return ImageFont.load_default(size=max(int(size), 6))


def text_box(
    image: Image.Image,
    position: tuple[int, int],
    lines: list[tuple[str, Color]],
    size: int,
    *,
    background: Color = (0, 0, 0),
    padding: int = 4,
    swatches: dict[int, Color] | None = None,
) -> tuple[int, int, int, int]:
    """Draw lines of text on an opaque box (burned-in labels stay readable on any image).

    Parameters
    ----------
    image: PIL.Image.Image
        RGB image, changed in place.
    position: tuple[int, int]
        ``(x, y)`` of the box's top-left corner; a negative value counts from
        the right or bottom edge (the box is kept inside the image).
    lines: list[tuple[str, Color]]
        Text and colour of each line.
    size: int
        Font size (pixels).
    background: Color
        Box colour.
    padding: int
        Pixels between the box edge and the text.
    swatches: dict[int, Color] | None
        Line index -> colour of a filled square drawn before that line (a
        legend entry).

    Returns
    -------
    tuple[int, int, int, int]
        The box ``(left, top, right, bottom)`` (right and bottom exclusive).
    """
    draw = ImageDraw.Draw(image)
    face = font(size)
    swatches = swatches or {}
    swatch = size if swatches else 0
    line_height = size + max(2, size // 4)
    widths = [int(np.ceil(draw.textlength(text, font=face))) for text, _ in lines]
    width = (max(widths) if widths else 0) + 2 * padding + (swatch + padding if swatch else 0)
    height = line_height * len(lines) + 2 * padding
    x, y = position
    if x < 0:
        x = image.width + x - width
    if y < 0:
        y = image.height + y - height
    x = int(min(max(x, 0), max(image.width - width, 0)))
    y = int(min(max(y, 0), max(image.height - height, 0)))
    right, bottom = min(x + width, image.width), min(y + height, image.height)
    draw.rectangle((x, y, right - 1, bottom - 1), fill=background)
    for index, (text, color) in enumerate(lines):
        top = y + padding + index * line_height
        left = x + padding
        if index in swatches:
            draw.rectangle((left, top + 1, left + swatch - 2, top + swatch - 1),
                           fill=swatches[index])
        if swatch:
            left += swatch + padding
        draw.text((left, top), text, fill=color, font=face)
    return (x, y, right, bottom)
