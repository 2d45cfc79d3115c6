"""Pixels of the "AI summary" Secondary Capture series: key images and a summary page.

Everything here is numpy in, RGB ``uint8`` out, with no DICOM: the HU volume
and the :class:`~inference.result.InferenceResult` go in, a
:class:`SummaryRendering` comes out, and
:func:`pacs_node.results.capture.build_secondary_captures` encodes it.

Key images
    The axial slices with the most lesion pixels, at most
    :data:`MAX_KEY_IMAGES`, most lesion first, chosen greedily at least
    :data:`KEY_IMAGE_SEPARATION_MM` apart so that they do not show the same
    section of one lesion three times (none when there is no lesion). Each is
    the source slice in the lung window (W 1500 / L -600) on the source grid
    (same rows, columns and pixel spacing, so the image keeps the slice's
    geometry), with the lesion outline burned in :data:`LESION_COLOR` (a
    2-pixel band inside the lesion boundary), a legend, the window and
    :data:`~pacs_node.results.drawing.RESEARCH_TEXT`. No patient data is
    burned in.
Summary page
    :data:`PAGE_SHAPE` pixels: class probabilities, lesion count and total
    volume (mL), involvement per lung and per zone, model name and version,
    the intended-use statement, and a coronal overview (the coronal plane
    with the most lesion, lung window, every lesion's outline projected
    front-to-back on it), head up.

Only the chosen slices and one coronal plane are copied out of the volume;
the volume itself is never copied (peak memory, issue 6).
"""
from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.result import InferenceResult, LesionAnalysis
from pacs_node.results.drawing import (
    LUNG_WINDOW,
    RESEARCH_TEXT,
    Color,
    inner_outline,
    text_box,
    to_rgb,
    window,
)

LOGGER = logging.getLogger(__name__)

__all__ = [
    "KEY_IMAGE_SEPARATION_MM",
    "LESION_COLOR",
    "MAX_KEY_IMAGES",
    "OUTLINE_THICKNESS",
    "PAGE_SHAPE",
    "KeyImage",
    "SummaryRendering",
    "render_key_image",
    "render_overview",
    "render_summary",
    "render_summary_page",
    "select_key_slices",
    "summary_lines",
]

#: Most key images per series (the slices with the most lesion).
MAX_KEY_IMAGES = 3
#: Smallest distance (mm) between two key images' slices.
KEY_IMAGE_SEPARATION_MM = 10.0
#: Colour of the burned-in lesion outline (the SEG's lesion colour).
LESION_COLOR: Color = (230, 50, 50)
#: Outline width in pixels, inside the lesion.
OUTLINE_THICKNESS = 2
#: ``(rows, columns)`` of the summary page.
PAGE_SHAPE: tuple[int, int] = (768, 1024)

_WHITE: Color = (255, 255, 255)
_YELLOW: Color = (255, 220, 0)
_GREY: Color = (190, 190, 190)
_PAGE_BACKGROUND: Color = (16, 16, 24)


@dataclass(frozen=True)
class KeyImage:
    """One rendered key image.

    Attributes
    ----------
    slice_index: int
        Index ``k`` of the source slice in the volume (``result.geometry``).
    lesion_pixels: int
        Lesion pixels on that slice.
    pixels: numpy.ndarray
        ``(rows, columns, 3)`` ``uint8`` RGB, the source slice's size.
    """

    slice_index: int
    lesion_pixels: int
    pixels: np.ndarray


@dataclass(frozen=True)
class SummaryRendering:
    """The pixels of the Secondary Capture series of one result.

    Attributes
    ----------
    key_images: tuple[KeyImage, ...]
        Most lesion first; empty when there is no lesion.
    summary_page: numpy.ndarray
        :data:`PAGE_SHAPE` + ``(3,)`` ``uint8`` RGB.
    summary_lines: tuple[str, ...]
        The text of the summary page, line by line.
    """

    key_images: tuple[KeyImage, ...]
    summary_page: np.ndarray
    summary_lines: tuple[str, ...]


def select_key_slices(
    lesion_mask: np.ndarray,
    max_images: int = MAX_KEY_IMAGES,
    *,
    slice_spacing_mm: float = 1.0,
    min_separation_mm: float = KEY_IMAGE_SEPARATION_MM,
) -> tuple[tuple[int, int], ...]:
    """The slices with the most lesion, at least ``min_separation_mm`` apart.

    Greedy: slices by decreasing lesion pixel count (ties: lower index
    first); a slice closer than ``min_separation_mm`` to one already chosen
    is passed over.

    Parameters
    ----------
    lesion_mask: numpy.ndarray
        ``(slices, rows, columns)`` boolean.
    max_images: int
        At most this many slices (>= 0).
    slice_spacing_mm: float
        Distance between adjacent slices (mm).
    min_separation_mm: float
        Smallest distance between two chosen slices; 0 takes the top
        ``max_images`` slices.

    Returns
    -------
    tuple[tuple[int, int], ...]
        ``(slice_index, lesion_pixels)``, most lesion first; empty when the
        mask is empty.

    Raises
    ------
    ValueError
        If the mask is not 3-D boolean or an argument is negative.
    """
    if lesion_mask.ndim != 3 or lesion_mask.dtype != np.bool_:
        raise ValueError('Argument "lesion_mask" should be a 3-D boolean array.')
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 0:
        raise ValueError(f'Argument "max_images" should be >= 0, got {max_images!r}')
    if not slice_spacing_mm > 0 or min_separation_mm < 0:
        raise ValueError(
            'Arguments "slice_spacing_mm" (> 0) and "min_separation_mm" (>= 0) are out of range.'
        )
    counts = np.count_nonzero(lesion_mask.reshape(lesion_mask.shape[0], -1), axis=1)
    order = np.lexsort((np.arange(counts.size), -counts))
    chosen: list[tuple[int, int]] = []
    for k in order:
        if len(chosen) >= max_images or counts[k] == 0:
            break
        if all(abs(int(k) - other) * slice_spacing_mm >= min_separation_mm - 1e-9
               for other, _ in chosen):
            chosen.append((int(k), int(counts[k])))
    return tuple(chosen)


def _font_size(columns: int) -> int:
    return max(10, round(14 * columns / 512))


def render_key_image(
    hu_slice: np.ndarray,
    lesion_slice: np.ndarray,
    *,
    caption: str,
    model_label: str,
    window_center: float = LUNG_WINDOW[0],
    window_width: float = LUNG_WINDOW[1],
) -> np.ndarray:
    """One key image: the slice in the lung window with the lesion outline burned in.

    Parameters
    ----------
    hu_slice: numpy.ndarray
        ``(rows, columns)`` HU.
    lesion_slice: numpy.ndarray
        ``(rows, columns)`` boolean lesion mask of the same slice.
    caption: str
        Second legend line, e.g. ``"Slice 41/80: lesion 12.3 cm2"``.
    model_label: str
        Model name and version, shown in the legend.
    window_center, window_width: float
        Display window (HU).

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` ``uint8``: grey levels where there is no
        label, :data:`LESION_COLOR` exactly on the outline pixels
        (:func:`~pacs_node.results.drawing.inner_outline`), the legend at the
        top left, the window at the top right and the research-use line at the
        bottom.

    Raises
    ------
    ValueError
        If the shapes differ or are not 2-D.
    """
    if hu_slice.ndim != 2 or lesion_slice.shape != hu_slice.shape:
        raise ValueError('Arguments "hu_slice" and "lesion_slice" should be 2-D, same shape.')
    rgb = to_rgb(window(hu_slice, window_center, window_width))
    rgb[inner_outline(lesion_slice.astype(bool, copy=False), OUTLINE_THICKNESS)] = LESION_COLOR
    image = Image.fromarray(rgb, mode="RGB")
    size = _font_size(image.width)
    margin = max(2, size // 3)
    text_box(
        image,
        (margin, margin),
        [("AI lesion outline", _WHITE), (caption, _GREY), (model_label, _GREY)],
        size,
        swatches={0: LESION_COLOR},
    )
    text_box(
        image,
        (-margin, margin),
        [(f"W {window_width:g} / L {window_center:g}", _GREY)],
        size,
    )
    text_box(image, (margin, -margin), [(RESEARCH_TEXT, _YELLOW)], size)
    return np.asarray(image, dtype=np.uint8).copy()


def _overview_row(lesion_mask: np.ndarray, lung_mask: np.ndarray) -> int:
    per_row = np.count_nonzero(lesion_mask, axis=(0, 2))
    if per_row.any():
        return int(np.argmax(per_row))
    lungs = np.nonzero(np.count_nonzero(lung_mask, axis=(0, 2)))[0]
    if lungs.size:
        return int((lungs[0] + lungs[-1]) // 2)
    return lesion_mask.shape[1] // 2


def render_overview(
    hu: np.ndarray,
    lesion_mask: np.ndarray,
    lung_mask: np.ndarray,
    geometry: Geometry,
    box: tuple[int, int],
) -> np.ndarray:
    """Coronal overview: the coronal plane with the most lesion, lesions outlined.

    The plane is row ``i`` of the axial grid (the row with the most lesion
    voxels; with no lesion, the middle of the lungs), in the lung window,
    resampled to square pixels and shown head up; every lesion is projected
    along the rows (front to back) and its outline burned in
    :data:`LESION_COLOR`.

    Parameters
    ----------
    hu: numpy.ndarray
        ``(slices, rows, columns)`` HU (only one plane is read).
    lesion_mask, lung_mask: numpy.ndarray
        The result's masks, same shape.
    geometry: inference.geometry.Geometry
        For the pixel aspect and which slice end is the head.
    box: tuple[int, int]
        ``(height, width)`` the overview must fit in.

    Returns
    -------
    numpy.ndarray
        ``(height, width, 3)`` ``uint8``, within ``box``, aspect preserved.
    """
    row = _overview_row(lesion_mask, lung_mask)
    plane = window(np.array(hu[:, row, :]), *LUNG_WINDOW)
    projection: np.ndarray = np.asarray(lesion_mask.any(axis=1))
    if float(geometry.affine[2, 0]) > 0:  # slice index grows toward the head: head up
        plane, projection = plane[::-1], projection[::-1]
    height_mm = plane.shape[0] * geometry.spacing[0]
    width_mm = plane.shape[1] * geometry.spacing[2]
    scale = min(box[0] / height_mm, box[1] / width_mm)
    size = (max(1, int(width_mm * scale)), max(1, int(height_mm * scale)))
    gray = Image.fromarray(plane).resize(size, Image.Resampling.BILINEAR)
    mask = Image.fromarray(projection.astype(np.uint8) * 255).resize(
        size, Image.Resampling.NEAREST
    )
    rgb = to_rgb(np.asarray(gray, dtype=np.uint8))
    rgb[inner_outline(np.asarray(mask) > 0, OUTLINE_THICKNESS)] = LESION_COLOR
    return rgb


def _percent(analysis: LesionAnalysis, region: str) -> str:
    try:
        return f"{analysis.region(region).percent:.1f} %"
    except KeyError:
        return "n/a"


def summary_lines(result: InferenceResult, manifest: Manifest) -> tuple[str, ...]:
    """The text of the summary page; every number comes from ``result``.

    Parameters
    ----------
    result: inference.result.InferenceResult
        Probabilities, lesions and involvement.
    manifest: inference.manifest.Manifest
        Class display names and the intended-use statement.

    Returns
    -------
    tuple[str, ...]
        Title, model, predicted class, one line per class probability, lesion
        count and total volume, involvement (both lungs, each lung with its
        upper/middle/lower zones), then the intended use.
    """
    displays = {spec.key: spec.display for spec in manifest.classes}
    analysis = result.analysis
    predicted = result.predicted_class
    lines = [
        "AI summary (research)",
        f"Model: {result.model_name} {result.model_version}",
        f"Result: {displays.get(predicted, predicted)} "
        f"(p = {max(result.class_probabilities):.2f})",
        "Class probabilities:",
    ]
    for key, probability in zip(result.class_keys, result.class_probabilities):
        lines.append(f"  {displays.get(key, key)}: {100.0 * probability:.1f} %")
    lines.append(
        f"Lesions: {len(analysis.lesions)}, total volume {analysis.total_lesion_volume_ml:.1f} mL"
    )
    lines.append(f"Involvement (lesion / lung volume): both lungs {_percent(analysis, 'total')}")
    for side in ("right", "left"):
        zones = ", ".join(
            f"{zone} {_percent(analysis, f'{side}_{zone}')}"
            for zone in ("upper", "middle", "lower")
        )
        lines.append(f"  {side.capitalize()} lung {_percent(analysis, side)} ({zones})")
    lines.append("")
    lines.extend(textwrap.wrap(manifest.intended_use, width=48))
    return tuple(lines)


def render_summary_page(
    lines: Sequence[str],
    overview: np.ndarray,
    shape: tuple[int, int] = PAGE_SHAPE,
) -> np.ndarray:
    """Lay out the summary text (left) and the overview (right) on one page.

    Parameters
    ----------
    lines: Sequence[str]
        :func:`summary_lines` (the first line is the title).
    overview: numpy.ndarray
        RGB overview image (:func:`render_overview`).
    shape: tuple[int, int]
        ``(rows, columns)`` of the page.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` ``uint8``.
    """
    rows, columns = shape
    image = Image.new("RGB", (columns, rows), _PAGE_BACKGROUND)
    size = max(12, rows // 40)
    margin = size
    banner = text_box(image, (0, 0), [(RESEARCH_TEXT, _YELLOW)], size + 2,
                      background=(60, 0, 0), padding=margin // 2)
    top = banner[3] + margin
    title, body = (lines[0], list(lines[1:])) if lines else ("", [])
    text_box(image, (margin, top), [(title, _WHITE)], size + 6, background=_PAGE_BACKGROUND)
    text_box(
        image,
        (margin, top + 2 * (size + 6)),
        [(line, _WHITE if not line.startswith("  ") else _GREY) for line in body],
        size,
        background=_PAGE_BACKGROUND,
    )
    left = columns // 2 + margin
    overview_image = Image.fromarray(overview, mode="RGB")
    image.paste(overview_image, (left, top))
    legend_top = top + overview_image.height + margin // 2
    text_box(
        image,
        (left, legend_top),
        [("Coronal overview, lung window; lesions projected", _GREY)],
        max(10, size - 4),
        swatches={0: LESION_COLOR},
        background=_PAGE_BACKGROUND,
    )
    text_box(image, (0, -1), [(RESEARCH_TEXT, _YELLOW)], size, background=(60, 0, 0),
             padding=margin // 2)
    return np.asarray(image, dtype=np.uint8).copy()


def render_summary(
    hu: np.ndarray,
    result: InferenceResult,
    manifest: Manifest,
    *,
    max_key_images: int = MAX_KEY_IMAGES,
    slice_labels: Sequence[str] | None = None,
) -> SummaryRendering:
    """Render the key images and the summary page of one result.

    Parameters
    ----------
    hu: numpy.ndarray
        ``(slices, rows, columns)`` HU of the source volume (not copied).
    result: inference.result.InferenceResult
        Masks on the same grid, probabilities and analysis.
    manifest: inference.manifest.Manifest
        Class names and intended use.
    max_key_images: int
        At most this many key images (:data:`MAX_KEY_IMAGES`).
    slice_labels: Sequence[str] | None
        Per slice, how the caption names it (e.g. the source Instance
        Number); default ``k + 1``.

    Returns
    -------
    SummaryRendering

    Raises
    ------
    ValueError
        If ``hu`` does not have the result's shape.
    """
    geometry = result.geometry
    if tuple(hu.shape) != geometry.shape:
        raise ValueError(
            f'Argument "hu" has shape {tuple(hu.shape)}, the result geometry {geometry.shape}.'
        )
    n_slices = geometry.shape[0]
    if slice_labels is not None and len(slice_labels) != n_slices:
        raise ValueError('Argument "slice_labels" should hold one label per slice.')
    model_label = f"{result.model_name} {result.model_version}"
    pixel_area_cm2 = geometry.spacing[1] * geometry.spacing[2] / 100.0
    keys = []
    for k, count in select_key_slices(
        result.lesion_mask, max_key_images, slice_spacing_mm=geometry.spacing[0]
    ):
        label = slice_labels[k] if slice_labels is not None else str(k + 1)
        caption = (
            f"Image {label} (slice {k + 1}/{n_slices}): lesion {count * pixel_area_cm2:.1f} cm2"
        )
        pixels = render_key_image(
            np.asarray(hu[k]), result.lesion_mask[k], caption=caption, model_label=model_label
        )
        keys.append(KeyImage(slice_index=k, lesion_pixels=count, pixels=pixels))
    lines = summary_lines(result, manifest)
    rows, columns = PAGE_SHAPE
    box = (rows - 8 * max(12, rows // 40), columns // 2 - 2 * max(12, rows // 40))
    overview = render_overview(hu, result.lesion_mask, result.lung_mask, geometry, box)
    page = render_summary_page(lines, overview)
    LOGGER.debug("rendered %d key image(s) and the summary page", len(keys))
    return SummaryRendering(key_images=tuple(keys), summary_page=page, summary_lines=lines)

