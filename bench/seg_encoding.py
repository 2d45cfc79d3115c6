"""Time the DICOM-SEG and SR encoding of a 300-slice 512x512 result.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 /work/venv/bin/python bench/seg_encoding.py [--slices 300] [--repeat 3]

The source series is the real CT header of ``../shared/data/ct/
lung-pet-ct-dx-a0002`` (metadata only, no pixel data) repeated at 1 mm steps;
the result has two box lungs over 3/4 of the slices and two spherical
lesions, so about 2 x 226 lung frames plus the lesion frames are encoded.
The first call in a process pays imports and caches ("cold"); the next ones
are what a long-running worker sees ("warm").
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pacs_node.results import build_measurement_report, build_segmentation  # noqa: E402
from tests.results_fixtures import (  # noqa: E402
    CT_SERIES,
    UID_ROOT,
    make_manifest,
    synthetic_result,
    synthetic_series,
)

SHARED_DATA = Path(os.environ.get("DEEPSC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def main() -> int:
    """Run the benchmark and print one line per timed call."""
    parser = argparse.ArgumentParser(description="Time SEG and SR encoding.")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    datasets = synthetic_series(SHARED_DATA / CT_SERIES, args.slices)
    result = synthetic_result(datasets)
    manifest = make_manifest()
    for run in range(args.repeat):
        started = time.perf_counter()
        seg = build_segmentation(datasets, result, manifest, uid_root=UID_ROOT)
        seg_s = time.perf_counter() - started
        started = time.perf_counter()
        build_measurement_report(datasets, seg, result, manifest, uid_root=UID_ROOT)
        sr_s = time.perf_counter() - started
        print(
            f"{'cold' if run == 0 else 'warm'}: SEG {args.slices} slices of "
            f"{datasets[0].Rows}x{datasets[0].Columns} -> {int(seg.NumberOfFrames)} frames "
            f"in {seg_s:.2f} s; SR in {sr_s:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
