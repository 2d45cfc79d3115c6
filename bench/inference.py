"""ONNX Runtime vs torch (CPU) latency and peak memory of the model, one run.

Usage (from the repository root)::

    /work/venv/bin/python bench/inference.py [--model inference/bundled_model]
        [--checkpoint RUN/last.pt] [--kernels full|factorised] [--threads 2]
        [--repeat 10] [--profile]

Both runtimes get the same input: a phantom scan prepared for the model grid
(:func:`inference.export.parity_input`). ONNX Runtime runs ``model.onnx`` of
the model directory through :func:`inference.session.load_model` (CPU
provider, ``intra_op_threads = --threads``). torch runs the same network:
the ``--checkpoint`` if given, otherwise the architecture recorded in the
manifest (``training.model_config``) with seeded weights (the amount of
computation does not depend on the weight values), in ``eval`` mode under
``torch.inference_mode`` with ``torch.set_num_threads(--threads)``.

Each runtime runs in its own child process so that its peak resident memory
(``ru_maxrss``, including the interpreter and the loaded model) is its own.
``--kernels`` compares architectures instead of runtimes of one model: it
builds the manifest's levels with full ``3x3x3`` or (2+1)D blocks
(:class:`inference.model.ConvBlock`), seeded weights, exports that network
with :func:`inference.export.export_model` (parity check included) into a
temporary model directory, and times it the same way.

The result is one table: median and 90th-percentile latency over ``--repeat``
calls after two warm-up calls, the ratio ONNX Runtime / torch of the
medians (target <= 0.6), and the peak memory of each process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.timing import median_p90, time_calls  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "inference" / "bundled_model"


def _input(model_dir: Path) -> Any:
    from inference.export import parity_input
    from inference.manifest import Manifest

    return parity_input(Manifest.load(model_dir), seed=7, matrix=192)


def check_same_network(checkpoint_config: dict[str, Any],
                       manifest_config: dict[str, Any] | None, checkpoint: Path,
                       model_dir: Path) -> None:
    """Refuse to time a checkpoint against another network's ONNX graph.

    ONNX Runtime runs ``model_dir``'s graph, torch the checkpoint's network;
    the ratio means something only when they are the same architecture
    (``classifier_grad_scale`` acts in training only and is ignored).

    Raises
    ------
    SystemExit
        With a message that says what to pass instead.
    """
    import dataclasses

    from inference.model import ModelConfig

    if manifest_config is None:
        return
    mine, theirs = (
        dataclasses.replace(ModelConfig.from_dict(c), classifier_grad_scale=1.0)
        for c in (checkpoint_config, manifest_config)
    )
    if mine != theirs:
        raise SystemExit(
            f"{checkpoint} is not the network of {model_dir} (channels {list(mine.channels)} "
            f"against {list(theirs.channels)}, factorised {mine.factorised} against "
            f"{theirs.factorised}): export the checkpoint with 'deepsc-node export' and pass "
            "that directory as --model"
        )


def worker(runtime: str, model_dir: Path, checkpoint: Path | None, threads: int,
           repeat: int) -> dict[str, object]:
    """Time one runtime in this process; returns latencies and peak RSS."""
    import numpy as np

    x = _input(model_dir)
    if runtime == "onnxruntime":
        from inference.session import load_model

        session = load_model(model_dir, providers=["CPUExecutionProvider"],
                             intra_op_threads=threads, inter_op_threads=1)
        times = time_calls(lambda: session.run(x), repeat)
        version = __import__("onnxruntime").__version__
    else:
        import torch

        from inference.manifest import Manifest
        from inference.model import ModelConfig, ProbabilityModel, build_model

        torch.set_num_threads(threads)
        manifest = Manifest.load(model_dir)
        if checkpoint is not None:
            from inference.export import load_checkpoint_network

            network, _ = load_checkpoint_network(checkpoint)
        else:
            torch.manual_seed(0)
            network = build_model(ModelConfig.from_dict(manifest.training["model_config"]))
        # the same graph as model.onnx, the lesion gate included
        model = ProbabilityModel(network.eval(), gate_class=manifest.lesion_gate).eval()
        tensor = torch.from_numpy(np.ascontiguousarray(x))

        def call() -> None:
            with torch.inference_mode():
                model(tensor)

        times = time_calls(call, repeat)
        version = torch.__version__
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "runtime": runtime,
        "version": version,
        "times_s": times,
        **median_p90(times),
        "peak_rss_mib": peak_kib / 1024.0,
        "input_shape": list(x.shape),
    }


def profile_ops(model_dir: Path, threads: int,
                repeat: int) -> dict[str, list[tuple[str, float]]]:
    """ONNX Runtime kernel time (ms per call), largest first, from one profiled
    session: per operator type (``"op"``) and per node (``"node"``)."""
    import collections
    import tempfile

    import onnxruntime as ort

    x = _input(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model_dir / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(repeat):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    per_node: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ms = event["dur"] / 1e3 / repeat
            per_op[event["args"]["op_name"]] += ms
            per_node[event["name"][: -len("_kernel_time")]] += ms
    return {key: [(name, float(ms)) for name, ms in counts.most_common()]
            for key, counts in (("op", per_op), ("node", per_node))}


def seeded_model_dir(model_dir: Path, kernels: str, out: Path) -> Path:
    """Export the manifest's architecture with ``kernels`` blocks and seeded weights.

    Returns the model directory written in ``out``; its manifest records the
    architecture, so the torch worker builds the same network.
    """
    import dataclasses

    import torch

    from inference.export import export_model, parity_input
    from inference.manifest import Manifest
    from inference.model import ModelConfig, build_model

    manifest = Manifest.load(model_dir)
    config = dataclasses.replace(
        ModelConfig.from_dict(manifest.training["model_config"]),
        factorised=kernels == "factorised",
    )
    manifest = dataclasses.replace(
        manifest, training={**manifest.training, "model_config": config.to_dict()}
    )
    torch.manual_seed(0)
    network = build_model(config).eval()
    export_model(network, out, manifest, parity_tensor=parity_input(manifest, seed=7, matrix=96),
                 overwrite=True)
    return out


def main() -> int:
    """Run both runtimes in child processes and print the comparison."""
    parser = argparse.ArgumentParser(description="ONNX Runtime vs torch CPU latency.")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--kernels", choices=("full", "factorised"),
                        help="time the manifest's levels with these blocks and seeded "
                        "weights instead of the model's own graph")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="also print ONNX Runtime's kernel time per operator type and "
                        "its largest nodes")
    parser.add_argument("--worker", choices=("onnxruntime", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.checkpoint, args.threads,
                                args.repeat)))
        return 0
    if args.kernels:
        import tempfile

        if args.checkpoint:
            parser.error("--kernels and --checkpoint exclude each other")
        with tempfile.TemporaryDirectory(prefix="bench-kernels-") as tmp:
            args.model = seeded_model_dir(args.model, args.kernels, Path(tmp) / "model")
            return compare(args)
    return compare(args)


def compare(args: argparse.Namespace) -> int:
    """Time both runtimes on ``args.model`` in child processes and print the table."""
    if args.checkpoint:
        from inference.export import load_checkpoint_network
        from inference.manifest import Manifest

        _, data = load_checkpoint_network(args.checkpoint)
        check_same_network(data["model_config"],
                           Manifest.load(args.model).training.get("model_config"),
                           args.checkpoint, args.model)
    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for runtime in ("onnxruntime", "torch"):
        command = [sys.executable, __file__, "--worker", runtime, "--model", str(args.model),
                   "--threads", str(args.threads), "--repeat", str(args.repeat)]
        if args.checkpoint:
            command += ["--checkpoint", str(args.checkpoint)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        results[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = results["onnxruntime"]["median_s"] / results["torch"]["median_s"]
    if args.json:
        print(json.dumps({"ratio_onnxruntime_over_torch": ratio, **results}, indent=1))
        return 0
    what = f"{args.kernels} blocks, seeded weights" if args.kernels else str(args.model)
    print(f"model: {what}  input {results['torch']['input_shape']}  "
          f"threads {args.threads}  repeat {args.repeat}")
    print(f"{'runtime':<22}{'median ms':>10}{'p90 ms':>10}{'peak RSS MiB':>14}")
    for name, item in results.items():
        label = f"{name} {item['version']}"
        print(f"{label:<22}{item['median_s'] * 1e3:>10.1f}{item['p90_s'] * 1e3:>10.1f}"
              f"{item['peak_rss_mib']:>14.0f}")
    print(f"ratio onnxruntime / torch (median latency): {ratio:.2f}  (target <= 0.60)")
    if args.profile:
        profile = profile_ops(args.model, args.threads, args.repeat)
        ops, nodes = profile["op"], profile["node"]
        total = sum(ms for _, ms in ops)
        print(f"onnxruntime kernel time by operator ({total:.1f} ms per call):")
        for op, ms in ops[:8]:
            print(f"  {op:<20}{ms:>8.1f} ms  {100 * ms / total:5.1f} %")
        total = sum(ms for _, ms in nodes)
        print(f"onnxruntime kernel time by node, largest 8 ({total:.1f} ms per call):")
        for node, ms in nodes[:8]:
            print(f"  {node[-56:]:<56}{ms:>8.1f} ms  {100 * ms / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
