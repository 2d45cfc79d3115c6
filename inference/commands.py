"""The ``train``, ``evaluate``, ``export`` and ``gate`` sub-commands of ``deepsc-node``.

``train``, ``export`` and ``gate`` need the ``train`` extra (torch, onnx); ``evaluate`` runs
with onnxruntime alone. Heavy modules are imported inside the command
functions so that ``deepsc-node --help`` stays fast and torch-free.

Examples::

    deepsc-node train --phantoms 720 --phantom-seed 1 --phantom-matrix 192 \\
        --out runs/joint                      # the bundled model (4800 steps)
    deepsc-node train --data /data/site_dataset --out runs/site
    deepsc-node export --checkpoint runs/joint/last.pt --out inference/bundled_model
    deepsc-node evaluate --seed 20240 --n 60  # the bundled model on held-out phantoms
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from inference.bundled_model import BUNDLED_MODEL_DIR
from inference.phantom.commands import positive_int

LOGGER = logging.getLogger(__name__)

__all__ = ["register", "run_train", "run_export", "run_evaluate"]

#: Defaults of ``deepsc-node train`` (those of :class:`inference.train.TrainConfig`,
#: repeated here so that ``--help`` does not import torch).
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 4800,
    "batch_size": 2,
    "lr": 1e-2,
    "warmup_steps": 100,
    "checkpoint_every": 200,
    "eval_every": 400,
    "val_cases": 24,
    "coupling_weight": 0.2,
    "coupling_ramp": (0.2, 0.5),
}



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``export`` to the ``deepsc-node`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train the joint model (needs the train extra: torch)",
        description="Train the joint segmentation + classification network on a dataset "
        "directory (NIfTI + dataset.json, see docs/model.md) or on synthetic phantoms. "
        "Cases are cached once on the model grid; training resumes from OUT/last.pt.",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="dataset directory with dataset.json")
    source.add_argument("--phantoms", type=positive_int, metavar="N",
                        help="generate N phantoms (balanced classes)")
    train.add_argument("--phantom-seed", type=int, default=1,
                       help="run seed of the phantoms (default 1)")
    train.add_argument("--phantom-matrix", type=positive_int, default=192,
                       help="in-plane matrix of the training phantoms (default 192; the field "
                       "of view is kept)")
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--cache", type=Path, help="cache directory (default OUT/cache)")
    train.add_argument("--task", choices=("joint", "segmentation", "classification"),
                       default="joint")
    train.add_argument("--steps", type=positive_int, default=TRAIN_DEFAULTS["steps"])
    train.add_argument("--batch-size", type=positive_int,
                       default=TRAIN_DEFAULTS["batch_size"])
    train.add_argument("--lr", type=float, default=TRAIN_DEFAULTS["lr"],
                       help="peak learning rate (AdamW, cosine decay)")
    train.add_argument("--warmup-steps", type=int, default=TRAIN_DEFAULTS["warmup_steps"])
    train.add_argument("--seed", type=int, default=0, help="seed of weights and sampling")
    train.add_argument("--threads", type=positive_int, default=2)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--checkpoint-every", type=positive_int,
                       default=TRAIN_DEFAULTS["checkpoint_every"])
    train.add_argument("--eval-every", type=int, default=TRAIN_DEFAULTS["eval_every"],
                       help="validate every N steps (0: at the end)")
    train.add_argument("--val-cases", type=int, default=TRAIN_DEFAULTS["val_cases"])
    train.add_argument("--coupling-weight", type=float,
                       default=TRAIN_DEFAULTS["coupling_weight"])
    train.add_argument("--coupling-ramp", type=float, nargs=2, metavar=("START", "FULL"),
                       default=list(TRAIN_DEFAULTS["coupling_ramp"]),
                       help="fractions of the steps between which the coupling weight ramps up")
    weighting = train.add_mutually_exclusive_group()
    weighting.add_argument("--fixed-weights", action="store_true",
                           help="fixed task weights (1/2 each) instead of learned uncertainty "
                                "weights")
    weighting.add_argument("--task-weights", type=float, nargs=2, metavar=("SEG", "CLS"),
                           help="fixed weights of the segmentation and classification losses "
                                "(joint task) instead of learned uncertainty weights")
    train.add_argument("--classifier-grad-scale", type=float, default=1.0, metavar="F",
                       help="factor in [0, 1] on the classification gradient into the shared "
                            "encoder (joint task; default 1 = full sharing)")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                       help="bf16 autocast where the hardware has it (auto), or force one")
    train.add_argument("--no-resume", action="store_true", help="ignore OUT/last.pt")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--grid", type=positive_int, nargs=3, metavar=("D", "H", "W"))
    train.add_argument("--spacing", type=float, nargs=3, metavar=("SLICE", "ROW", "COL"))
    train.add_argument("--channels", type=positive_int, nargs="+",
                       help="encoder channels per level, full resolution first "
                       "(default 8 16 48 96 192)")
    train.add_argument("--strides", type=stride_triple, nargs="+", metavar="DxHxW",
                       help="downsampling stride into each level after the first "
                       "(default 1x2x2 2x2x2 2x2x2 2x2x2)")
    train.add_argument("--blocks", type=positive_int, nargs="+",
                       help="convolution blocks per level (default 1 2 2 3 3)")
    train.add_argument("--kernels", choices=("full", "factorised"), default="full",
                       help="full: 3x3x3 convolutions (default, the bundled model's); "
                       "factorised: (2+1)D blocks, an in-plane 1x3x3 then a through-plane "
                       "3x1x1 convolution (ONNX Runtime runs them in about half the time of "
                       "3x3x3 blocks; see docs/model.md)")
    train.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="processes that build the cache (default: one per core, at most "
                            "4; each holds one scan in memory)")
    train.add_argument("--cache-only", action="store_true",
                       help="build the cache and stop")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="evaluate model directories on held-out phantoms (onnxruntime only)",
        description="Generate N full-resolution phantoms from SEED (balanced classes) and "
        "run each model through the node's runtime path; lesion Dice on the source grid, "
        "accuracy, sensitivity/specificity, one-vs-rest AUC, confusion matrix.",
    )
    evaluate.add_argument("--model", type=Path, action="append",
                          help="model directory (repeatable; default: the bundled model)")
    evaluate.add_argument("--name", action="append",
                          help="display name of each --model, in order")
    evaluate.add_argument("--seed", type=int, required=True,
                          help="phantom run seed; use one not used in training")
    evaluate.add_argument("--n", type=positive_int, default=60)
    evaluate.add_argument("--matrix", type=positive_int,
                          help="phantom matrix (default: the generator's 512)")
    evaluate.add_argument("--threads", type=positive_int, default=2)
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of text")
    evaluate.add_argument("--out-json", type=Path, help="write metrics and cases to this file")
    evaluate.add_argument("--confusion-png", type=Path,
                          help="write the (first model's) confusion matrix PNG here")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(func=run_evaluate)

    export = subparsers.add_parser(
        "export",
        help="export a training checkpoint to a model directory (needs torch)",
        description="Write model.onnx (opset 17, self-contained) and manifest.json; fail "
        "when ONNX Runtime and torch disagree by more than the tolerance on a phantom.",
    )
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, help="model directory")
    export.add_argument("--model-name", default="DeepSC-Node phantom model")
    export.add_argument("--model-version", default="1.0.0")
    export.add_argument("--tolerance", type=float, default=1e-4)
    export.add_argument("--parity-seed", type=int, default=7)
    export.add_argument("--overwrite", action="store_true")
    export.add_argument(
        "--lesion-gate", action=argparse.BooleanOptionalAction, default=None,
        help="multiply the lesion map by 1 - P(no pneumonia) inside the graph, so that a "
        "scan the classifier calls no pneumonia gets no lesions (default: on for joint "
        "checkpoints; single-task checkpoints have no classifier to gate with)",
    )
    export.set_defaults(func=run_export)

    gate = subparsers.add_parser(
        "gate",
        help="add the lesion gate to an exported joint model directory (needs the train extra)",
        description="Copy a joint model directory exported without the lesion gate, with "
        "the gate written into its ONNX graph: the lesion map times 1 - P(no pneumonia), "
        "the same product 'export --lesion-gate' writes. For models whose training "
        "checkpoint is not at hand; the weights are not touched. Fails, writing nothing, "
        "when the gated graph's outputs are not the source's lesion map times the factor.",
        epilog="example: deepsc-node gate --model models/site --out models/site-gated "
        "--model-version 1.0.1",
    )
    gate.add_argument("--model", type=Path, required=True, help="source model directory")
    gate.add_argument("--out", type=Path, required=True,
                      help="output model directory (may be the source, with --overwrite)")
    gate.add_argument("--model-version", required=True,
                      help="version of the gated model (must differ from the source's)")
    gate.add_argument("--parity-seed", type=int, default=7)
    gate.add_argument("--overwrite", action="store_true")
    gate.set_defaults(func=run_gate)


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def stride_triple(text: str) -> tuple[int, int, int]:
    """Parse a ``DxHxW`` stride such as ``2x2x2`` (argparse type)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a stride like 2x2x2, not {text!r}")
    return (values[0], values[1], values[2])


def architecture(args: argparse.Namespace) -> Any:
    """The :class:`~inference.model.ModelConfig` that ``train``'s options ask for.

    Options left out take the bundled model's values when the number of
    levels is the bundled model's; with another number of levels the strides
    default to ``1x2x2`` then ``2x2x2``, the blocks to 1 then 2 per level.

    Raises
    ------
    ValueError
        If the options disagree (for example 4 strides for 3 levels).
    """
    from inference.model import ModelConfig

    default = ModelConfig()
    channels = tuple(args.channels) if args.channels else default.channels
    n_levels = len(channels)
    if args.strides:
        strides = tuple(args.strides)
    elif n_levels == len(default.channels):
        strides = default.strides
    else:
        strides = ((1, 2, 2),) + ((2, 2, 2),) * (n_levels - 2)
    if args.blocks:
        blocks = tuple(args.blocks)
    elif n_levels == len(default.channels):
        blocks = default.blocks
    else:
        blocks = (1,) + (2,) * (n_levels - 1)
    if len(strides) != n_levels - 1 or len(blocks) != n_levels:
        raise ValueError(
            f"{n_levels} levels need {n_levels - 1} --strides and {n_levels} --blocks, "
            f"not {len(strides)} and {len(blocks)}"
        )
    return ModelConfig(
        task=args.task, channels=channels, strides=strides, blocks=blocks,
        factorised=args.kernels == "factorised",
        classifier_grad_scale=args.classifier_grad_scale,
    )


def run_train(args: argparse.Namespace) -> int:
    """``deepsc-node train``: build the cache, then train (resumable)."""
    _configure_logging()
    from inference.dataset import (
        DatasetError,
        build_cache,
        dataset_case_loaders,
        default_cache_workers,
        iter_phantom_cases,
    )
    from inference.export import DEFAULT_GRID_SHAPE, DEFAULT_SPACING_MM, build_manifest
    from inference.train import TrainConfig, train

    try:
        model_config = architecture(args)
        config = TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every,
            val_cases=args.val_cases,
            coupling_weight=args.coupling_weight,
            coupling_ramp=tuple(args.coupling_ramp),
            adaptive_weights=not args.fixed_weights and args.task_weights is None,
            task_weights=None if args.task_weights is None else tuple(args.task_weights),
            augment=not args.no_augment,
            precision=args.precision,
        )
    except ValueError as exc:
        print(f"deepsc-node train: {exc}", file=sys.stderr)
        return 2
    grid = tuple(args.grid) if args.grid else DEFAULT_GRID_SHAPE
    spacing = tuple(args.spacing) if args.spacing else DEFAULT_SPACING_MM
    manifest = build_manifest(grid_shape=grid, spacing_mm=spacing)
    cache_dir = args.cache or args.out / "cache"
    if args.data is not None:
        source: dict[str, Any] = {"kind": "dataset", "directory": str(args.data.resolve())}
        try:
            cases: Any = dataset_case_loaders(args.data)
        except DatasetError as exc:
            print(f"deepsc-node train: {exc}", file=sys.stderr)
            return 1
        total = len(cases)
    else:
        source = {
            "kind": "phantoms",
            "seed": args.phantom_seed,
            "n": args.phantoms,
            "matrix": args.phantom_matrix,
        }
        cases = iter_phantom_cases(
            args.phantom_seed, range(args.phantoms), matrix=args.phantom_matrix
        )
        total = args.phantoms
    start = time.perf_counter()
    try:
        from tqdm import tqdm

        with tqdm(total=total, desc="cache", unit="case", disable=args.no_progress,
                  mininterval=0.5 if sys.stderr.isatty() else 60.0) as bar:
            build_cache(cases, cache_dir, manifest, source, progress=lambda n, c: bar.update(1),
                        workers=args.workers or default_cache_workers())
    except DatasetError as exc:
        print(f"deepsc-node train: {exc}", file=sys.stderr)
        return 1
    LOGGER.info("cache %s ready in %.0f s", cache_dir, time.perf_counter() - start)
    if args.cache_only:
        return 0
    result = train(
        cache_dir,
        args.out,
        model_config,
        config,
        resume=not args.no_resume,
        progress=not args.no_progress,
        extra={"command": " ".join(sys.argv)},
    )
    print(
        json.dumps(
            {
                "checkpoint": str(result.checkpoint),
                "steps": result.steps,
                "train_seconds": round(result.train_seconds, 1),
                "validation": result.validation[-1] if result.validation else None,
            },
            indent=1,
        )
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``deepsc-node export``: checkpoint -> model directory, with the parity check."""
    _configure_logging()
    from inference.export import ExportError, build_manifest, export_model, load_checkpoint_network
    from inference.export import parity_input
    from inference.train import select_threshold

    try:
        network, checkpoint = load_checkpoint_network(args.checkpoint)
    except ExportError as exc:
        print(f"deepsc-node export: {exc}", file=sys.stderr)
        return 1
    # Default: gate what can be gated; an explicit gate on a single-task
    # checkpoint is refused by export_model (ValueError below).
    gate = args.lesion_gate
    if gate is None:
        gate = checkpoint["model_config"]["task"] == "joint"
    manifest = build_manifest(
        grid_shape=tuple(checkpoint["grid"]["shape"]),
        spacing_mm=tuple(checkpoint["grid"]["spacing_mm"]),
        clip_hu=tuple(checkpoint["intensity"]["clip_hu"]),
        model_name=args.model_name,
        model_version=args.model_version,
        training=training_summary(checkpoint),
        lesion_threshold=select_threshold(checkpoint.get("threshold_scores") or {}),
        lesion_gate="no_pneumonia" if gate else None,
    )
    try:
        report = export_model(
            network,
            args.out,
            manifest,
            parity_tensor=parity_input(manifest, seed=args.parity_seed),
            tolerance=args.tolerance,
            overwrite=args.overwrite,
        )
    except (ExportError, FileExistsError, ValueError) as exc:
        print(f"deepsc-node export: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=1))
    return 0


def run_gate(args: argparse.Namespace) -> int:
    """``deepsc-node gate``: model directory -> the same model with the lesion gate."""
    _configure_logging()
    from inference.errors import InferenceError
    from inference.gate import add_lesion_gate

    try:
        report = add_lesion_gate(
            args.model,
            args.out,
            model_version=args.model_version,
            overwrite=args.overwrite,
            parity_seed=args.parity_seed,
        )
    except (InferenceError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"deepsc-node gate: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=1))
    return 0


def training_summary(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``training`` object from a checkpoint."""
    data = checkpoint.get("data", {})
    source = data.get("source", {})
    if source.get("kind") == "phantoms":
        description = (
            f"{source.get('n')} synthetic chest-CT phantoms (deepsc-node generator, seed "
            f"{source.get('seed')}, {source.get('matrix')} matrix, balanced COVID-19 / CAP / "
            "no pneumonia); no patient data"
        )
    else:
        description = f"dataset directory {source.get('directory', '?')}"
    config = checkpoint.get("train_config", {})
    validation = checkpoint.get("validation") or [{}]
    return {
        "data": description,
        "task": checkpoint["model_config"]["task"],
        "train_cases": data.get("train_cases"),
        "validation_cases": data.get("val_cases"),
        "steps": checkpoint.get("step"),
        "batch_size": config.get("batch_size"),
        "train_seconds": round(float(checkpoint.get("train_seconds", 0.0)), 1),
        "seed": config.get("seed"),
        "loss": _loss_summary(checkpoint["model_config"]["task"], config),
        "validation_model_grid": validation[-1],
        "lesion_threshold_calibration": checkpoint.get("threshold_scores", {}),
        "precision": _training_precision(checkpoint, config),
        "framework": f"torch {checkpoint.get('torch_version', '?')}",
        "model_config": checkpoint["model_config"],
        "command": _portable_command(checkpoint.get("extra", {}).get("command", "")),
    }


def _portable_command(command: str) -> str:
    """The recorded training command without the path of the ``deepsc-node`` script
    (``/opt/venv/bin/deepsc-node train ...`` -> ``deepsc-node train ...``)."""
    program, _, rest = command.partition(" ")
    if program.endswith("/deepsc-node"):
        return f"deepsc-node {rest}" if rest else "deepsc-node"
    return command


def _loss_summary(task: str, config: dict[str, Any]) -> str:
    """The manifest's one-line description of the training loss."""
    if task == "segmentation":
        return "segmentation only: Dice + BCE"
    if task == "classification":
        return "classification only: cross-entropy"
    fixed = config.get("task_weights")
    if fixed is not None:
        weights = f"fixed weights {fixed[0]:g} and {fixed[1]:g} on"
    elif config.get("adaptive_weights") is False:
        weights = "fixed"
    else:
        weights = "uncertainty-weighted"
    coupling = config.get("coupling_weight")
    text = f"task-aware: {weights} (Dice+BCE) and CE"
    if coupling == 0:
        return text + ", no coupling term"
    if coupling is None:
        return text + " plus lesion/class coupling"
    return text + f" plus lesion/class coupling (weight {coupling:g})"


def _training_precision(checkpoint: dict[str, Any], config: dict[str, Any]) -> str:
    """``"bf16"`` (autocast forward pass) or ``"fp32"``; ``"not recorded"`` for
    checkpoints written before train recorded it, unless the run forced one."""
    recorded = checkpoint.get("precision")
    if recorded in ("bf16", "fp32"):
        return str(recorded)
    forced = config.get("precision")
    return str(forced) if forced in ("bf16", "fp32") else "not recorded"


def run_evaluate(args: argparse.Namespace) -> int:
    """``deepsc-node evaluate``: metrics of one or more models on held-out phantoms."""
    _configure_logging()
    from inference.errors import InferenceError
    from inference.evaluate import (
        evaluate_models,
        format_comparison,
        format_report,
        plot_confusion_matrix,
        write_json,
    )

    models = args.model or [BUNDLED_MODEL_DIR]
    names = args.name or []
    if names and len(names) != len(models):
        print("deepsc-node evaluate: give one --name per --model", file=sys.stderr)
        return 2
    try:
        reports = evaluate_models(
            models, args.seed, args.n, matrix=args.matrix, threads=args.threads,
            progress=not args.no_progress and not args.json,
        )
    except (InferenceError, OSError) as exc:
        print(f"deepsc-node evaluate: {exc}", file=sys.stderr)
        return 1
    if names:
        for report, name in zip(reports.values(), names):
            report.model = name
    reports = {report.model: report for report in reports.values()}
    if args.out_json:
        write_json(reports, args.out_json)
    if args.confusion_png:
        first = next(iter(reports.values()))
        plot_confusion_matrix(first.metrics["confusion_matrix"], first.metrics["class_keys"],
                              args.confusion_png, title=f"{first.model} (seed {args.seed})")
    if args.json:
        print(json.dumps({r.model: r.metrics for r in reports.values()}, indent=1))
        return 0
    for report in reports.values():
        print(format_report(report))
        print()
    if len(reports) > 1:
        print(format_comparison(reports))
    return 0
