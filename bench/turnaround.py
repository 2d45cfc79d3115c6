"""Turnaround: Orthanc sends a chest CT phantom, how long until SEG + SR are in Orthanc.

Starts a real Orthanc and a real ``deepsc-node serve`` (bundled model, CPU,
SQLite) on loopback, generates a phantom series (default 300 slices of
512 x 512), uploads it to Orthanc, asks Orthanc to C-STORE it to the node
(REST ``/modalities/{id}/store``) and waits until the SEG and the SR are
stored in Orthanc. The node's database gives the breakdown:

* ``transfer``: Orthanc's send (first to last instance received by the node);
* ``quiet timer``: last instance -> series complete (``quiet_time``);
* ``queue``: complete -> a worker starts;
* ``read``, ``volume``, ``preprocess``, ``inference``, ``postprocess``,
  ``analysis``, ``encode``: the worker's stages (result summary);
* ``write + record``: the rest of the worker's time (files and rows);
* ``send``: written -> SEG and SR acknowledged by Orthanc (exporter).

The same phantom first goes through a node running ``--baseline-rev`` (the
code before issue 6, extracted with ``git archive``), then through a node
running the working tree, each with its own Orthanc; both breakdowns, the
ratio and the target (<= 10 s) are printed.

Usage::

    python bench/turnaround.py                 # 300 x 512 x 512
    python bench/turnaround.py --slices 1000 --slice-thickness 0.5

Research use only, not for diagnosis.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.revisions import extract_revision  # noqa: E402
from config import Destination  # noqa: E402
from inference.phantom import generate_phantom, sample_spec, write_dicom_series  # noqa: E402
from storage import (  # noqa: E402
    create_database_engine,
    exports_for_job,
    get_series,
    job_events,
    jobs_for_series,
    make_session_factory,
    result_objects_for_job,
    result_summary,
)
from tests import e2e_fixtures  # noqa: E402
from tests.e2e_fixtures import NodeProcess  # noqa: E402
from tests.peers import Orthanc  # noqa: E402


#: The commit before issue 6: the baseline the figures are compared with.
BASELINE_REV = "b6fdf47"


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


#: Issue 6, item 2: last instance -> SEG and SR stored, quiet timer excluded.
TARGET_S = 10.0
STAGES = [
    "read", "volume", "preprocess", "inference", "postprocess", "analysis", "render", "encode"
]


@contextlib.contextmanager
def _running(node: NodeProcess, code_root: Path) -> Iterator[NodeProcess]:
    """Start ``node`` on the code in ``code_root`` and stop it on exit.

    NodeProcess runs ``python -m pacs_node`` in ``e2e_fixtures.REPO_ROOT``;
    it is pointed at ``code_root`` while the process starts.
    """
    saved_root = e2e_fixtures.REPO_ROOT
    try:
        e2e_fixtures.REPO_ROOT = code_root
        try:
            node.start()
        finally:
            e2e_fixtures.REPO_ROOT = saved_root
        yield node
    finally:
        node.stop()


def measure(
    files: list[Path], header: pydicom.Dataset, workdir: Path, code_root: Path,
    args: argparse.Namespace,
) -> tuple[float, list[tuple[str, float]], dict[str, object]]:
    """One run: Orthanc sends the series to a node running the code in ``code_root``.

    Returns the turnaround (last instance -> SEG and SR acknowledged by Orthanc,
    quiet timer excluded),
    the breakdown rows and the result summary.
    """
    with Orthanc(workdir / "orthanc") as orthanc:
        destination = Destination(
            name="pacs", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
        )
        settings: dict[str, object] = {"quiet_time": args.quiet_time}
        if args.model_dir:
            settings["model_dir"] = str(Path(args.model_dir).resolve())
        # The baseline revision predates the [http] table (issue 4): leave it out there.
        tables: dict[str, dict[str, Any] | None] | None = (
            None if code_root == REPO_ROOT else {"http": None}
        )
        node = NodeProcess(
            workdir / "node", destinations=[destination], settings=settings, tables=tables
        )
        with _running(node, code_root):
            orthanc.add_modality("deepsc", node.ae_title, "127.0.0.1", node.port)
            orthanc.upload(files)
            (series_id,) = [
                s["ID"] for s in orthanc.find_series(header.StudyInstanceUID)
                if s["MainDicomTags"]["Modality"] == "CT"
            ]
            started = time.monotonic()
            orthanc.send_to_modality("deepsc", [series_id])

            def arrived() -> bool:
                found = orthanc.series_modalities(header.StudyInstanceUID)
                return bool(found.get("SEG")) and bool(found.get("SR"))

            orthanc.wait_for(arrived, args.timeout, interval=0.1, what="SEG and SR")
            done = time.monotonic()
            engine = create_database_engine(node.database_url)
            factory = make_session_factory(engine)
            deadline = time.monotonic() + args.timeout
            while True:  # the rest (outline SR, SC images) is sent after SEG and SR
                with factory() as session:
                    series = get_series(session, header.SeriesInstanceUID)
                    (job,) = jobs_for_series(session, header.SeriesInstanceUID)
                    events = {e.to_state.value: e.at for e in job_events(session, job.id)}
                    summary = result_summary(session, job.id) or {}
                    kinds = {o.id: o.kind for o in result_objects_for_job(session, job.id)}
                    delivered = [
                        e.delivered_at for e in exports_for_job(session, job.id)
                        if kinds.get(e.result_object_id) in ("seg", "sr")
                    ]
                if "exported" in events and len(delivered) == 2 and all(delivered):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job not exported within {args.timeout} s: {events}")
                time.sleep(0.2)
            engine.dispose()
            seg_sr_stored = max(d for d in delivered if d is not None)
    timings = summary.get("timings_s", {})
    assert isinstance(timings, dict)
    worker = _seconds(events["written"], events["running"])
    rows = [
        ("Orthanc send call -> SEG and SR in Orthanc", done - started),
        ("transfer (first -> last instance at the node)",
         _seconds(series.last_received_at, series.first_received_at)),
        ("quiet timer (last instance -> complete)",
         _seconds(events["complete"], series.last_received_at)),
        ("queue (complete -> running)", _seconds(events["running"], events["complete"])),
        *[(f"  {name}", float(timings.get(name, 0.0))) for name in STAGES],
        ("  write + record", worker - sum(float(timings.get(n, 0.0)) for n in STAGES)),
        ("worker total (running -> written)", worker),
        ("send SEG + SR (written -> both acknowledged)",
         _seconds(seg_sr_stored, events["written"])),
        ("send all (written -> exported: + outline, SC)",
         _seconds(events["exported"], events["written"])),
    ]
    # Last instance -> SEG and SR stored in Orthanc (acknowledged), quiet timer excluded.
    turnaround = _seconds(seg_sr_stored, series.last_received_at) - _seconds(
        events["complete"], series.last_received_at
    )
    return turnaround, rows, summary


def main(argv: list[str] | None = None) -> int:
    """Run the baseline revision and the working tree on one phantom; print both."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slice-thickness", type=float, default=1.0)
    parser.add_argument("--quiet-time", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--model-dir", default=None, help="default: the bundled model")
    parser.add_argument("--baseline-rev", default=BASELINE_REV,
                        help=f"git revision run first as the baseline (default {BASELINE_REV}, "
                        "the code before issue 6); 'none' skips it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="deepsc-turnaround-") as tmp:
        workdir = Path(tmp)
        spec = sample_spec(args.seed, "covid19").with_grid(
            matrix=args.matrix, n_slices=args.slices, slice_thickness=args.slice_thickness
        )
        phantom = generate_phantom(spec)
        files = write_dicom_series(phantom, workdir / "ct")
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        print(f"phantom: {len(files)} slices of {header.Rows}x{header.Columns}, "
              f"{phantom.hu.nbytes / 1e6:.0f} MB of pixels")
        del phantom
        runs: dict[str, tuple[float, list[tuple[str, float]], dict[str, object]]] = {}
        if args.baseline_rev != "none":
            root = extract_revision(args.baseline_rev, workdir / "baseline-code")
            runs[f"baseline {args.baseline_rev}"] = measure(
                files, header, workdir / "baseline", root, args
            )
        runs["node (working tree)"] = measure(files, header, workdir / "node-run", REPO_ROOT, args)
    names = list(runs)
    print(f"{'stage':<50}" + "".join(f"{name[:22]:>24}" for name in names))
    for index, (label, _) in enumerate(runs[names[-1]][1]):
        print(f"  {label:<48}" + "".join(f"{runs[n][1][index][1]:22.2f} s" for n in names))
    print(f"  {'last instance -> SEG + SR stored, quiet excluded':<48}"
          + "".join(f"{runs[n][0]:22.2f} s" for n in names))
    turnaround, _, summary = runs[names[-1]]
    if len(names) > 1:
        print(f"ratio node / baseline (turnaround): {turnaround / runs[names[0]][0]:.2f}")
    print(f"target: last instance -> SEG and SR stored, quiet timer excluded, <= {TARGET_S:g} s: "
          f"{'met' if turnaround <= TARGET_S else 'NOT met'} ({turnaround:.2f} s)")
    print(f"predicted class: {summary.get('predicted_class')}, provider: {summary.get('provider')}")
    return 0 if turnaround <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
