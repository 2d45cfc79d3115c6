"""Evaluation of exported models on held-out phantoms, through the runtime.

:func:`evaluate_models` generates ``n`` full-resolution phantoms (balanced
labels, seeds derived from ``seed`` with
:func:`inference.dataset.case_seed`, so a seed not used for training gives
unseen scans) and runs every model directory on each of them through the
node's own path, the runtime pipeline (:mod:`inference.pipeline`). Dice is
measured on the *source* grid against the phantom's lesion mask.

Metrics (:func:`compute_metrics`)
    * ``dice_mean``: mean over the scans whose reference holds a lesion of
      ``2|P & T| / (|P| + |T|)``;
    * ``dice_pooled``: ``2 sum|P & T| / (sum|P| + sum|T|)`` over all scans;
    * ``false_positive_rate``: share of ``no_pneumonia`` scans with any
      predicted lesion voxel;
    * ``accuracy`` (3 classes), per-class ``sensitivity`` and
      ``specificity`` (one class against the other two), one-vs-rest
      ``auc`` (Mann-Whitney, ties counted one half) and the confusion
      matrix (rows: reference, columns: prediction).

Needs onnxruntime, numpy, scipy (and matplotlib for the PNG); never torch.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.dataset import CLASS_KEYS, Case, phantom_case
from inference.geometry import Geometry

LOGGER = logging.getLogger(__name__)

__all__ = [
    "Prediction",
    "CaseResult",
    "EvaluationReport",
    "Predictor",
    "dice_score",
    "confusion_matrix",
    "auc_one_vs_rest",
    "sensitivity_specificity",
    "compute_metrics",
    "load_predictor",
    "evaluate_cases",
    "evaluate_models",
    "format_report",
    "format_comparison",
    "plot_confusion_matrix",
    "plot_training_curve",
    "write_json",
]


@dataclass(frozen=True)
class Prediction:
    """What a model says about one scan (source grid)."""

    lesion_mask: np.ndarray
    class_probabilities: tuple[float, ...]


#: A callable from ``(hu, geometry)`` to a :class:`Prediction`.
Predictor = Callable[[np.ndarray, Geometry], Prediction]


@dataclass(frozen=True)
class CaseResult:
    """The comparison of one prediction with its phantom reference."""

    case_id: str
    label: str
    predicted: str
    probabilities: tuple[float, ...]
    reference_voxels: int
    predicted_voxels: int
    intersection_voxels: int
    seconds: float

    @property
    def dice(self) -> float | None:
        """Dice of this scan (``None`` when the reference has no lesion)."""
        if self.reference_voxels == 0:
            return None
        return 2.0 * self.intersection_voxels / (self.reference_voxels + self.predicted_voxels)


@dataclass
class EvaluationReport:
    """Per-case results and metrics of one model."""

    model: str
    cases: list[CaseResult]
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "model": self.model,
            "metrics": self.metrics,
            "cases": [
                {**asdict(c), "dice": None if c.dice is None else round(c.dice, 4)}
                for c in self.cases
            ],
        }


# ----------------------------------------------------------------------
# Metrics


def dice_score(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """``2|P & T| / (|P| + |T|)``; ``None`` when both masks are empty.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if prediction.shape != reference.shape:
        raise ValueError(
            f'Arguments "prediction" {prediction.shape} and "reference" {reference.shape} '
            "should have the same shape."
        )
    p, t = prediction.astype(bool), reference.astype(bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return None
    return 2.0 * int(np.count_nonzero(p & t)) / total


def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """``[n, n]`` counts; rows are the reference, columns the prediction."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(labels, predicted):
        matrix[int(t), int(p)] += 1
    return matrix


def auc_one_vs_rest(labels: Sequence[int], probabilities: np.ndarray) -> list[float | None]:
    """Area under the ROC curve of each class against the others.

    Computed as the Mann-Whitney statistic: the probability that a random
    scan of the class scores higher than a random scan of another class,
    ties counting one half.

    Parameters
    ----------
    labels: Sequence[int]
        Reference class indices.
    probabilities: numpy.ndarray
        ``[n_scans, n_classes]`` predicted probabilities.

    Returns
    -------
    list[float | None]
        One AUC per class (``None`` when a class or its complement is
        absent).
    """
    labels_arr = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    out: list[float | None] = []
    for k in range(probabilities.shape[1]):
        positive = probabilities[labels_arr == k, k]
        negative = probabilities[labels_arr != k, k]
        if positive.size == 0 or negative.size == 0:
            out.append(None)
            continue
        greater = (positive[:, None] > negative[None, :]).sum()
        ties = (positive[:, None] == negative[None, :]).sum()
        out.append(float((greater + 0.5 * ties) / (positive.size * negative.size)))
    return out


def sensitivity_specificity(matrix: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-class sensitivity and specificity from a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    sensitivity: list[float | None] = []
    specificity: list[float | None] = []
    for k in range(matrix.shape[0]):
        tp = matrix[k, k]
        fn = matrix[k].sum() - tp
        fp = matrix[:, k].sum() - tp
        tn = total - tp - fn - fp
        sensitivity.append(float(tp / (tp + fn)) if tp + fn else None)
        specificity.append(float(tn / (tn + fp)) if tn + fp else None)
    return sensitivity, specificity


def compute_metrics(
    cases: Sequence[CaseResult], class_keys: Sequence[str] = CLASS_KEYS
) -> dict[str, Any]:
    """All metrics of a list of case results (see the module docstring).

    Raises
    ------
    ValueError
        If ``cases`` is empty.
    """
    if not cases:
        raise ValueError('Argument "cases" should not be empty.')
    keys = list(class_keys)
    dices = [c.dice for c in cases if c.dice is not None]
    intersection = sum(c.intersection_voxels for c in cases)
    total = sum(c.reference_voxels + c.predicted_voxels for c in cases)
    negatives = [c for c in cases if c.label == "no_pneumonia"]
    labels = [keys.index(c.label) for c in cases]
    predicted = [keys.index(c.predicted) for c in cases]
    matrix = confusion_matrix(labels, predicted, len(keys))
    sensitivity, specificity = sensitivity_specificity(matrix)
    auc = auc_one_vs_rest(labels, np.array([c.probabilities for c in cases]))
    return {
        "n_scans": len(cases),
        "n_per_class": {k: int((np.asarray(labels) == i).sum()) for i, k in enumerate(keys)},
        "dice_mean": float(np.mean(dices)) if dices else None,
        "dice_std": float(np.std(dices)) if dices else None,
        "dice_min": float(np.min(dices)) if dices else None,
        "dice_pooled": 2.0 * intersection / total if total else None,
        "false_positive_rate": (
            sum(1 for c in negatives if c.predicted_voxels > 0) / len(negatives)
            if negatives else None
        ),
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "sensitivity": dict(zip(keys, sensitivity)),
        "specificity": dict(zip(keys, specificity)),
        "auc": dict(zip(keys, auc)),
        "confusion_matrix": matrix.tolist(),
        "class_keys": keys,
        "seconds_per_scan": float(np.mean([c.seconds for c in cases])),
    }


# ----------------------------------------------------------------------
# Running models


def load_predictor(model_dir: str | Path, threads: int | None = None) -> Predictor:
    """A predictor running a model directory the way the node does.

    :class:`inference.pipeline.InferencePipeline` on the CPU provider:
    preprocessing, ONNX Runtime, post-processing (lesions restricted to the
    lungs, small components dropped), so the Dice is that of the node's path.

    Returns
    -------
    Predictor
    """
    from inference.pipeline import InferencePipeline

    pipe = InferencePipeline.from_model_dir(
        model_dir, providers=["CPUExecutionProvider"], intra_op_threads=threads
    )

    def predict(hu: np.ndarray, geometry: Geometry) -> Prediction:
        result = pipe.run(hu, geometry)
        return Prediction(
            lesion_mask=np.asarray(result.lesion_mask, dtype=bool),
            class_probabilities=tuple(float(p) for p in result.class_probabilities),
        )

    return predict


def _compare(
    case: Case, prediction: Prediction, class_keys: Sequence[str], seconds: float
) -> CaseResult:
    reference = np.asarray(case.lesion_mask, dtype=bool)
    mask = np.asarray(prediction.lesion_mask, dtype=bool)
    if mask.shape != reference.shape:
        raise ValueError(
            f"case {case.case_id}: prediction shape {mask.shape} differs from {reference.shape}"
        )
    probabilities = tuple(float(p) for p in prediction.class_probabilities)
    return CaseResult(
        case_id=case.case_id,
        label=case.label,
        predicted=class_keys[int(np.argmax(probabilities))],
        probabilities=tuple(round(p, 6) for p in probabilities),
        reference_voxels=int(np.count_nonzero(reference)),
        predicted_voxels=int(np.count_nonzero(mask)),
        intersection_voxels=int(np.count_nonzero(reference & mask)),
        seconds=round(seconds, 3),
    )


def evaluate_cases(
    predictors: dict[str, Predictor],
    cases: Iterable[Case],
    class_keys: Sequence[str] = CLASS_KEYS,
    progress: Callable[[int, Case], None] | None = None,
) -> dict[str, EvaluationReport]:
    """Run every predictor on every case (each case generated once).

    Parameters
    ----------
    predictors: dict[str, Predictor]
        Name -> predictor.
    cases: Iterable[Case]
        Reference scans.
    class_keys: Sequence[str], optional
        Class order of the probabilities.
    progress: Callable | None, optional
        Called after each case.

    Returns
    -------
    dict[str, EvaluationReport]
        One report per predictor, with metrics.
    """
    results: dict[str, list[CaseResult]] = {name: [] for name in predictors}
    for number, case in enumerate(cases):
        for name, predict in predictors.items():
            start = time.perf_counter()
            prediction = predict(case.hu, case.geometry)
            results[name].append(
                _compare(case, prediction, class_keys, time.perf_counter() - start)
            )
        if progress is not None:
            progress(number, case)
    return {
        name: EvaluationReport(name, items, compute_metrics(items, class_keys))
        for name, items in results.items()
    }


def evaluate_models(
    model_dirs: Sequence[str | Path],
    seed: int,
    n: int,
    matrix: int | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, EvaluationReport]:
    """Evaluate model directories on ``n`` balanced phantoms of run ``seed``.

    Parameters
    ----------
    model_dirs: Sequence[str | Path]
        Exported model directories.
    seed: int
        Phantom run seed (use one not used in training).
    n: int
        Number of scans (a multiple of 3 keeps the classes balanced).
    matrix: int | None, optional
        In-plane matrix of the phantoms; ``None`` is the generator's clinical
        default (512).
    threads: int | None, optional
        ONNX Runtime intra-op threads.
    progress: bool, optional
        Show a progress bar.

    Returns
    -------
    dict[str, EvaluationReport]
        Keyed by the model directory as given.

    Raises
    ------
    ValueError
        If ``n`` < 1 or no model is given.
    """
    if n < 1:
        raise ValueError('Argument "n" should be a positive integer.')
    if not model_dirs:
        raise ValueError('Argument "model_dirs" should name at least one model directory.')
    predictors = {}
    for model_dir in model_dirs:
        LOGGER.info("evaluating %s through inference.pipeline", model_dir)
        predictors[str(model_dir)] = load_predictor(model_dir, threads)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="evaluate", unit="scan")
    cases = (phantom_case(seed, index, matrix=matrix) for index in range(n))
    reports = evaluate_cases(
        predictors, cases, progress=(lambda i, c: bar.update(1)) if bar is not None else None
    )
    if bar is not None:
        bar.close()
    for report in reports.values():
        report.metrics["seed"] = int(seed)
        report.metrics["matrix"] = matrix or "generator default"
    return reports


# ----------------------------------------------------------------------
# Output


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_report(report: EvaluationReport) -> str:
    """Human-readable metrics and confusion matrix of one model."""
    m = report.metrics
    keys = m["class_keys"]
    lines = [
        f"model: {report.model}",
        f"scans: {m['n_scans']} {m['n_per_class']}  (seed {m.get('seed', '?')})",
        f"lesion Dice: mean per scan {_fmt(m['dice_mean'])} (sd {_fmt(m['dice_std'])}, "
        f"min {_fmt(m['dice_min'])}), pooled {_fmt(m['dice_pooled'])}",
        f"no-pneumonia scans with any lesion voxel: {_fmt(m['false_positive_rate'])}",
        f"accuracy: {_fmt(m['accuracy'])}",
        "class          sensitivity  specificity  AUC (one-vs-rest)",
    ]
    for k in keys:
        lines.append(
            f"{k:<14} {_fmt(m['sensitivity'][k]):>11}  {_fmt(m['specificity'][k]):>11}  "
            f"{_fmt(m['auc'][k]):>8}"
        )
    width = max(len(k) for k in keys) + 2
    lines.append("confusion matrix (rows: reference, columns: predicted)")
    lines.append(" " * width + "".join(f"{k:>{width}}" for k in keys))
    for k, row in zip(keys, m["confusion_matrix"]):
        lines.append(f"{k:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    lines.append(f"seconds per scan: {m['seconds_per_scan']:.2f}")
    return "\n".join(lines)


def format_comparison(
    reports: dict[str, EvaluationReport], names: dict[str, str] | None = None
) -> str:
    """A side-by-side Markdown table of several models."""
    names = names or {}
    header = "| metric | " + " | ".join(names.get(k, k) for k in reports) + " |"
    rows = [header, "|---" * (len(reports) + 1) + "|"]
    first = next(iter(reports.values())).metrics

    def row(label: str, *path: str) -> None:
        values = []
        for report in reports.values():
            value: Any = report.metrics
            for key in path:
                value = value[key]
            values.append(_fmt(value))
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    row("lesion Dice, mean per scan", "dice_mean")
    row("lesion Dice, pooled", "dice_pooled")
    row("no-pneumonia scans with lesion voxels", "false_positive_rate")
    row("accuracy (3 classes)", "accuracy")
    for k in first["class_keys"]:
        row(f"sensitivity {k}", "sensitivity", k)
        row(f"specificity {k}", "specificity", k)
        row(f"AUC {k} vs rest", "auc", k)
    return "\n".join(rows)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_keys: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write the confusion matrix as a PNG (rows: reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    array = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(array, cmap="Blues")
    ax.set_xticks(range(len(class_keys)), class_keys)
    ax.set_yticks(range(len(class_keys)), class_keys)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for (i, j), value in np.ndenumerate(array):
        colour = "white" if value > array.max() / 2 else "black"
        ax.text(j, i, str(value), ha="center", va="center", color=colour)
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(reports: dict[str, EvaluationReport], path: str | Path) -> Path:
    """Write every report (metrics and cases) to a JSON file."""
    path = Path(path)
    path.write_text(
        json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=1) + "\n",
        encoding="utf-8",
    )
    return path


def plot_training_curve(
    history: Sequence[dict[str, float]],
    validation: Sequence[dict[str, float]],
    path: str | Path,
    title: str = "training",
) -> Path:
    """Write the training-curve PNG (losses; validation Dice and accuracy).

    Parameters
    ----------
    history: Sequence[dict]
        History points (``step``, ``loss``, ``seg``, ``cls``, ``coupling``).
    validation: Sequence[dict]
        Validation points (``step``, ``dice_mean``, ``accuracy``).
    path: str | Path
        Output PNG.
    title: str, optional
        Figure title.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = np.array([h["step"] for h in history])

    def smooth(values: Sequence[float], width: int = 5) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.size < width:
            return array
        kernel = np.ones(width) / width
        padded = np.pad(array, (width // 2, width - 1 - width // 2), mode="edge")
        return np.convolve(padded, kernel, mode="valid")

    for key, label in (("seg", "L_seg = Dice + BCE"), ("cls", "L_cls (CE)"),
                       ("coupling", "L_cpl (before lambda)")):
        values = [h[key] for h in history]
        if any(v > 0 for v in values):
            axes[0].plot(steps, np.clip(smooth(values), 1e-4, None), label=label)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss (training batches, smoothed)")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    axes[1].plot(steps, smooth([h["loss"] for h in history]), label="total loss")
    if any(h.get("w_seg", 1.0) != 1.0 for h in history):
        axes[1].plot(steps, [h["w_seg"] for h in history], "--",
                     label="weight of L_seg, exp(-u_seg)/2")
        axes[1].plot(steps, [h["w_cls"] for h in history], "--",
                     label="weight of L_cls, exp(-u_cls)/2")
    axes[1].set_xlabel("step")
    axes[1].set_title("total loss and learned task weights")
    axes[1].legend(loc="best", fontsize=8)
    axes[1].grid(alpha=0.3)
    if validation:
        vsteps = [v["step"] for v in validation]
        axes[2].plot(vsteps, [v["dice_mean"] for v in validation], "o-",
                     label="lesion Dice (model grid)")
        axes[2].plot(vsteps, [v["accuracy"] for v in validation], "s-", label="accuracy")
        axes[2].set_ylim(0.0, 1.02)
        axes[2].legend(loc="lower right")
    axes[2].set_xlabel("step")
    axes[2].set_title("validation (held-out cached cases)")
    axes[2].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
