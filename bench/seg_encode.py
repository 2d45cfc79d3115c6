"""SEG encoding of a 300-slice result: highdicom's own check (baseline) vs. the node's path.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 /work/venv/bin/python bench/seg_encode.py [--slices 300] [--repeat 3]

Both paths encode the same result with the same constructor arguments
(:func:`pacs_node.results.seg.segmentation_arguments`, so the same UIDs):

* ``baseline``: the previous code: the whole ``bool`` stack written into a
  fresh array and ``highdicom.seg.Segmentation``, whose overlap check sums the
  stack to ``uint64``;
* ``node``: :func:`pacs_node.results.seg.stack_masks` (only the slices that
  hold a segment are written) and
  :class:`pacs_node.results.seg_overlap.BinarySegmentation` (streaming check).

The two objects are then written as Part 10 files and compared byte for byte
(Content Date/Time and Contribution DateTime copied across first: they
come from the clock). Runs
alternate baseline / node so that other load on the CPU hits both; the
figure is the ratio of the medians. The masks are the phantom's
(``bench/turnaround.py``'s series: seed 300, covid19) or, with
``--synthetic``, box lungs and two spheres on a real CT header.

Research use only, not for diagnosis.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from inference.manifest import Manifest  # noqa: E402
from inference.result import InferenceResult  # noqa: E402
from pacs_node.results.common import phi_safe_warnings  # noqa: E402
from pacs_node.results.seg import (  # noqa: E402
    LESION_ROLE,
    RIGHT_LUNG_ROLE,
    PlannedSegment,
    plan_segments,
    segmentation_arguments,
    stack_masks,
)
from pacs_node.results.seg_overlap import BinarySegmentation  # noqa: E402
from pacs_node.results.uids import adopt_dimension_organization_uid  # noqa: E402
from pacs_node.results.warmup import load_standard_tables  # noqa: E402
from tests.results_fixtures import (  # noqa: E402
    CT_SERIES,
    UID_ROOT,
    make_manifest,
    same_part10_but_clock,
    synthetic_result,
    synthetic_series,
)

SHARED_DATA = Path(os.environ.get("DEEPSC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
Encoder = Callable[
    [InferenceResult, Sequence[PlannedSegment], dict[str, Any]], hd.seg.Segmentation
]
#: Target of issue 6, item 4.
TARGET_S = 2.0
#: Dimension Organization UID given to both objects (build_segmentation draws one).
DIMENSION_ORGANIZATION_UID = UID_ROOT + ".1"


def baseline_stack(result: InferenceResult, plan: Sequence[PlannedSegment]) -> np.ndarray:
    """The previous ``_stack_masks``: every plane of every segment written."""
    stacked = np.empty((len(plan), *result.geometry.shape), dtype=np.bool_)
    for index, planned in enumerate(plan):
        if planned.role == LESION_ROLE:
            stacked[index] = result.lesion_mask
        else:
            label = 1 if planned.role == RIGHT_LUNG_ROLE else 2
            np.equal(result.lung_mask, label, out=stacked[index])
    return np.moveaxis(stacked.view(np.uint8), 0, -1)


def encode_baseline(
    result: InferenceResult, plan: Sequence[PlannedSegment], arguments: dict[str, Any]
) -> hd.seg.Segmentation:
    """highdicom called the way the node did before issue 6."""
    with phi_safe_warnings():
        seg = hd.seg.Segmentation(
            pixel_array=baseline_stack(result, plan), **arguments
        )
    adopt_dimension_organization_uid(seg, DIMENSION_ORGANIZATION_UID)
    return seg


def encode_node(
    result: InferenceResult, plan: Sequence[PlannedSegment], arguments: dict[str, Any]
) -> hd.seg.Segmentation:
    """The node's path (what :func:`pacs_node.results.build_segmentation` runs)."""
    with phi_safe_warnings():
        seg = BinarySegmentation(
            pixel_array=stack_masks(result, plan), **arguments
        )
    adopt_dimension_organization_uid(seg, DIMENSION_ORGANIZATION_UID)
    return seg


def phantom_case(slices: int) -> tuple[list[Dataset], InferenceResult, Manifest]:
    """The turnaround phantom through the bundled model (headers only kept)."""
    import tempfile

    from inference.phantom import generate_phantom, sample_spec, write_dicom_series
    from inference.pipeline import InferencePipeline
    from inference.volume import build_volume, read_series

    spec = sample_spec(300, "covid19").with_grid(matrix=512, n_slices=slices, slice_thickness=1.0)
    with tempfile.TemporaryDirectory(prefix="deepsc-seg-encode-") as tmp:
        files = write_dicom_series(generate_phantom(spec), Path(tmp))
        volume = build_volume(read_series(files))
    pipeline = InferencePipeline.from_model_dir(
        REPO_ROOT / "inference" / "bundled_model", intra_op_threads=1
    )
    result = pipeline.run_volume(volume)
    headers = []
    for ds in volume.datasets:
        header = copy.copy(ds)
        del header.PixelData
        headers.append(header)
    return headers, result, pipeline.manifest


def timed(
    encode: Encoder,
    result: InferenceResult,
    plan: Sequence[PlannedSegment],
    arguments: dict[str, Any],
) -> tuple[float, hd.seg.Segmentation]:
    """Seconds one encoding takes, and the object."""
    started = time.perf_counter()
    value = encode(result, plan, arguments)
    return time.perf_counter() - started, value


def main(argv: list[str] | None = None) -> int:
    """Run both paths ``--repeat`` times, print the times, the ratio and the check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synthetic", action="store_true",
                        help="box lungs and spheres on a real CT header instead of the phantom")
    args = parser.parse_args(argv)
    load_standard_tables()
    if args.synthetic:
        datasets = synthetic_series(SHARED_DATA / CT_SERIES, args.slices)
        result = synthetic_result(datasets)
        manifest = make_manifest()
    else:
        datasets, result, manifest = phantom_case(args.slices)
    plan = plan_segments(manifest)
    arguments = segmentation_arguments(datasets, result, manifest, uid_root=UID_ROOT)
    print(f"{args.slices} slices of {result.geometry.shape[1]}x{result.geometry.shape[2]}: "
          f"{int(result.lesion_mask.sum())} lesion voxels, "
          f"{int(np.count_nonzero(result.lung_mask))} lung voxels")
    # Warm-up (imports, highdicom's module tables) on a few slices, not timed.
    encode_node(result, plan, copy.deepcopy(arguments))
    encoders: tuple[tuple[str, Encoder], ...] = (
        ("baseline", encode_baseline), ("node", encode_node)
    )
    times: dict[str, list[float]] = {"baseline": [], "node": []}
    objects: dict[str, hd.seg.Segmentation] = {}
    for run in range(args.repeat):
        for name, encode in encoders:
            own = copy.deepcopy(arguments)  # not timed: highdicom may keep references
            seconds, objects[name] = timed(encode, result, plan, own)
            times[name].append(seconds)
            print(f"run {run + 1} {name:<8} {seconds:6.2f} s "
                  f"({int(objects[name].NumberOfFrames)} frames)")
    baseline_s = statistics.median(times["baseline"])
    node_s = statistics.median(times["node"])
    identical = same_part10_but_clock(objects["node"], objects["baseline"])
    print(f"median baseline (highdicom sum check, full stack) {baseline_s:6.2f} s")
    print(f"median node     (streaming check, occupied slices) {node_s:6.2f} s")
    print(f"ratio node / baseline: {node_s / baseline_s:.2f} (speed-up x{baseline_s / node_s:.1f})")
    print(f"target: SEG encoding of {args.slices} slices <= {TARGET_S:.1f} s: "
          f"{'met' if node_s <= TARGET_S else 'NOT met'} ({node_s:.2f} s)")
    print(f"outputs identical (Part 10 bytes): {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
