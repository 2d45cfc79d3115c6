"""The task-aware loss that couples lesion segmentation and classification.

Notation (one mini-batch of ``N`` scans): ``z`` lesion logits, ``P = sigmoid(z)``
lesion probabilities, ``Y`` lesion target in [0, 1] (soft on the model grid),
``c`` class logits, ``l`` class labels (indices into
:data:`inference.model.CLASS_KEYS`), ``y_n = 1`` when scan ``n`` is labelled
``covid19`` or ``cap`` (pneumonia) and 0 when labelled ``no_pneumonia``.

Segmentation term::

    L_seg  = L_dice + L_bce
    L_bce  = mean over all voxels of all scans of BCE(z, Y)
    L_dice = mean over the scans n whose target holds a lesion of
             1 - (2 * sum_v P_nv Y_nv + 1) / (sum_v P_nv + sum_v Y_nv + 1)

(one soft Dice per scan, as the evaluation's "mean Dice per scan"; a batch
of lesion-free scans has ``L_dice = 0``; their false positives are
penalised by ``L_bce`` and the coupling term).

Classification term::

    L_cls = CE(c, l)      (with label smoothing ``label_smoothing``)

Coupling term (the label of one task constrains the output of the other)::

    s_n    = mean of the top-k voxel probabilities of P_n   (lesion presence)
    q_n    = 1 - softmax(c_n)[no_pneumonia]                 (pneumonia probability)
    L_cpl  = mean_n BCE(s_n, y_n) + mean_n (q_n - s_n)^2

The first part says "a no-pneumonia label implies an empty lesion map, a
pneumonia label implies a lesion"; the second makes the classifier and the
lesion map agree on whether there is pneumonia at all.

Adaptive task weights (homoscedastic uncertainty, Kendall, Gal & Cipolla,
CVPR 2018) with learned ``u_t = log sigma_t^2``::

    L = 1/2 * (exp(-u_seg) * L_seg + u_seg) + 1/2 * (exp(-u_cls) * L_cls + u_cls)
        + lambda * L_cpl

``u_t`` start at 0 and are clamped to [-4, 4]. With fixed task weights
(``task_weights=(w_seg, w_cls)``, ``deepsc-node train --task-weights``) the
first two terms are ``w_seg * L_seg + w_cls * L_cls`` instead, and nothing
is learned; ``adaptive=False`` alone is ``w_seg = w_cls = 1/2``. ``lambda`` is
``coupling_weight`` (0.2 by default) times a schedule factor that the
training ramps from 0 to 1 (:func:`inference.train.coupling_scale`).
Together with the lesion-attention
classifier (:class:`inference.model.LesionAttentionClassifier`, which pools
the shared features over ``P``) this is the task-aware coupling of the two
tasks.

The single-task ablations use ``L = L_seg`` (segmentation) or ``L = L_cls``
(classification) alone.

This module imports torch; the node never imports it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inference.model import CLASS_KEYS, TASKS, presence_score

LOGGER = logging.getLogger(__name__)

__all__ = [
    "LossTerms", "TaskAwareLoss", "checked_task_weights", "soft_dice_loss", "NO_PNEUMONIA_INDEX"
]

#: Index of the ``no_pneumonia`` class in the logits.
NO_PNEUMONIA_INDEX = CLASS_KEYS.index("no_pneumonia")

#: Clamp of the learned log-variances.
LOG_VARIANCE_LIMIT = 4.0


@dataclass(frozen=True)
class LossTerms:
    """The total loss and its parts (detached floats for logging)."""

    total: torch.Tensor
    seg: float
    dice: float
    bce: float
    cls: float
    coupling: float
    weight_seg: float
    weight_cls: float

    def as_dict(self) -> dict[str, float]:
        """Floats for logs and the training history."""
        return {
            "loss": float(self.total.detach()),
            "seg": self.seg,
            "dice": self.dice,
            "bce": self.bce,
            "cls": self.cls,
            "coupling": self.coupling,
            "w_seg": self.weight_seg,
            "w_cls": self.weight_cls,
        }


def soft_dice_loss(
    probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - (2 sum PY + smooth) / (sum P + sum Y + smooth)`` over all voxels given.

    Parameters
    ----------
    probability: torch.Tensor
        Lesion probabilities, any shape.
    target: torch.Tensor
        Target in [0, 1], same shape.
    smooth: float, optional
        Additive smoothing.

    Returns
    -------
    torch.Tensor
        Scalar in [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if probability.shape != target.shape:
        raise ValueError(
            f'Arguments "probability" {tuple(probability.shape)} and "target" '
            f"{tuple(target.shape)} should have the same shape."
        )
    intersection = (probability * target).sum()
    return 1.0 - (2.0 * intersection + smooth) / (probability.sum() + target.sum() + smooth)


def checked_task_weights(weights: Sequence[float]) -> tuple[float, float]:
    """``(w_seg, w_cls)`` as floats.

    Raises
    ------
    ValueError
        Unless there are two weights, both >= 0 and not both 0.
    """
    values = tuple(float(w) for w in weights)
    if len(values) != 2 or min(values) < 0 or max(values) <= 0:
        raise ValueError('Argument "task_weights" should be two weights >= 0, not both 0.')
    return values[0], values[1]


class TaskAwareLoss(nn.Module):
    """The joint loss (see the module docstring for the exact formula).

    Parameters
    ----------
    task: str
        ``"joint"``, ``"segmentation"`` or ``"classification"``.
    coupling_weight: float, optional
        ``lambda`` of the coupling term (joint task only).
    top_k: int, optional
        Voxels averaged by the lesion-presence score ``s``.
    adaptive: bool, optional
        Learn the task weights (Kendall et al.); ``False`` fixes
        ``u_seg = u_cls = 0``.
    label_smoothing: float, optional
        Label smoothing of the cross-entropy.
    task_weights: tuple[float, float] or None, optional
        Fixed ``(w_seg, w_cls)`` of the joint task; implies ``adaptive=False``.

    Raises
    ------
    ValueError
        If ``task`` is unknown or a weight is negative.
    """

    def __init__(
        self,
        task: str = "joint",
        coupling_weight: float = 0.2,
        top_k: int = 64,
        adaptive: bool = True,
        label_smoothing: float = 0.05,
        task_weights: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f'Argument "task" should be one of {TASKS}, not {task!r}.')
        if coupling_weight < 0:
            raise ValueError('Argument "coupling_weight" should be >= 0.')
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError('Argument "label_smoothing" should be in [0, 1).')
        if task_weights is not None:
            adaptive = False
        self.fixed_weights = (0.5, 0.5) if task_weights is None else checked_task_weights(task_weights)
        self.task = task
        self.coupling_weight = float(coupling_weight)
        self.top_k = int(top_k)
        self.adaptive = bool(adaptive) and task == "joint"
        self.label_smoothing = float(label_smoothing)
        self.log_variance = nn.Parameter(torch.zeros(2), requires_grad=self.adaptive)

    def segmentation_terms(
        self, lesion_logits: torch.Tensor, lesion_target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_dice, L_bce)`` for a batch."""
        bce = F.binary_cross_entropy_with_logits(lesion_logits, lesion_target)
        with_lesion = lesion_target.flatten(1).sum(dim=1) > 0.5
        if bool(with_lesion.any()):
            probability = torch.sigmoid(lesion_logits[with_lesion]).flatten(1)
            target = lesion_target[with_lesion].flatten(1)
            intersection = (probability * target).sum(dim=1)
            per_scan = 1.0 - (2.0 * intersection + 1.0) / (
                probability.sum(dim=1) + target.sum(dim=1) + 1.0
            )
            dice = per_scan.mean()
        else:
            dice = lesion_logits.sum() * 0.0
        return dice, bce

    def coupling_term(
        self, lesion_logits: torch.Tensor, class_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """``L_cpl = mean BCE(s, y) + mean (q - s)^2``."""
        negative = (labels == NO_PNEUMONIA_INDEX).to(lesion_logits.dtype)
        presence = presence_score(torch.sigmoid(lesion_logits), self.top_k).clamp(1e-6, 1 - 1e-6)
        q = 1.0 - torch.softmax(class_logits, dim=1)[:, NO_PNEUMONIA_INDEX]
        empty = (negative * -torch.log1p(-presence)).mean()
        agree = ((q - presence.detach()) ** 2).mean()
        return empty + agree

    def forward(
        self,
        lesion_logits: torch.Tensor,
        class_logits: torch.Tensor,
        lesion_target: torch.Tensor,
        labels: torch.Tensor,
        coupling_scale: float = 1.0,
    ) -> LossTerms:
        """Compute the loss of one batch.

        Parameters
        ----------
        lesion_logits: torch.Tensor
            ``[N, 1, D, H, W]``.
        class_logits: torch.Tensor
            ``[N, K]``.
        lesion_target: torch.Tensor
            ``[N, 1, D, H, W]`` in [0, 1].
        labels: torch.Tensor
            ``[N]`` class indices (``int64``).
        coupling_scale: float, optional
            Multiplies ``lambda`` (the training schedule ramps it from 0 to 1,
            see :func:`inference.train.coupling_scale`).

        Returns
        -------
        LossTerms

        Raises
        ------
        ValueError
            If the shapes disagree.
        """
        if lesion_logits.shape != lesion_target.shape:
            raise ValueError(
                f'Argument "lesion_target" {tuple(lesion_target.shape)} should have the shape '
                f"of the lesion logits {tuple(lesion_logits.shape)}."
            )
        if labels.shape != (class_logits.shape[0],):
            raise ValueError('Argument "labels" should hold one class index per scan.')
        zero = lesion_logits.sum() * 0.0
        dice = bce = cls = coupling = zero
        if self.task in ("joint", "segmentation"):
            dice, bce = self.segmentation_terms(lesion_logits, lesion_target)
        if self.task in ("joint", "classification"):
            cls = F.cross_entropy(class_logits, labels, label_smoothing=self.label_smoothing)
        seg = dice + bce
        u = self.log_variance.clamp(-LOG_VARIANCE_LIMIT, LOG_VARIANCE_LIMIT)
        if self.task == "joint":
            coupling = self.coupling_term(lesion_logits, class_logits, labels)
            if self.adaptive:
                tasks = 0.5 * (torch.exp(-u[0]) * seg + u[0]) + 0.5 * (torch.exp(-u[1]) * cls + u[1])
            else:
                tasks = self.fixed_weights[0] * seg + self.fixed_weights[1] * cls
            total = tasks + self.coupling_weight * float(coupling_scale) * coupling
        elif self.task == "segmentation":
            total = seg
        else:
            total = cls
        if self.task != "joint":
            weights = torch.ones(2)
        elif self.adaptive:
            weights = torch.exp(-u.detach()) * 0.5
        else:
            weights = torch.tensor(self.fixed_weights)
        return LossTerms(
            total=total,
            seg=float(seg.detach()),
            dice=float(dice.detach()),
            bce=float(bce.detach()),
            cls=float(cls.detach()),
            coupling=float(coupling.detach()),
            weight_seg=float(weights[0]),
            weight_cls=float(weights[1]),
        )
