#!/usr/bin/env python
"""Compare the HU statistics of synthetic phantoms with real chest CT.

Real data (read only, never copied): ``../shared/data/ct/lung-pet-ct-dx-a0002``
(30 slices, non-contrast, 0.65 mm x 8 mm) and
``../shared/data/nifti/chest-ct-crop.nii.gz`` (contrast-enhanced crop around the
heart, 1.5 mm). Phantoms are generated on matching grids, and both sides go
through the *same* threshold-and-morphology tissue classification, so the
table compares like with like:

* body: largest connected region above -500 HU, holes filled slice by slice;
* lung: body voxels below -400 HU after an opening, eroded once (parenchyma
  and vessels, no chest wall partial volume);
* fat: -190..-30 HU, soft tissue: 0..100 HU, dense: above 200 HU (bone, and
  contrast-enhanced blood in the NIfTI crop) -- all inside the body, outside
  the lungs.

Writes ``docs/figures/phantom_hu_calibration.png`` (histograms) and, with
``--examples``, ``docs/figures/phantom_examples.png``; prints a Markdown table.

Usage::

    python scripts/calibrate_hu.py [--data ../shared/data] [--seeds 3] [--examples]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from inference.phantom import Phantom, generate_phantom, sample_spec  # noqa: E402

LOGGER = logging.getLogger("calibrate_hu")

#: HU bins of the histograms.
BINS = np.arange(-1100, 1301, 10)
#: Tissue classes: name -> (low, high) HU inside the body and outside the lungs.
TISSUES: dict[str, tuple[float, float]] = {
    "fat": (-190.0, -30.0),
    "soft tissue": (0.0, 100.0),
    "dense (>200)": (200.0, 3072.0),
}
PERCENTILES = (5, 25, 50, 75, 95)


def load_dicom_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU volume ``[slice, row, column]`` and spacing of a CT series folder."""
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    volume = np.stack([
        d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        for d in slices
    ])
    ps = [float(v) for v in slices[0].PixelSpacing]
    first, second = (float(d.ImagePositionPatient[2]) for d in slices[:2])
    thickness = abs(second - first)
    return volume, (thickness, ps[0], ps[1])


def load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU volume ``[slice, row, column]`` (axial slices) and spacing of a NIfTI file."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
    zooms = image.header.get_zooms()[:3]
    return data, (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def classify(volume: np.ndarray, padding_below: float = -1500.0) -> dict[str, np.ndarray]:
    """Tissue masks by the threshold-and-morphology procedure (module docstring)."""
    valid = volume > padding_below
    body = (volume > -500) & valid
    labels, count = ndimage.label(body)
    if count:
        sizes = ndimage.sum(body, labels, range(1, count + 1))
        body = labels == (1 + int(np.argmax(sizes)))
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    lung = ndimage.binary_opening(body & (volume < -400) & valid, iterations=1)
    masks = {"lung": ndimage.binary_erosion(lung, iterations=1)}
    rest = body & ~ndimage.binary_dilation(lung, iterations=1)
    for name, (low, high) in TISSUES.items():
        masks[name] = rest & (volume >= low) & (volume < high)
    masks["body"] = body
    return masks


def statistics(volume: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Mean and percentiles of each class."""
    out = {}
    for name in ("lung", *TISSUES):
        values = volume[masks[name]]
        if values.size == 0:
            out[name] = [float("nan")] * (1 + len(PERCENTILES))
        else:
            out[name] = [float(values.mean()), *np.percentile(values, PERCENTILES).tolist()]
    return out


def noise_estimate(volume: np.ndarray, mask: np.ndarray) -> float:
    """Median local standard deviation (3x3 in-plane) over eroded ``mask``."""
    core = ndimage.binary_erosion(mask, iterations=2)
    mean = ndimage.uniform_filter(volume, size=(1, 3, 3))
    square = ndimage.uniform_filter(volume * volume, size=(1, 3, 3))
    local = np.sqrt(np.clip(square - mean * mean, 0, None))
    return float(np.median(local[core])) if core.any() else float("nan")


def phantom_on_grid(seed: int, shape: tuple[int, int, int],
                    spacing: tuple[float, float, float]) -> Phantom:
    """A no-pneumonia phantom sampled on the grid of a real volume (centred)."""
    spec = sample_spec(seed, "normal")
    spec = dataclasses.replace(
        spec, matrix=max(shape[1], shape[2]), pixel_spacing=spacing[1],
        slice_thickness=spacing[0], n_slices=shape[0],
        scan_center_z=spec.lung_height * 0.55, distractor=None,
    )
    return generate_phantom(spec)


def compare(name: str, volume: np.ndarray, spacing: tuple[float, float, float],
            seeds: list[int]) -> tuple[dict, dict, np.ndarray, np.ndarray, float, float]:
    """Statistics of a real volume and of phantoms on its grid."""
    real_masks = classify(volume)
    real_stats = statistics(volume, real_masks)
    real_noise = noise_estimate(volume, real_masks["fat"])
    pooled_values: dict[str, list[np.ndarray]] = {}
    phantom_volumes = []
    noises = []
    for seed in seeds:
        phantom = phantom_on_grid(seed, volume.shape, spacing)
        hu = phantom.hu.astype(np.float32)
        masks = classify(hu)
        for key in ("lung", *TISSUES, "body"):
            pooled_values.setdefault(key, []).append(hu[masks[key]])
        phantom_volumes.append(hu[masks["body"]])
        noises.append(noise_estimate(hu, masks["fat"]))
    phantom_stats = {}
    for key in ("lung", *TISSUES):
        values = np.concatenate(pooled_values[key])
        phantom_stats[key] = [float(values.mean()), *np.percentile(values, PERCENTILES).tolist()]
    LOGGER.info("%s: compared with %d phantoms", name, len(seeds))
    return (real_stats, phantom_stats, volume[real_masks["body"]],
            np.concatenate(phantom_volumes), real_noise, float(np.median(noises)))


def print_table(title: str, real: dict, phantom: dict, real_noise: float,
                phantom_noise: float) -> None:
    """Markdown table of the statistics."""
    head = "| tissue | source | mean | " + " | ".join(f"p{p}" for p in PERCENTILES) + " |"
    print(f"\n**{title}**\n")
    print(head)
    print("|" + "---|" * (3 + len(PERCENTILES)))
    for key in real:
        for source, stats in (("real", real[key]), ("phantom", phantom[key])):
            cells = " | ".join(f"{v:.0f}" for v in stats)
            print(f"| {key} | {source} | {cells} |")
    print(f"| noise (fat, local std) | real / phantom | {real_noise:.0f} / {phantom_noise:.0f} |"
          + " |" * len(PERCENTILES))


def plot_histograms(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    """Density histograms, real vs phantom, one panel per real volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2))
    for axis, (title, real, phantom) in zip(np.atleast_1d(axes), panels):
        axis.hist(real, bins=BINS, density=True, histtype="step", lw=1.4, label="real CT")
        axis.hist(phantom, bins=BINS, density=True, histtype="step", lw=1.4,
                  label="phantoms (same grid)")
        axis.set_yscale("log")
        axis.set_xlabel("HU (voxels inside the body)")
        axis.set_ylabel("density")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
        for x, text in ((-850, "lung"), (-95, "fat"), (45, "muscle")):
            axis.axvline(x, color="0.7", lw=0.6, ls=":")
            axis.text(x, axis.get_ylim()[1] * 0.5, text, fontsize=7, rotation=90, color="0.4")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(path: Path, seed: int) -> None:
    """Axial and coronal views of one phantom of each class (lung window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ("covid19", "cap", "no_pneumonia")
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 8.5))
    for column, label in enumerate(labels):
        spec = sample_spec(seed + column, label)
        if label == "cap":  # show the typical lobar pattern with air bronchograms
            candidate = seed
            while not (spec.cap_pattern == "lobar" and spec.air_bronchograms):
                candidate += 1
                spec = sample_spec(candidate, label)
        spec = spec.with_grid(matrix=384, slice_thickness=2.0)
        spec = dataclasses.replace(spec, scan_center_z=spec.lung_height * 0.5)
        phantom = generate_phantom(spec)
        mask = phantom.lesion_mask
        k = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else phantom.hu.shape[0] // 2
        i = int(np.argmax(mask.sum(axis=(0, 2)))) if mask.any() else phantom.hu.shape[1] // 2
        spacing = phantom.geometry.spacing
        views = (
            (phantom.hu[k], mask[k], 1.0, f"{label}: axial"),
            (phantom.hu[::-1, i, :], mask[::-1, i, :], spacing[0] / spacing[2],
             f"{label}: coronal"),
        )
        for row, (image, outline, aspect, title) in enumerate(views):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=-1200, vmax=250, aspect=aspect)
            if outline.any():
                axis.contour(outline, levels=[0.5], colors="red", linewidths=0.6)
            axis.set_title(title + (f" ({', '.join(sorted(set(phantom.lesions)))})"
                                    if phantom.lesions else ""), fontsize=9)
            axis.axis("off")
    fig.suptitle("Synthetic phantoms (384 x 384, 2 mm; lesion mask outlined in red). "
                 "Research use only.", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="folder of the shared real CT (default ../shared/data)")
    parser.add_argument("--seeds", type=int, default=3, help="phantoms per comparison")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "figures",
                        help="figure folder (default docs/figures)")
    parser.add_argument("--examples", action="store_true",
                        help="also draw docs/figures/phantom_examples.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = list(range(500, 500 + args.seeds))

    dicom, dicom_spacing = load_dicom_series(args.data / "ct" / "lung-pet-ct-dx-a0002")
    nifti, nifti_spacing = load_nifti(args.data / "nifti" / "chest-ct-crop.nii.gz")
    panels = []
    for title, volume, spacing in (
        ("Lung-PET-CT-Dx A0002 (non-contrast, 0.65 mm, 8 mm slices)", dicom, dicom_spacing),
        ("chest-ct-crop.nii.gz (contrast, 1.5 mm crop)", nifti, nifti_spacing),
    ):
        real, phantom, real_body, phantom_body, real_noise, phantom_noise = compare(
            title, volume, spacing, seeds)
        print_table(title, real, phantom, real_noise, phantom_noise)
        panels.append((title, real_body, phantom_body))
    plot_histograms(panels, args.out / "phantom_hu_calibration.png")
    print(f"\nwrote {args.out / 'phantom_hu_calibration.png'}")
    if args.examples:
        plot_examples(args.out / "phantom_examples.png", seed=3)
        print(f"wrote {args.out / 'phantom_examples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
