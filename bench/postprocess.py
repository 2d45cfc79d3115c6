"""Post-processing and analysis time: the code before issue 6 (baseline) vs. the working tree.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 /work/venv/bin/python bench/postprocess.py [--slices 300] [--repeat 3]

A phantom (512 x 512, seed 300, covid19: ``bench/turnaround.py``'s series)
is written once; the baseline revision (``git archive``, default the commit
before issue 6) and the working tree each run the bundled model on it in
their own child process, ``--repeat`` times, alternating so that other load
on the CPU hits both. Each child reports the pipeline's stage timings
(``preprocess``, ``inference``, ``postprocess``, ``analysis``) and saves its
masks; the parent prints the medians, the ratios and whether the lesion and
lung masks and the lesion analysis are identical.

Research use only, not for diagnosis.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE_REV = "b6fdf47"
STAGES = ("preprocess", "inference", "postprocess", "analysis")


def child(root: Path, series: Path, out: Path) -> None:
    """Run the pipeline once on ``series`` with the code in ``root``; print timings."""
    sys.path.insert(0, str(root))
    from inference.pipeline import InferencePipeline
    from inference.volume import build_volume, read_series

    volume = build_volume(read_series(sorted(series.iterdir())))
    pipeline = InferencePipeline.from_model_dir(
        root / "inference" / "bundled_model", intra_op_threads=1
    )
    result = pipeline.run_volume(volume)
    np.savez(out, lesion=result.lesion_mask, lung=result.lung_mask)
    timings = {name: float(getattr(result.timings, name)) for name in STAGES}
    print(json.dumps({"timings": timings, "analysis": repr(result.analysis)}))


def _run(root: Path, series: Path, out: Path) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(root), str(series),
         str(out)],
        capture_output=True, text=True, env=env, check=False, timeout=1800,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Time both revisions, print medians and ratios, check the outputs agree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "SERIES", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*(Path(a) for a in args.child))
        return 0
    sys.path.insert(0, str(REPO_ROOT))
    from bench.revisions import extract_revision
    from inference.phantom import generate_phantom, sample_spec, write_dicom_series

    with tempfile.TemporaryDirectory(prefix="deepsc-postprocess-") as tmp:
        workdir = Path(tmp)
        spec = sample_spec(300, "covid19").with_grid(
            matrix=512, n_slices=args.slices, slice_thickness=1.0 if args.slices <= 400 else 0.5
        )
        series = workdir / "ct"
        write_dicom_series(generate_phantom(spec), series)
        baseline_root = extract_revision(args.baseline_rev, workdir / "baseline")
        roots = {f"baseline {args.baseline_rev}": baseline_root, "node": REPO_ROOT}
        runs: dict[str, list[dict[str, object]]] = {name: [] for name in roots}
        for _ in range(args.repeat):
            for name, root in roots.items():
                runs[name].append(_run(root, series, workdir / f"{name.split()[0]}.npz"))
        masks = {name: np.load(workdir / f"{name.split()[0]}.npz") for name in roots}
        base, node = list(roots)
        same_masks = all(
            np.array_equal(masks[base][key], masks[node][key]) for key in ("lesion", "lung")
        )
        same_analysis = runs[base][-1]["analysis"] == runs[node][-1]["analysis"]
    print(f"{args.slices} slices of 512x512, {args.repeat} runs each, medians:")
    print(f"{'stage':<12}{base:>18}{node:>10}{'ratio':>8}")
    for stage in STAGES:
        b = statistics.median(float(r["timings"][stage]) for r in runs[base])  # type: ignore[index]
        n = statistics.median(float(r["timings"][stage]) for r in runs[node])  # type: ignore[index]
        print(f"{stage:<12}{b:16.2f} s{n:8.2f} s{n / b:8.2f}")
    print(f"lesion and lung masks identical: {same_masks}; lesion analysis identical: "
          f"{same_analysis}")
    return 0 if same_masks and same_analysis else 1


if __name__ == "__main__":
    sys.exit(main())
