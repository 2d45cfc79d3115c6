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

Usage::

    python bench/turnaround.py                 # 300 x 512 x 512
    python bench/turnaround.py --slices 1000 --slice-thickness 0.5

Research use only, not for diagnosis.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pydicom

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from config import Destination  # noqa: E402
from inference.phantom import generate_phantom, sample_spec, write_dicom_series  # noqa: E402
from storage import (  # noqa: E402
    create_database_engine,
    get_series,
    job_events,
    jobs_for_series,
    make_session_factory,
    result_summary,
)
from tests.e2e_fixtures import NodeProcess  # noqa: E402
from tests.peers import Orthanc  # noqa: E402


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark once and print the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--slice-thickness", type=float, default=1.0)
    parser.add_argument("--quiet-time", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--model-dir", default=None, help="default: the bundled model")
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
        with Orthanc(workdir / "orthanc") as orthanc:
            destination = Destination(
                name="pacs", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
            )
            settings: dict[str, object] = {"quiet_time": args.quiet_time}
            if args.model_dir:
                settings["model_dir"] = str(Path(args.model_dir).resolve())
            node = NodeProcess(workdir / "node", destinations=[destination], settings=settings)
            with node:
                orthanc.add_modality("deepsc", node.ae_title, "127.0.0.1", node.port)
                orthanc.upload(files)
                (series_id,) = [
                    s["ID"] for s in orthanc.find_series(header.StudyInstanceUID)
                    if s["MainDicomTags"]["Modality"] == "CT"
                ]
                started = time.monotonic()
                orthanc.send_to_modality("deepsc", [series_id])
                sent = time.monotonic()

                def arrived() -> bool:
                    found = orthanc.series_modalities(header.StudyInstanceUID)
                    return bool(found.get("SEG")) and bool(found.get("SR"))

                orthanc.wait_for(arrived, args.timeout, interval=0.1, what="SEG and SR")
                done = time.monotonic()
                time.sleep(1.0)  # let the node record the export
                engine = create_database_engine(node.database_url)
                with make_session_factory(engine)() as session:
                    series = get_series(session, header.SeriesInstanceUID)
                    (job,) = jobs_for_series(session, header.SeriesInstanceUID)
                    events = {e.to_state.value: e.at for e in job_events(session, job.id)}
                    summary = result_summary(session, job.id) or {}
                engine.dispose()
        timings = summary.get("timings_s", {})
        worker = _seconds(events["written"], events["running"])
        stages = ["read", "volume", "preprocess", "inference", "postprocess", "analysis", "encode"]
        rows = [
            ("transfer (first -> last instance at the node)",
             _seconds(series.last_received_at, series.first_received_at)),
            ("quiet timer (last instance -> complete)",
             _seconds(events["complete"], series.last_received_at)),
            ("queue (complete -> running)", _seconds(events["running"], events["complete"])),
            *[(f"  {name}", float(timings.get(name, 0.0))) for name in stages],
            ("  write + record", worker - sum(float(timings.get(n, 0.0)) for n in stages)),
            ("worker total (running -> written)", worker),
            ("send (written -> exported)", _seconds(events["exported"], events["written"])),
        ]
        print(f"Orthanc REST send call returned after {sent - started:.2f} s")
        print(f"Orthanc send -> SEG and SR in Orthanc: {done - started:.2f} s")
        turnaround = _seconds(events["exported"], series.last_received_at) - _seconds(
            events["complete"], series.last_received_at
        )
        print(f"last instance -> results exported, quiet timer excluded: {turnaround:.2f} s")
        for name, value in rows:
            print(f"  {name:<48} {value:8.2f} s")
        print(f"predicted class: {summary.get('predicted_class')}, provider: {summary.get('provider')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
