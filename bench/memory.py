"""Peak RSS of processing one CT series, against the model session's own RSS.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 /work/venv/bin/python bench/memory.py [--slices 300 1000] [--compare-rev REV]

For each series size a phantom (512 x 512, seed 300, covid19) is written to a
temporary folder, then two fresh child processes run:

* ``model``: imports, loads the bundled model (ONNX Runtime session) and runs
  it once on a 20-slice series: the baseline, what the node holds anyway;
* ``series``: the same, then :meth:`pacs_node.processing.SeriesProcessor.
  process_files` on the whole series (read, volume, model, post-processing,
  analysis, SEG and SR encoding, and the SEG and SR written as Part 10 bytes,
  as the worker does).

Each child reports its peak resident set (``VmHWM``). The processing figure
is ``series - model``; the target (issue 6, item 3) is <= 3x the series' raw
pixel bytes (2 bytes per voxel). ``--compare-rev`` runs the same children on
another revision of the code (extracted with ``git archive``, e.g. the commit
before issue 6) for a before/after figure.

Research use only, not for diagnosis.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Processing may use this many times the raw pixel bytes (issue 6, item 3).
TARGET_FACTOR = 3.0


def _peak_rss_bytes() -> int:
    """``VmHWM`` of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def child(root: Path, series: Path, warmup: Path, mode: str) -> None:
    """Run in a fresh process; print one JSON line with the peak RSS."""
    sys.path.insert(0, str(root))
    from config.sections import SelectionRules
    from inference.pipeline import InferencePipeline
    from pacs_node.processing import SeriesProcessor, dataset_bytes

    pipeline = InferencePipeline.from_model_dir(
        root / "inference" / "bundled_model", intra_op_threads=1
    )
    processor = SeriesProcessor(
        pipeline, uid_root="1.2.826.0.1.3680043.8.498.77.", series_number_base=9000,
        rules=SelectionRules(),
    )
    processor.process_files(sorted(warmup.iterdir()))
    seconds = 0.0
    if mode == "series":
        started = time.perf_counter()
        processed = processor.process_files(sorted(series.iterdir()))
        for _, dataset in processed.datasets():
            dataset_bytes(dataset)
        seconds = time.perf_counter() - started
    print(json.dumps({"peak_rss": _peak_rss_bytes(), "seconds": seconds}))


def _run_child(root: Path, series: Path, warmup: Path, mode: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(series),
         str(warmup), mode],
        capture_output=True, text=True, env=env, check=False, timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _write_phantom(slices: int, folder: Path) -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from inference.phantom import generate_phantom, sample_spec, write_dicom_series

    spec = sample_spec(300, "covid19").with_grid(
        matrix=512, n_slices=slices, slice_thickness=1.0 if slices <= 400 else 0.5
    )
    files = write_dicom_series(generate_phantom(spec), folder)
    return len(files) * 512 * 512 * 2


def main(argv: list[str] | None = None) -> int:
    """Measure and print one table row per series size and code revision."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[300, 1000])
    parser.add_argument("--compare-rev", default=None,
                        help="also measure this git revision (e.g. the commit before issue 6)")
    parser.add_argument("--child", nargs=4, metavar=("ROOT", "SERIES", "WARMUP", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        root, series, warmup, mode = args.child
        child(Path(root), Path(series), Path(warmup), mode)
        return 0
    met = True
    with tempfile.TemporaryDirectory(prefix="deepsc-memory-") as tmp:
        workdir = Path(tmp)
        roots = {"working tree": REPO_ROOT}
        if args.compare_rev:
            sys.path.insert(0, str(REPO_ROOT))
            from bench.revisions import extract_revision

            roots[args.compare_rev] = extract_revision(args.compare_rev, workdir / "rev")
        warmup = workdir / "warmup"
        _write_phantom(20, warmup)
        print(f"{'code':<14} {'slices':>6} {'raw MB':>7} {'model MB':>9} {'peak MB':>8} "
              f"{'processing MB':>14} {'x raw':>6} {'target':>7} {'s':>6}")
        for slices in args.slices:
            series = workdir / f"ct{slices}"
            raw = _write_phantom(slices, series)
            for name, root in roots.items():
                model = _run_child(root, series, warmup, "model")
                peak = _run_child(root, series, warmup, "series")
                processing = peak["peak_rss"] - model["peak_rss"]
                factor = processing / raw
                ok = factor <= TARGET_FACTOR
                met = met and (ok or name != "working tree")
                print(f"{name[:14]:<14} {slices:>6} {raw / 1e6:7.0f} {model['peak_rss'] / 1e6:9.0f} "
                      f"{peak['peak_rss'] / 1e6:8.0f} {processing / 1e6:14.0f} {factor:6.2f} "
                      f"{'met' if ok else 'NOT met':>7} {peak['seconds']:6.1f}")
            for path in series.iterdir():
                path.unlink()
    print(f"target: processing peak <= {TARGET_FACTOR:g}x raw pixel bytes "
          f"(working tree): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
