"""The ``deepsc-node phantom`` sub-command: write synthetic chest-CT phantoms.

Examples::

    deepsc-node phantom --out /tmp/phantoms --n 6 --seed 1
    deepsc-node phantom --out /tmp/train --n 300 --seed 7 --format nifti --matrix 128
    deepsc-node phantom --out /tmp/bench --n 1 --classes covid --matrix 512 --slices 300

Phantom ``i`` (0-based) has seed ``SEED + i`` and the class
``CLASSES[i % len(CLASSES)]`` (balanced, in the given order). Each phantom
goes to ``OUT/phantom_<seed>_<class>/``: the DICOM series in ``dicom/``
(``CT0001.dcm ...``, ``--format dicom``), ``image.nii.gz``,
``lesion_mask.nii.gz`` and ``lung_mask.nii.gz`` (``--format nifti``) or
both, and always ``phantom.json`` (label, volumes, geometry, spec);
``OUT/index.json`` lists them all. Heavy modules are imported inside
:func:`run_phantom` so that ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

LOGGER = logging.getLogger(__name__)

__all__ = ["register", "run_phantom", "positive_int"]

#: ``--transfer-syntax`` choices and the UIDs they name.
TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    "explicit": "1.2.840.10008.1.2.1",
    "implicit": "1.2.840.10008.1.2",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
}


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1, with a message that names the bad text."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"should be a positive integer, not {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"should be a non-negative integer, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"should be a non-negative integer, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be a positive number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"should be a positive number, not {text!r}")
    return value


def _classes(text: str) -> tuple[str, ...]:
    from inference.phantom.spec import parse_classes

    try:
        return parse_classes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``phantom`` command to the ``deepsc-node`` parser.

    Parameters
    ----------
    subparsers: argparse._SubParsersAction
        The top-level parser's sub-parsers.
    """
    parser = subparsers.add_parser(
        "phantom",
        help="write synthetic chest-CT phantoms (DICOM series or NIfTI + masks)",
        description="Generate synthetic chest-CT phantoms with COVID-19, community-acquired "
        "pneumonia (CAP) or no pneumonia, deterministically from a seed, and write them as "
        "DICOM CT series or NIfTI volumes with lesion and lung masks. Synthetic data for "
        "research use only, not for diagnosis.",
        epilog="Phantom i has seed SEED+i and class CLASSES[i %% len(CLASSES)]. Grid options "
        "left out keep the sampled field of view (matrix x pixel spacing) and scan length "
        "(slices x thickness).",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (created if missing)")
    parser.add_argument("--n", type=positive_int, default=1, metavar="N",
                        help="number of phantoms (default 1)")
    parser.add_argument("--seed", type=_seed, default=0, metavar="S",
                        help="seed of the first phantom (default 0)")
    parser.add_argument("--classes", type=_classes, default=("covid19", "cap", "no_pneumonia"),
                        metavar="LIST",
                        help="comma-separated classes, short names covid,cap,normal or keys "
                        "covid19,cap,no_pneumonia (default all three)")
    parser.add_argument("--format", choices=("dicom", "nifti", "both"), default="dicom",
                        help="output format (default dicom)")
    parser.add_argument("--matrix", type=positive_int, metavar="N",
                        help="rows and columns of each slice")
    parser.add_argument("--pixel-spacing", type=_positive_float, metavar="MM",
                        help="in-plane pixel spacing (mm)")
    parser.add_argument("--slices", type=positive_int, metavar="N", help="number of slices")
    parser.add_argument("--slice-thickness", type=_positive_float, metavar="MM",
                        help="slice thickness = spacing (mm)")
    parser.add_argument("--transfer-syntax", choices=tuple(TRANSFER_SYNTAX_NAMES),
                        default="explicit", help="DICOM transfer syntax (default explicit)")
    parser.add_argument("--uid-root", default=None, metavar="ROOT",
                        help="root of the generated DICOM UIDs, ending with '.'")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_phantom)


def run_phantom(args: argparse.Namespace) -> int:
    """Run ``deepsc-node phantom``; returns the exit status.

    Parameters
    ----------
    args: argparse.Namespace
        Parsed arguments (see :func:`register`).

    Returns
    -------
    int
        0 on success, 2 if the options describe an invalid grid.
    """
    from tqdm import tqdm

    from inference.phantom.dicom import DEFAULT_UID_ROOT, UID_ROOT_PATTERN, write_dicom_series
    from inference.phantom.generator import generate_phantom
    from inference.phantom.nifti import write_nifti
    from inference.phantom.spec import sample_spec

    out: Path = args.out
    classes: tuple[str, ...] = args.classes
    specs = []
    try:
        for index in range(args.n):
            spec = sample_spec(args.seed + index, classes[index % len(classes)])
            if any(v is not None for v in (args.matrix, args.pixel_spacing, args.slices,
                                           args.slice_thickness)):
                spec = spec.with_grid(matrix=args.matrix, pixel_spacing=args.pixel_spacing,
                                      slice_thickness=args.slice_thickness,
                                      n_slices=args.slices)
            specs.append(spec)
        uid_root = args.uid_root or DEFAULT_UID_ROOT
        if not UID_ROOT_PATTERN.match(uid_root) or len(uid_root) > 40:
            raise ValueError(f'option "--uid-root" should be dotted digits ending with ".", '
                             f'got "{uid_root}"')
    except (TypeError, ValueError) as exc:
        print(f"deepsc-node phantom: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    index_entries = []
    bar = tqdm(total=sum(s.n_slices for s in specs), unit="slice", file=sys.stderr,
               disable=args.no_progress, desc="phantoms")
    try:
        for spec in specs:
            bar.set_postfix_str(f"seed {spec.seed} {spec.label}")
            phantom = generate_phantom(spec, progress=bar.update)
            case = out / f"phantom_{spec.seed:04d}_{spec.label}"
            entry: dict[str, object] = {"seed": spec.seed, "label": spec.label,
                                        "path": case.name}
            if args.format in ("dicom", "both"):
                files = write_dicom_series(
                    phantom, case / "dicom",
                    transfer_syntax=TRANSFER_SYNTAX_NAMES[args.transfer_syntax],
                    uid_root=uid_root,
                )
                entry["dicom"] = str(files[0].parent.relative_to(out))
                entry["instances"] = len(files)
            if args.format in ("nifti", "both"):
                paths = write_nifti(phantom, case)
                entry.update({key: str(p.relative_to(out)) for key, p in paths.items()})
            else:
                summary = case / "phantom.json"
                summary.write_text(json.dumps(phantom.summary(), indent=2))
                entry["summary"] = str(summary.relative_to(out))
            entry.update(
                lesion_volume_ml=round(phantom.lesion_volume_ml, 3),
                involvement_percent=round(100.0 * phantom.involvement, 3),
            )
            index_entries.append(entry)
    finally:
        bar.close()
    (out / "index.json").write_text(json.dumps({
        "generator": "deepsc-node phantom",
        "intended_use": "Synthetic data for research use only, not for diagnosis.",
        "phantoms": index_entries,
    }, indent=2))
    LOGGER.info("wrote %d phantoms to %s", len(specs), out)
    return 0
