"""Training of the joint network (and its single-task ablations) from a cache.

:func:`train` reads a cache built by :func:`inference.dataset.build_cache`
(every case already on the model grid), and runs AdamW with a linear warm-up
and a cosine decay for a fixed number of steps:

* CPU by default (``torch.set_num_threads(threads)``), CUDA when present and
  ``device="auto"``;
* cheap augmentation on the cached model-grid arrays: a random translation
  (up to ``max_shift`` voxels per axis, filled with air / background), HU
  scale and offset jitter, and Gaussian noise; no flips (anatomy stays
  plausible: the heart stays on the left);
* the last ``val_cases`` cached cases are held out for a model-grid
  validation (Dice and accuracy) every ``eval_every`` steps;
* a checkpoint ``last.pt`` every ``checkpoint_every`` steps (written
  atomically), which a new call resumes from; ``history.json`` and the
  training-curve PNG ``training_curve.png`` at the end.

Seeding: ``torch.manual_seed(seed)`` for the weights, and
``numpy.random.default_rng([seed, ...])`` streams for the sampling order and
augmentation, derived from the step so a resumed run draws the same batches.
Bitwise reproducibility on CPU is not guaranteed: multi-threaded reductions
in oneDNN/OpenMP may sum in a different order from run to run.

This module imports torch (the ``train`` extra).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.dataset import CLASS_KEYS, CacheArrays, load_cache
from inference.evaluate import dice_score, plot_training_curve
from inference.loss import TaskAwareLoss, checked_task_weights
from inference.model import DeepSCNet, ModelConfig, build_model

LOGGER = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "select_device",
    "learning_rate",
    "use_bf16",
    "cpu_has_native_bf16",
    "coupling_scale",
    "augment_batch",
    "validate",
    "calibrate_threshold",
    "select_threshold",
    "train",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "deepsc-node-checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (stored in the checkpoint).

    Parameters
    ----------
    steps: int
        Optimiser steps.
    batch_size: int
        Scans per step.
    lr: float
        Peak learning rate (AdamW).
    weight_decay: float
        AdamW weight decay of the network weights.
    warmup_steps: int
        Linear warm-up steps; then cosine decay to 5 % of ``lr``.
    seed: int
        Seed of weights, sampling order and augmentation.
    threads: int
        ``torch.set_num_threads`` on CPU.
    device: str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    checkpoint_every: int
        Steps between checkpoints.
    eval_every: int
        Steps between validations (0: only at the end).
    val_cases: int
        Cached cases held out for validation (taken from the end).
    log_every: int
        Steps averaged into one history point.
    coupling_weight: float
        ``lambda`` of the task-aware loss.
    coupling_ramp: tuple[float, float]
        Fractions of ``steps`` between which ``lambda`` ramps linearly from 0
        to its value (0 before, full after): the coupling term mines the
        hardest voxels, which stalls the segmentation if it acts before the
        lesion subnet has found the lesions.
    adaptive_weights: bool
        Learned task weights (Kendall et al.); ``False`` fixes both at 1/2.
    task_weights: tuple[float, float] or None
        Fixed ``(w_seg, w_cls)`` of the joint loss instead of the learned
        weights (overrides ``adaptive_weights``).
    augment: bool
        Apply the augmentation.
    max_shift: tuple[int, int, int]
        Largest translation (voxels) per axis.
    grad_clip: float
        Gradient-norm clip.
    precision: str
        ``"bf16"`` (autocast of the forward pass to bfloat16; weights,
        optimiser state and losses stay float32), ``"fp32"``, or ``"auto"``:
        bf16 where the device computes it natively (CPUs with AVX512-BF16 /
        AMX through oneDNN, CUDA GPUs with bf16), fp32 elsewhere.
    channels_last: bool
        Keep activations in the ``channels_last_3d`` memory format (about
        1.7x faster 3D convolutions on CPU with oneDNN).

    Raises
    ------
    ValueError
        If a value is out of range.
    """

    steps: int = 4800
    batch_size: int = 2
    lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    checkpoint_every: int = 200
    eval_every: int = 400
    val_cases: int = 24
    log_every: int = 10
    coupling_weight: float = 0.2
    coupling_ramp: tuple[float, float] = (0.2, 0.5)
    adaptive_weights: bool = True
    task_weights: tuple[float, float] | None = None
    augment: bool = True
    max_shift: tuple[int, int, int] = (3, 8, 8)
    grad_clip: float = 5.0
    precision: str = "auto"
    channels_last: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "threads", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'Argument "{name}" should be a positive integer.')
        for name in ("warmup_steps", "eval_every", "val_cases", "seed"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f'Argument "{name}" should be >= 0.')
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(
                'Arguments "lr" and "grad_clip" should be positive, "weight_decay" >= 0.'
            )
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError('Argument "precision" should be "auto", "bf16" or "fp32".')
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError('Argument "device" should be "auto", "cpu" or "cuda".')
        start, full = (float(v) for v in self.coupling_ramp)
        if not 0.0 <= start <= full <= 1.0:
            raise ValueError('Argument "coupling_ramp" should be 0 <= start <= full <= 1.')
        object.__setattr__(self, "coupling_ramp", (start, full))
        if self.task_weights is not None:
            object.__setattr__(self, "task_weights", checked_task_weights(self.task_weights))
        if len(self.max_shift) != 3 or min(self.max_shift) < 0:
            raise ValueError('Argument "max_shift" should be three integers >= 0.')
        object.__setattr__(self, "max_shift", tuple(int(s) for s in self.max_shift))


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    checkpoint: Path
    steps: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)


def select_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU.

    Raises
    ------
    ValueError
        If ``"cuda"`` is asked for and no GPU is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError('Argument "device" is "cuda" but no CUDA device is available.')
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast to bfloat16 (see :attr:`TrainConfig.precision`)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX).

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is
    also true on plain AVX-512 CPUs, where it emulates bf16: there a step
    took 1.85 s against 1.0 s in fp32 (the (2+1)D network on a 2-core Xeon
    whose hypervisor hides AMX), so ``"auto"`` asks for the instructions.
    """
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``0.05 * lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def coupling_scale(step: int, config: TrainConfig) -> float:
    """Factor of ``lambda`` at ``step``: 0, then a linear ramp, then 1."""
    start, full = (f * config.steps for f in config.coupling_ramp)
    if step >= full:
        return 1.0
    if step < start:
        return 0.0
    return (step - start) / max(1e-9, full - start)


def _shift(array: np.ndarray, shift: Sequence[int], fill: float) -> np.ndarray:
    """Translate a ``[D, H, W]`` array by integer voxels, filling the gap."""
    out = np.full_like(array, fill)
    src = []
    dst = []
    for n, s in zip(array.shape, shift):
        if s >= 0:
            src.append(slice(0, n - s))
            dst.append(slice(s, n))
        else:
            src.append(slice(-s, n))
            dst.append(slice(0, n + s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def augment_batch(
    images: np.ndarray,
    lesions: np.ndarray,
    rng: np.random.Generator,
    max_shift: Sequence[int] = (3, 8, 8),
    fill: float = -1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a batch of model-grid scans.

    Parameters
    ----------
    images: numpy.ndarray
        ``float32`` ``[N, D, H, W]`` normalised inputs.
    lesions: numpy.ndarray
        ``float32`` ``[N, D, H, W]`` targets in [0, 1].
    rng: numpy.random.Generator
        Random stream.
    max_shift: Sequence[int], optional
        Largest translation per axis (voxels).
    fill: float, optional
        Normalised value of the voxels shifted in (air).

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        New arrays; the inputs are not modified.
    """
    out_images = np.empty_like(images)
    out_lesions = np.empty_like(lesions)
    for n in range(images.shape[0]):
        shift = [int(rng.integers(-m, m + 1)) if m else 0 for m in max_shift]
        image = _shift(images[n], shift, fill)
        lesion = _shift(lesions[n], shift, 0.0)
        scale = np.float32(1.0 + rng.uniform(-0.05, 0.05))
        offset = np.float32(rng.uniform(-0.04, 0.04))
        sigma = np.float32(rng.uniform(0.0, 0.02))
        image = image * scale + offset
        if sigma > 0:
            image += sigma * rng.standard_normal(image.shape, dtype=np.float32)
        out_images[n] = image
        out_lesions[n] = lesion
    return out_images, out_lesions


def _batch_indices(step: int, batch_size: int, train_indices: np.ndarray, seed: int) -> np.ndarray:
    """Indices of the scans of ``step``: epoch-wise permutations of the train set."""
    n = len(train_indices)
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([seed, epoch, 0x7A]).permutation(n)
        out.append(train_indices[order[offset]])
    return np.asarray(out, dtype=np.int64)


@torch.no_grad()
def _predict_cases(
    model: DeepSCNet, cache: CacheArrays, indices: Sequence[int], device: torch.device
) -> Iterator[tuple[int, np.ndarray, int]]:
    """Yield ``(index, lesion probability, predicted class)`` per cached case, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for index in indices:
            x = torch.from_numpy(cache.images[index].astype(np.float32))[None, None].to(device)
            lesion_logits, class_logits = model(x)
            probability = torch.sigmoid(lesion_logits[0, 0]).float().cpu().numpy()
            yield index, probability, int(class_logits.argmax(dim=1)[0])
    finally:
        model.train(was_training)


@torch.no_grad()
def validate(
    model: DeepSCNet, cache: CacheArrays, indices: Sequence[int], device: torch.device
) -> dict[str, float]:
    """Model-grid Dice and accuracy on cached cases (no augmentation).

    Returns
    -------
    dict
        ``dice_mean`` (mean over cases with a lesion), ``dice_pooled``,
        ``accuracy``.
    """
    dices: list[float] = []
    correct = 0
    intersection = total = 0.0
    for index, probability, predicted in _predict_cases(model, cache, indices, device):
        prediction = probability > 0.5
        target = cache.lesions[index] >= 128
        if target.any():
            dices.append(dice_score(prediction, target) or 0.0)
        intersection += float((prediction & target).sum())
        total += float(prediction.sum() + target.sum())
        correct += int(predicted == int(cache.labels[index]))
    return {
        "dice_mean": float(np.mean(dices)) if dices else float("nan"),
        "dice_pooled": 2.0 * intersection / total if total else 1.0,
        "accuracy": correct / max(1, len(indices)),
    }


#: Lesion thresholds tried by :func:`calibrate_threshold`.
THRESHOLDS = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
#: Validation Dice gain below which the threshold stays nearest 0.5.
THRESHOLD_TOLERANCE = 0.005


@torch.no_grad()
def calibrate_threshold(
    model: DeepSCNet,
    cache: CacheArrays,
    indices: Sequence[int],
    device: torch.device,
    candidates: Sequence[float] = THRESHOLDS,
) -> tuple[float, dict[str, float]]:
    """The lesion threshold by mean validation Dice (model grid).

    Only the held-out validation cases are used (never the evaluation
    phantoms); the choice is :func:`select_threshold` of the mean Dice of
    each candidate. The exporter writes it into the manifest's
    ``lesion_threshold``.

    Returns
    -------
    tuple[float, dict[str, float]]
        The best threshold and the mean Dice of every candidate.
    """
    scores: dict[float, list[float]] = {float(t): [] for t in candidates}
    lesion_cases = [i for i in indices if (cache.lesions[i] >= 128).any()]
    for index, probability, _ in _predict_cases(model, cache, lesion_cases, device):
        target = cache.lesions[index] >= 128
        for threshold in scores:
            scores[threshold].append(dice_score(probability >= threshold, target) or 0.0)
    means = {f"{t:.2f}": float(np.mean(v)) if v else 0.0 for t, v in scores.items()}
    return select_threshold(means), means


def select_threshold(scores: dict[str, float], tolerance: float = THRESHOLD_TOLERANCE) -> float:
    """The threshold nearest 0.5 whose Dice is within ``tolerance`` of the best.

    A threshold away from 0.5 is taken only when it buys a real Dice gain
    on the validation cases (it also moves false positives on lesion-free
    scans, which the Dice of lesion scans does not see).

    Parameters
    ----------
    scores: dict[str, float]
        Mean validation Dice by threshold (keys are the thresholds as text).
    tolerance: float, optional
        Dice difference treated as no gain.

    Returns
    -------
    float
        0.5 when ``scores`` is empty.
    """
    if not scores:
        return 0.5
    best = max(scores.values())
    near = [float(t) for t, v in scores.items() if v >= best - tolerance]
    return min(near, key=lambda t: (abs(t - 0.5), t))


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, str(tmp))
    tmp.replace(path)


def train(
    cache_dir: str | Path,
    out_dir: str | Path,
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a network from a model-grid cache.

    Parameters
    ----------
    cache_dir: str | Path
        Directory written by :func:`inference.dataset.build_cache`.
    out_dir: str | Path
        Run directory: ``last.pt``, ``history.json``, ``training_curve.png``.
    model_config: ModelConfig | None, optional
        Network (task, channels ...); defaults to the bundled model's.
    config: TrainConfig | None, optional
        Optimisation settings.
    resume: bool, optional
        Continue from ``out_dir/last.pt`` when it exists.
    progress: bool, optional
        Show a progress bar with the losses.
    extra: dict | None, optional
        Recorded in the checkpoint (e.g. the data source).

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        If the cache is too small or the checkpoint belongs to another run.
    """
    model_config = model_config or ModelConfig()
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = load_cache(cache_dir)
    grid = tuple(cache.meta["grid"]["shape"])
    model_config.check_shape(grid)
    if len(cache) <= config.val_cases:
        raise ValueError(
            f'Argument "cache_dir" holds {len(cache)} cases, fewer than val_cases + 1.'
        )
    train_indices = np.arange(len(cache) - config.val_cases)
    val_indices = list(range(len(cache) - config.val_cases, len(cache)))

    device = select_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]
    bf16 = use_bf16(config.precision, device)
    LOGGER.info("training on %s, %s, %s", device, "bf16 autocast" if bf16 else "fp32",
                "channels_last_3d" if config.channels_last else "contiguous")
    loss_fn = TaskAwareLoss(
        task=model_config.task,
        coupling_weight=config.coupling_weight,
        top_k=model_config.top_k,
        adaptive=config.adaptive_weights,
        task_weights=config.task_weights,
    ).to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.parameters()), "weight_decay": config.weight_decay},
            {"params": [p for p in loss_fn.parameters() if p.requires_grad], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    start_step, elapsed = 0, 0.0
    threshold, threshold_scores = 0.5, {}  # type: tuple[float, dict[str, float]]
    history: list[dict[str, float]] = []
    validation: list[dict[str, float]] = []
    checkpoint_path = out_dir / "last.pt"
    if resume and checkpoint_path.exists():
        state = torch.load(str(checkpoint_path), map_location=device, weights_only=False)
        if state.get("model_config") != model_config.to_dict():
            raise ValueError(
                f"{checkpoint_path} was written for another network; use another out_dir"
            )
        model.load_state_dict(state["model_state"])
        loss_fn.load_state_dict(state["loss_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        start_step, elapsed = int(state["step"]), float(state["train_seconds"])
        history, validation = list(state["history"]), list(state["validation"])
        LOGGER.info("resumed %s at step %d (%.0f s trained)", checkpoint_path, start_step, elapsed)

    def checkpoint(step: int) -> None:
        _save(
            checkpoint_path,
            {
                "format": CHECKPOINT_FORMAT,
                "model_config": model_config.to_dict(),
                "train_config": asdict(config),
                "model_state": model.state_dict(),
                "loss_state": loss_fn.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "step": step,
                "train_seconds": elapsed,
                # What autocast really did in the session that wrote the checkpoint
                # (the config may say "auto").
                "precision": "bf16" if bf16 else "fp32",
                "history": history,
                "validation": validation,
                "grid": cache.meta["grid"],
                "intensity": cache.meta["intensity"],
                "data": {
                    "source": cache.meta.get("source", {}),
                    "train_cases": int(len(train_indices)),
                    "val_cases": int(len(val_indices)),
                },
                "classes": list(CLASS_KEYS),
                "lesion_threshold": threshold,
                "threshold_scores": threshold_scores,
                "torch_version": torch.__version__,
                "extra": dict(extra or {}),
            },
        )

    bar = _progress_bar(start_step, config.steps, progress)
    window: list[dict[str, float]] = []
    model.train()
    tic = time.perf_counter()
    for step in range(start_step, config.steps):
        indices = _batch_indices(step, config.batch_size, train_indices, config.seed)
        images = cache.images[indices].astype(np.float32)
        lesions = cache.lesions[indices].astype(np.float32) / 255.0
        if config.augment:
            rng = np.random.default_rng([config.seed, step, 0xA6])
            images, lesions = augment_batch(images, lesions, rng, config.max_shift)
        x = torch.from_numpy(images[:, None]).to(device).contiguous(memory_format=memory_format)
        y = torch.from_numpy(lesions[:, None]).to(device)
        labels = torch.from_numpy(cache.labels[indices]).to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            lesion_logits, class_logits = model(x)
        terms = loss_fn(lesion_logits.float(), class_logits.float(), y, labels,
                        coupling_scale(step, config))
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        window.append(terms.as_dict())
        done = step + 1
        now = time.perf_counter()
        elapsed += now - tic
        tic = now
        if len(window) >= config.log_every or done == config.steps:
            point = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            point.update(step=float(done), time_s=round(elapsed, 1), lr=learning_rate(step, config))
            history.append(point)
            window = []
            LOGGER.info(
                "step %d/%d loss %.4f seg %.4f cls %.4f cpl %.4f (%.0f s)",
                done, config.steps, point["loss"], point["seg"], point["cls"],
                point["coupling"], elapsed,
            )
            if bar is not None:
                bar.set_postfix(
                    loss=f"{point['loss']:.3f}", seg=f"{point['seg']:.3f}",
                    cls=f"{point['cls']:.3f}", cpl=f"{point['coupling']:.3f}",
                )
        if bar is not None:
            bar.update(1)
        evaluate_now = config.eval_every and done % config.eval_every == 0
        if (evaluate_now or done == config.steps) and len(val_indices):
            metrics = validate(model, cache, val_indices, device)
            metrics["step"] = float(done)
            validation.append(metrics)
            LOGGER.info(
                "validation step %d: dice %.3f (pooled %.3f) accuracy %.3f",
                done, metrics["dice_mean"], metrics["dice_pooled"], metrics["accuracy"],
            )
        if done == config.steps and model_config.task != "classification" and len(val_indices):
            threshold, threshold_scores = calibrate_threshold(model, cache, val_indices, device)
            LOGGER.info("lesion threshold %.2f (validation Dice by threshold %s)",
                        threshold, threshold_scores)
        if done % config.checkpoint_every == 0 or done == config.steps:
            checkpoint(done)
    if bar is not None:
        bar.close()
    (out_dir / "history.json").write_text(
        json.dumps({"history": history, "validation": validation, "train_seconds": elapsed},
                   indent=1) + "\n",
        encoding="utf-8",
    )
    try:
        plot_training_curve(history, validation, out_dir / "training_curve.png",
                            title=f"{model_config.task} model")
    except ImportError:
        LOGGER.warning("matplotlib is not installed; no training curve written")
    return TrainResult(out_dir, checkpoint_path, config.steps, elapsed, history, validation)


def _progress_bar(start: int, total: int, enabled: bool) -> Any:
    if not enabled or start >= total:
        return None
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total, initial=start, desc="train", unit="step",
        mininterval=0.5 if interactive else 60.0, dynamic_ncols=interactive,
    )
