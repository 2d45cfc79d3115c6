"""CUDA latency of the model and of the whole inference pipeline, against CPU in the same run.

Needs onnxruntime-gpu and a CUDA GPU; without one it says so and exits 2
(CI has no GPU: this script is run by hand on a GPU machine).

Usage (from the repository root)::

    python bench/cuda.py [--model inference/bundled_model] [--slices 300]
        [--threads 2] [--repeat 20] [--json]

Two measurements, each on ``CUDAExecutionProvider`` and, as the baseline, on
``CPUExecutionProvider`` with ``--threads`` intra-op threads (the node's
default CPU setting), through :func:`inference.session.load_model`:

* **model**: ``session.run`` on the model-grid input that
  ``bench/inference.py`` uses (:func:`inference.export.parity_input`),
  median and 90th percentile over ``--repeat`` calls after three warm-ups
  (the first CUDA call builds the cuDNN plans);
* **pipeline**: a phantom CT series of ``--slices`` 512 x 512 slices
  (1 mm, the series of issue 6) is written as DICOM files, then read
  (:func:`inference.volume.read_series`), stacked into an HU volume
  (:func:`inference.volume.build_volume`) and run through
  :meth:`inference.pipeline.InferencePipeline.run` (resampling, model,
  resampling back, threshold, lung mask, lesion analysis): wall time of each
  stage, best of ``--pipeline-repeat`` runs after one warm-up.

The provider that really ran is read back from the session
(``session.get_providers()``); a CUDA request that fell back to CPU is an
error, not a figure. The CUDA and CPU results of the pipeline are compared
(class probabilities, lesion-mask Dice) so that a fast wrong answer shows.

Research use only, not for diagnosis.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.timing import median_p90, time_calls  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "inference" / "bundled_model"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: The two sides of every measurement: result key -> execution provider.
SIDES = {"cuda": CUDA, "cpu": CPU}


def _session(model_dir: Path, provider: str, threads: int) -> Any:
    from inference.session import load_model

    session = load_model(model_dir, providers=list(dict.fromkeys([provider, CPU])),
                         intra_op_threads=threads, inter_op_threads=1)
    if session.provider != provider:
        raise RuntimeError(f"asked for {provider}, the session runs {session.provider}")
    return session


def model_latency(model_dir: Path, threads: int, repeat: int) -> dict[str, Any]:
    """Median latency of ``session.run`` on CUDA and on CPU, same input."""
    from inference.export import parity_input
    from inference.manifest import Manifest

    x = parity_input(Manifest.load(model_dir), seed=7, matrix=192)
    result: dict[str, Any] = {"input_shape": list(x.shape)}
    for side, provider in SIDES.items():
        session = _session(model_dir, provider, threads)
        calls = repeat if side == "cuda" else max(3, repeat // 4)
        result[side] = median_p90(time_calls(lambda: session.run(x), calls, warmup=3))
    result["ratio_cuda_over_cpu"] = result["cuda"]["median_s"] / result["cpu"]["median_s"]
    return result


def _write_series(slices: int, folder: Path) -> list[Path]:
    from inference.phantom import generate_phantom, sample_spec, write_dicom_series

    spec = sample_spec(300, "covid19").with_grid(
        matrix=512, n_slices=slices, slice_thickness=1.0 if slices <= 400 else 0.5
    )
    return list(write_dicom_series(generate_phantom(spec), folder))


def _pipeline_once(files: list[Path], pipeline: Any) -> tuple[dict[str, float], Any]:
    from inference.volume import build_volume, read_series

    stages: dict[str, float] = {}
    start = time.perf_counter()
    datasets = read_series(files)
    stages["read"] = time.perf_counter() - start
    mark = time.perf_counter()
    volume = build_volume(datasets)
    stages["volume"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result = pipeline.run(volume.hu, volume.geometry)
    stages["pipeline"] = time.perf_counter() - mark
    stages.update({k: float(v) for k, v in result.timings.to_dict().items()})
    stages["total"] = time.perf_counter() - start
    return stages, result


def pipeline_latency(model_dir: Path, slices: int, threads: int,
                     repeat: int) -> dict[str, Any]:
    """Read + volume + :class:`InferencePipeline` on a phantom series, CUDA and CPU."""
    import numpy as np

    from inference.evaluate import dice_score
    from inference.pipeline import InferencePipeline

    out: dict[str, Any] = {"slices": slices}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        files = _write_series(slices, Path(tmp))
        out["phantom_seconds"] = time.perf_counter() - start
        for side, provider in SIDES.items():
            pipeline = InferencePipeline(_session(model_dir, provider, threads))
            _pipeline_once(files, pipeline)
            runs = [_pipeline_once(files, pipeline) for _ in range(repeat)]
            best, results[side] = min(runs, key=lambda item: item[0]["total"])
            out[side] = {k: round(v, 4) for k, v in best.items()}
    cuda, cpu = results["cuda"], results["cpu"]
    dice = dice_score(cuda.lesion_mask, cpu.lesion_mask)
    out["agreement"] = {
        "max_abs_class_probability_difference": float(
            np.max(np.abs(np.asarray(cuda.class_probabilities)
                          - np.asarray(cpu.class_probabilities)))
        ),
        "lesion_mask_dice": 1.0 if dice is None else dice,
        "lesion_voxels_cuda": int(cuda.lesion_mask.sum()),
        "lesion_voxels_cpu": int(cpu.lesion_mask.sum()),
    }
    out["ratio_cuda_over_cpu"] = out["cuda"]["total"] / out["cpu"]["total"]
    return out


def _gpu_name() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              check=False, timeout=30)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory")
    parser.add_argument("--slices", type=int, default=300, help="slices of the phantom series")
    parser.add_argument("--threads", type=int, default=2, help="CPU baseline intra-op threads")
    parser.add_argument("--repeat", type=int, default=20, help="timed model calls on CUDA")
    parser.add_argument("--pipeline-repeat", type=int, default=3,
                        help="timed pipeline runs per provider (best is kept)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        print(f"bench/cuda.py: this onnxruntime ({ort.__version__}) has no {CUDA}; "
              "install onnxruntime-gpu on a machine with a CUDA GPU", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"gpu": _gpu_name(), "onnxruntime": ort.__version__,
                              "model": str(args.model), "cpu_threads": args.threads}
    try:
        report["model_latency"] = model_latency(args.model, args.threads, args.repeat)
        report["pipeline"] = pipeline_latency(args.model, args.slices, args.threads,
                                              args.pipeline_repeat)
    except RuntimeError as exc:
        print(f"bench/cuda.py: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    m, p = report["model_latency"], report["pipeline"]
    print(f"GPU {report['gpu']}  onnxruntime {report['onnxruntime']}  model {args.model}")
    print(f"model, input {m['input_shape']}: CUDA {m['cuda']['median_s'] * 1e3:.1f} ms "
          f"(p90 {m['cuda']['p90_s'] * 1e3:.1f}), CPU {args.threads} threads "
          f"{m['cpu']['median_s'] * 1e3:.1f} ms; ratio CUDA / CPU {m['ratio_cuda_over_cpu']:.3f}")
    print(f"pipeline, {p['slices']} x 512 x 512 series (seconds):")
    stages = list(p['cuda'])
    print(f"  {'stage':<12}{'CUDA':>9}{'CPU':>9}")
    for stage in stages:
        print(f"  {stage:<12}{p['cuda'][stage]:>9.3f}{p['cpu'][stage]:>9.3f}")
    print(f"  ratio CUDA / CPU (total): {p['ratio_cuda_over_cpu']:.3f}")
    print(f"  CUDA vs CPU: lesion-mask Dice {p['agreement']['lesion_mask_dice']:.4f}, max class "
          f"probability difference {p['agreement']['max_abs_class_probability_difference']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
