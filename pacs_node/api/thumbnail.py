"""PNG thumbnail of a job's key image (the first instance of its SC "AI summary" series).

The Secondary Capture key image already has the lung window, the burned-in
lesion outline and the "research use only" legend, so the thumbnail is the
image itself, downscaled. Result files never change once recorded, so
thumbnails are cached by SOP Instance UID.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

LOGGER = logging.getLogger(__name__)

__all__ = ["THUMBNAIL_SIZE", "ThumbnailCache", "render_thumbnail"]

#: Longest side of a thumbnail in pixels.
THUMBNAIL_SIZE = 256


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    data = pixels.astype(np.float64)
    low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    return np.round((data - low) * (255.0 / (high - low))).astype(np.uint8)


def render_thumbnail(path: Path, size: int = THUMBNAIL_SIZE) -> bytes:
    """Read a DICOM image and return a PNG whose longest side is at most `size`.

    Parameters
    ----------
    path: pathlib.Path
        A DICOM file with pixel data (RGB or MONOCHROME1/2; the first frame
        of a multi-frame image).
    size: int
        Longest side in pixels.

    Returns
    -------
    bytes
        The PNG.

    Raises
    ------
    ValueError
        If the file has no pixel data that can be shown.
    """
    dataset = pydicom.dcmread(path)
    if "PixelData" not in dataset:
        raise ValueError(f"{path.name} has no pixel data")
    pixels = dataset.pixel_array
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, photometric, "RGB")
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        image = Image.fromarray(_to_uint8(pixels), mode="RGB")
    elif pixels.ndim == 2:
        gray = _to_uint8(pixels)
        if photometric == "MONOCHROME1":
            gray = 255 - gray
        image = Image.fromarray(gray, mode="L")
    else:
        raise ValueError(f"{path.name}: cannot show pixel data of shape {pixels.shape}")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    output = io.BytesIO()
    image.save(output, format="PNG", optimize=True)
    return output.getvalue()


class ThumbnailCache:
    """Thread-safe LRU cache of rendered thumbnails, keyed by SOP Instance UID.

    Parameters
    ----------
    capacity: int
        Thumbnails kept (about 20-60 kB each).
    """

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f'Argument "capacity" should be >= 1, got {capacity}')
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sop_instance_uid: str, path: Path) -> bytes:
        """The thumbnail of `path`, rendered once per `sop_instance_uid`."""
        with self._lock:
            if sop_instance_uid in self._items:
                self._items.move_to_end(sop_instance_uid)
                return self._items[sop_instance_uid]
        png = render_thumbnail(path)
        with self._lock:
            self._items[sop_instance_uid] = png
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return png
