"""Separable resampling between axis-aligned voxel grids.

The source volume and the model grid share their direction cosines (the
model grid is the source grid re-spaced, then cropped or padded), so
resampling factors into three one-dimensional linear maps. Each map is a
small dense weight matrix ``W`` of shape ``(n_out, n_in)``: output sample
``o`` is ``sum_i W[o, i] * input[i]``.

* Upsampling (output spacing <= input spacing) is linear interpolation.
* Downsampling uses a triangle kernel stretched by the spacing ratio (the
  "antialiased bilinear" filter of PIL and torchvision), so noise and thin
  structures are averaged rather than aliased.

Volumes are processed in chunks of slices so that no full-size float copy of
a large source volume is ever held (a 300 x 512 x 512 int16 series is 150 MB;
a float32 copy would be 300 MB).
"""
from __future__ import annotations

import logging

import numpy as np

LOGGER = logging.getLogger(__name__)

__all__ = [
    "axis_weights",
    "apply_axis",
    "resample_separable",
]

#: Slices processed at once when mapping a large source volume.
CHUNK_SLICES = 16


def axis_weights(
    n_in: int,
    n_out: int,
    scale: float,
    offset: float,
    antialias: bool = True,
) -> np.ndarray:
    """Weights of a 1-D linear resampling.

    Output index ``o`` sits at input coordinate ``c = o * scale + offset``
    (in input voxel units, voxel centres at integers).

    Parameters
    ----------
    n_in: int
        Number of input samples.
    n_out: int
        Number of output samples.
    scale: float
        Output spacing divided by input spacing (> 0).
    offset: float
        Input coordinate of output sample 0.
    antialias: bool, optional
        Widen the kernel by ``scale`` when downsampling (``scale > 1``).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(n_out, n_in)``. Rows of outputs that
        fall outside the input (beyond half a voxel) are all zero; other rows
        sum to 1.

    Raises
    ------
    ValueError
        If a size is not positive or ``scale`` is not positive.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError('Arguments "n_in" and "n_out" should be positive integers.')
    if not scale > 0:
        raise ValueError('Argument "scale" should be positive.')
    support = max(1.0, scale) if antialias else 1.0
    centres = np.arange(n_out, dtype=np.float64) * scale + offset
    inputs = np.arange(n_in, dtype=np.float64)
    distance = np.abs(inputs[None, :] - centres[:, None]) / support
    weights = np.clip(1.0 - distance, 0.0, None)
    inside = (centres >= -0.5) & (centres <= n_in - 0.5)
    # Near the edges clamp to the border sample rather than fading to zero.
    row_sums = weights.sum(axis=1)
    empty = inside & (row_sums <= 0)
    if np.any(empty):
        nearest = np.clip(np.rint(centres[empty]), 0, n_in - 1).astype(int)
        weights[np.nonzero(empty)[0], nearest] = 1.0
        row_sums = weights.sum(axis=1)
    weights[~inside] = 0.0
    row_sums = np.where(inside & (row_sums > 0), row_sums, 1.0)
    return (weights / row_sums[:, None]).astype(np.float32)


def apply_axis(array: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Apply a ``(n_out, n_in)`` weight matrix along ``axis`` of ``array``.

    Parameters
    ----------
    array: numpy.ndarray
        Float array whose ``axis`` has length ``n_in``.
    weights: numpy.ndarray
        Matrix from :func:`axis_weights`.
    axis: int
        Axis to resample.

    Returns
    -------
    numpy.ndarray
        ``float32`` array with ``axis`` of length ``n_out``.
    """
    if array.shape[axis] != weights.shape[1]:
        raise ValueError(
            f'Argument "weights" expects {weights.shape[1]} samples along axis {axis}, '
            f"the array has {array.shape[axis]}."
        )
    moved = np.moveaxis(array, axis, -1)
    out = moved @ weights.T
    return np.moveaxis(out, -1, axis).astype(np.float32, copy=False)


def resample_separable(
    volume: np.ndarray,
    weights_k: np.ndarray,
    weights_i: np.ndarray,
    weights_j: np.ndarray,
    clip: tuple[float, float] | None = None,
    chunk: int = CHUNK_SLICES,
) -> np.ndarray:
    """Resample a ``[k, i, j]`` volume with one weight matrix per axis.

    The in-plane maps are applied first, ``chunk`` source slices at a time
    (after optional clipping to ``clip``, which also turns padding values
    such as -3024 into the window floor before they can blur), then the
    slice map.

    Parameters
    ----------
    volume: numpy.ndarray
        Source array (any real dtype), shape ``(n_k, n_i, n_j)``.
    weights_k, weights_i, weights_j: numpy.ndarray
        ``(out, in)`` matrices for the slice, row and column axes.
    clip: tuple[float, float] | None, optional
        Clip source values to ``[low, high]`` before resampling.
    chunk: int, optional
        Source slices per in-plane step.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(weights_k.shape[0], weights_i.shape[0],
        weights_j.shape[0])``.
    """
    n_k, n_i, n_j = volume.shape
    if weights_k.shape[1] != n_k or weights_i.shape[1] != n_i or weights_j.shape[1] != n_j:
        raise ValueError('Argument "volume" does not match the weight matrices.')
    planes = np.empty((n_k, weights_i.shape[0], weights_j.shape[0]), dtype=np.float32)
    for start in range(0, n_k, chunk):
        block = np.asarray(volume[start : start + chunk], dtype=np.float32)
        if clip is not None:
            np.clip(block, clip[0], clip[1], out=block)
        block = block @ weights_j.T
        planes[start : start + chunk] = np.matmul(weights_i, block)
    return apply_axis(planes, weights_k, axis=0)
