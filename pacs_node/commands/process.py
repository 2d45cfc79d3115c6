"""``deepsc-node process``: the whole pipeline on a folder of DICOM files, offline.

No network, no node database: the files are grouped by series, each series
goes through the same selection rules and the same
:class:`~pacs_node.processing.SeriesProcessor` as in the node, and each
processed series gets ``OUT/<SeriesInstanceUID>/seg.dcm``, ``sr.dcm``,
``outline.dcm`` (the planar-only report, when a lesion is significant), the
"AI summary" Secondary Capture images ``sc-1.dcm`` ... ``sc-<n>.dcm`` (key
images, then the summary page), ``gsps.dcm`` with ``--gsps``, and
``result.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.cli import add_settings_arguments, settings_from_args
from config.errors import SettingsError

LOGGER = logging.getLogger(__name__)

__all__ = ["SeriesFiles", "find_series", "process", "register"]

EPILOG = """\
examples:
  deepsc-node process ./study --out ./results
  deepsc-node process /data/ct --out /tmp/out --model-dir /opt/models/site-1.0
  deepsc-node process ./study --out ./results --set selection.min_slices=10
  deepsc-node process ./study --out ./results --gsps

Every file under DIR (recursively; hidden files and DICOMDIR skipped) is read;
files are grouped by Series Instance UID. Each series that passes the
selection rules (settings [selection]) is turned into a volume, run through
the model and encoded; the command writes OUT/<series-uid>/seg.dcm (DICOM-SEG),
sr.dcm (TID 1500 SR), outline.dcm (TID 1500 SR with only the lesion
outlines, which OHIF draws; when a lesion is >= 0.5 mL), sc-1.dcm ... sc-N.dcm (the "AI summary" Secondary
Capture series: key images with the lesion outline, then the summary page),
gsps.dcm with --gsps (presentation state with the lesion outlines) and
result.json (class probabilities, lesion measurements, object UIDs). Other
series are listed with the reason they were skipped. Exit status 0 when at
least one series was processed, 1 otherwise, 2 for invalid settings.

RESEARCH USE ONLY, NOT FOR DIAGNOSIS.
"""


@dataclass
class SeriesFiles:
    """The files of one series found under the input folder.

    Parameters
    ----------
    series_instance_uid: str
        The series' UID (valid).
    paths: list[pathlib.Path]
        Its files.
    headers: list[pydicom.Dataset]
        Their headers, same order.
    """

    series_instance_uid: str
    paths: list[Path] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.name != "DICOMDIR":
            yield path


def find_series(root: Path) -> tuple[list[SeriesFiles], int, int]:
    """Group the DICOM files under `root` by Series Instance UID.

    Parameters
    ----------
    root: pathlib.Path
        A folder (searched recursively) or one file.

    Returns
    -------
    tuple[list[SeriesFiles], int, int]
        The series (sorted by UID), the number of files that are not DICOM,
        and the number of DICOM files without a valid Series Instance UID.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from pacs_node.receive import validate_uid

    series: dict[str, SeriesFiles] = {}
    not_dicom = 0
    invalid = 0
    for path in _files(root):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except (OSError, InvalidDicomError, EOFError, ValueError, TypeError, KeyError,
                    IndexError, struct.error):
                not_dicom += 1
                continue
            if "SOPClassUID" not in header:
                not_dicom += 1
                continue
        except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, struct.error):
            not_dicom += 1
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "")
        ok, _ = validate_uid(uid)
        if not ok:
            invalid += 1
            continue
        entry = series.setdefault(uid, SeriesFiles(uid))
        entry.paths.append(path)
        entry.headers.append(header)
    return [series[uid] for uid in sorted(series)], not_dicom, invalid


def _write_outputs(out: Path, processed: Any) -> Path:
    from pacs_node.processing import dataset_bytes

    folder = out / processed.series_instance_uid
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for kind, dataset in processed.datasets():
        if kind == "sc":
            name = f"sc-{int(dataset.InstanceNumber)}.dcm"
            files.setdefault(kind, []).append(name)
        else:
            name = f"{kind}.dcm"
            files[kind] = name
        (folder / name).write_bytes(dataset_bytes(dataset))
    summary = processed.summary()
    summary["files"] = files
    (folder / "result.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return folder


def process(args: argparse.Namespace) -> int:
    """Process every candidate series under ``args.input`` (the ``process`` command).

    Parameters
    ----------
    args: argparse.Namespace
        Parsed command line (``input``, ``out``, settings flags).

    Returns
    -------
    int
        0 when at least one series was processed, 1 otherwise, 2 for
        invalid settings.
    """
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"deepsc-node process: invalid settings\n{exc}", file=sys.stderr)
        return 2
    from inference.errors import InferenceError, ManifestError, ModelLoadError, VolumeError
    from pacs_node.logs import setup_logging
    from pacs_node.processing import SeriesProcessor
    from pacs_node.selection import select_series

    setup_logging(settings.log_level)
    root: Path = args.input
    if not root.exists():
        print(f"deepsc-node process: {root} does not exist", file=sys.stderr)
        return 1
    found, not_dicom, invalid = find_series(root)
    print(f"{root}: {len(found)} series", flush=True)
    if not_dicom:
        print(f"  {not_dicom} file(s) are not DICOM: skipped")
    if invalid:
        print(
            f"  {invalid} DICOM file(s) without a valid Series Instance UID: skipped "
            "(no result is written against a missing or invalid UID)"
        )
    processor: SeriesProcessor | None = None
    processed_count = 0
    for index, entry in enumerate(found, start=1):
        prefix = f"[{index}/{len(found)}] series {entry.series_instance_uid}"
        selection = select_series(entry.headers, settings.selection, uid_root=settings.uid_root)
        if not selection.candidate:
            print(f"{prefix}: skipped: {selection.reason}", flush=True)
            continue
        print(f"{prefix}: {selection.reason}: processing", flush=True)
        if processor is None:
            try:
                processor = SeriesProcessor.from_settings(
                    settings, presentation_state=bool(getattr(args, "gsps", False))
                )
            except (ModelLoadError, ManifestError) as exc:
                print(
                    f"deepsc-node process: cannot load the model in {settings.model_dir}: {exc}",
                    file=sys.stderr,
                )
                return 1
        try:
            result = processor.process_files(entry.paths)
        except VolumeError as exc:
            print(f"{prefix}: rejected: {exc}", flush=True)
            continue
        except (InferenceError, ValueError) as exc:
            LOGGER.error("series %s failed", entry.series_instance_uid, exc_info=True)
            print(f"{prefix}: failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        folder = _write_outputs(args.out, result)
        processed_count += 1
        analysis = result.result.analysis
        print(
            f"{prefix}: {result.result.predicted_class} "
            f"(p={max(result.result.class_probabilities):.3f}), {len(analysis.lesions)} lesion(s), "
            f"{analysis.total_lesion_volume_ml:.1f} mL -> {folder}",
            flush=True,
        )
    print(
        f"processed {processed_count} of {len(found)} series into {args.out}. "
        "Research use only, not for diagnosis.",
        flush=True,
    )
    return 0 if processed_count else 1


def register(subparsers: Any) -> None:
    """Add the ``process`` command to the ``deepsc-node`` parser.

    Parameters
    ----------
    subparsers: argparse._SubParsersAction
        From ``ArgumentParser.add_subparsers()``.
    """
    parser = subparsers.add_parser(
        "process",
        help="run the pipeline on a folder of DICOM files (offline)",
        description="Run selection, model and encoding on the DICOM files of a folder "
        "and write SEG, SR, the AI summary Secondary Capture images (and with --gsps a "
        "presentation state) and result.json per series. No network, no node database.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "input", type=Path, metavar="DIR", help="folder of DICOM files (or one file)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="OUT", help="output folder (created)"
    )
    parser.add_argument(
        "--gsps",
        action="store_true",
        help="also write gsps.dcm: a Grayscale Softcopy Presentation State with the "
        "lesion outlines on the source images (lung window)",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=process)
