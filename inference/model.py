"""The joint DeepSC-style network: shared encoder, lesion decoder, classifier.

After DeepSC-COVID (Wang et al., "Joint Learning of 3D Lesion Segmentation
and Classification for Explainable COVID-19 Diagnosis", IEEE TMI 40(9),
2021), in a form lean enough to train on two CPU cores:

Cross-task feature subnet (:class:`Encoder`)
    A 3D encoder shared by both tasks. Level 0 keeps the full model grid,
    every further level halves the resolution (the first down-step only
    in-plane, because the model grid is anisotropic: 5 mm slices, 4 mm
    pixels). Each level is ``Conv3d -> BatchNorm3d -> LeakyReLU`` blocks;
    ``ModelConfig.factorised`` splits them into an in-plane ``1x3x3`` and a
    through-plane ``3x1x1`` convolution ((2+1)D) everywhere but the stem.
3D lesion subnet (:class:`LesionDecoder`)
    A U-Net decoder: transposed-convolution up-steps, skip connections from
    the encoder, and a ``1x1x1`` convolution to one lesion logit per voxel.
Classification subnet (:class:`LesionAttentionClassifier`)
    Combines the deepest shared features ``F`` (``C x d x h x w``) with the
    lesion subnet's output ``P`` (sigmoid of the lesion logits). ``P`` is
    max-pooled to the resolution of ``F`` (``A``) and used as an attention
    map. The classifier sees

    * ``g = mean_v F_v`` (global context),
    * ``a = sum_v A_v F_v / (sum_v A_v + 1e-3)`` (features pooled over the
      predicted lesions),
    * ``b`` = :func:`lesion_descriptors` (burden, presence, mean density under
      the lesions, left/right asymmetry of the lesion mass),

    and maps ``[g, a, b]`` through a two-layer perceptron to three class
    logits in :data:`CLASS_KEYS` order. ``P`` enters the classifier without
    gradient (``detach_attention``): the lesion subnet is trained by the
    segmentation and coupling terms of the loss, the shared encoder by both
    tasks.

The network returns *logits*. :class:`ProbabilityModel` wraps it for export
(sigmoid and softmax inside the graph), so the ONNX outputs are the
probabilities the model contract asks for; for a joint network it can gate
the lesion map by the classifier's "no pneumonia" probability.

``task`` selects the ablation variants trained with the same budget:
``"segmentation"`` (encoder + decoder; its class output is the constant
uniform distribution) and ``"classification"`` (encoder + a pooled
``[mean, max]`` classifier; its lesion output is constant zero).

This module imports torch; the node never imports it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.codes import CLASS_KEYS

LOGGER = logging.getLogger(__name__)

__all__ = [
    "CLASS_KEYS",
    "TASKS",
    "ModelConfig",
    "scale_gradient",
    "ConvBlock",
    "Encoder",
    "LesionDecoder",
    "LesionAttentionClassifier",
    "PooledClassifier",
    "DeepSCNet",
    "ProbabilityModel",
    "build_model",
    "presence_score",
    "lesion_descriptors",
]

#: The three network variants (joint, and the two single-task ablations).
TASKS = ("joint", "segmentation", "classification")

#: Slope of the LeakyReLU activations.
NEGATIVE_SLOPE = 0.01
#: Initial bias of the lesion logit (prior probability ~0.05).
LESION_PRIOR_LOGIT = -3.0


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`DeepSCNet` (stored in checkpoints).

    Parameters
    ----------
    task: str
        One of :data:`TASKS`.
    channels: tuple[int, ...]
        Feature channels per encoder level, full resolution first.
    strides: tuple[tuple[int, int, int], ...]
        Down-sampling factor ``(slice, row, column)`` into each level after
        the first; ``len(strides) == len(channels) - 1``.
    blocks: tuple[int, ...]
        Convolution blocks per encoder level (the decoder uses one per level).
    hidden: int
        Width of the classifier's hidden layer.
    dropout: float
        Dropout before the last classifier layer.
    top_k: int
        Voxels averaged by the lesion-presence score.
    n_classes: int
        Number of classes.
    detach_attention: bool
        Stop the classification gradient at the lesion map the classifier
        attends to (the lesion subnet then learns from the segmentation and
        coupling terms only; the shared encoder still learns from both).
    classifier_grad_scale: float
        Factor on the classification gradient that flows from the classifier
        into the shared encoder (1 = full sharing, 0 = the encoder learns from
        the segmentation and coupling terms only). Training only: the forward
        values, and so the exported graph, do not depend on it.
    factorised: bool
        (2+1)D blocks (:class:`ConvBlock`) everywhere but the stem; ``False``
        (the bundled model) gives full 3x3x3 blocks, which :meth:`from_dict`
        assumes when the field is missing (configs written before it).

    Raises
    ------
    ValueError
        If a value is out of range or the lists disagree in length.
    """

    task: str = "joint"
    channels: tuple[int, ...] = (8, 16, 48, 96, 192)
    strides: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    blocks: tuple[int, ...] = (1, 2, 2, 3, 3)
    hidden: int = 64
    dropout: float = 0.2
    top_k: int = 64
    n_classes: int = 3
    detach_attention: bool = True
    classifier_grad_scale: float = 1.0
    factorised: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f'Argument "task" should be one of {TASKS}, not {self.task!r}.')
        channels = tuple(int(c) for c in self.channels)
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError('Argument "channels" should be at least two positive integers.')
        strides = tuple(tuple(int(s) for s in stride) for stride in self.strides)
        if len(strides) != len(channels) - 1 or any(
            len(s) != 3 or min(s) < 1 for s in strides
        ):
            raise ValueError(
                'Argument "strides" should hold one (slice, row, column) factor of positive '
                "integers per level after the first."
            )
        blocks = tuple(int(b) for b in self.blocks)
        if len(blocks) != len(channels) or any(b < 1 for b in blocks):
            raise ValueError('Argument "blocks" should hold one positive integer per level.')
        if self.hidden < 1 or self.top_k < 1 or self.n_classes < 2:
            raise ValueError(
                'Arguments "hidden" and "top_k" should be positive and "n_classes" >= 2.'
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError('Argument "dropout" should be in [0, 1).')
        if not 0.0 <= float(self.classifier_grad_scale) <= 1.0:
            raise ValueError('Argument "classifier_grad_scale" should be in [0, 1].')
        object.__setattr__(self, "classifier_grad_scale", float(self.classifier_grad_scale))
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "blocks", blocks)

    @property
    def total_stride(self) -> tuple[int, int, int]:
        """Down-sampling factor of the deepest level, per axis."""
        total = [1, 1, 1]
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return (total[0], total[1], total[2])

    def check_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless ``shape`` (D, H, W) fits the strides."""
        if len(shape) != 3 or any(int(n) % s for n, s in zip(shape, self.total_stride)):
            raise ValueError(
                f'Argument "shape" {tuple(shape)} should be divisible by the total stride '
                f"{self.total_stride}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (inverse of :meth:`from_dict`)."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        data["strides"] = [list(s) for s in self.strides]
        data["blocks"] = list(self.blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output."""
        values = dict(data)
        values["channels"] = tuple(values.get("channels", cls.channels))
        values["strides"] = tuple(tuple(s) for s in values.get("strides", cls.strides))
        values["blocks"] = tuple(values.get("blocks", cls.blocks))
        # Checkpoints and manifests written before the field existed hold
        # plain 3x3x3 blocks.
        values.setdefault("factorised", False)
        return cls(**values)


class ConvBlock(nn.Sequential):
    """``Conv3d(3x3x3) -> BatchNorm3d -> LeakyReLU``, optionally strided.

    Factorised ("(2+1)D", as in R(2+1)D networks and the in-plane kernels of
    nnU-Net for anisotropic grids), the block is an in-plane
    ``Conv3d(1x3x3)`` followed by a through-plane ``Conv3d(3x1x1)``, each with
    its batch norm and LeakyReLU: the same 3 x 3 x 3 receptive field with
    12/27 of the weights and multiply-adds (for equal channel counts).

    Parameters
    ----------
    in_channels, out_channels: int
        Channel counts.
    stride: tuple[int, int, int], optional
        Convolution stride (down-sampling); factorised, the in-plane
        convolution takes the in-plane stride, the through-plane one the
        slice stride.
    factorised: bool, optional
        Build the (2+1)D form.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: tuple[int, int, int] = (1, 1, 1),
        factorised: bool = False,
    ) -> None:
        if not factorised:
            super().__init__(
                nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            )
            return
        super().__init__(
            nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride=(1, stride[1], stride[2]),
                      padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            nn.Conv3d(out_channels, out_channels, (3, 1, 1), stride=(stride[0], 1, 1),
                      padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(out_channels),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
        )


class Encoder(nn.Module):
    """The cross-task feature subnet: a strided 3D convolutional encoder.

    Parameters
    ----------
    config: ModelConfig
        Channels, strides and blocks per level.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        levels: list[nn.Module] = []
        in_channels = 1
        for level, (channels, blocks) in enumerate(zip(config.channels, config.blocks)):
            stride = (1, 1, 1) if level == 0 else config.strides[level - 1]
            # The stem (one input channel) stays a full 3x3x3 convolution.
            layers = [ConvBlock(in_channels, channels, stride, config.factorised and level > 0)]
            layers += [
                ConvBlock(channels, channels, factorised=config.factorised)
                for _ in range(blocks - 1)
            ]
            levels.append(nn.Sequential(*layers))
            in_channels = channels
        self.levels = nn.ModuleList(levels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the features of every level, full resolution first."""
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class LesionDecoder(nn.Module):
    """The 3D lesion subnet: a U-Net decoder with skip connections.

    Parameters
    ----------
    config: ModelConfig
        The encoder's channels and strides (mirrored).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in range(len(config.channels) - 1, 0, -1):
            deep, skip = config.channels[level], config.channels[level - 1]
            stride = config.strides[level - 1]
            self.up.append(nn.ConvTranspose3d(deep, skip, stride, stride=stride, bias=False))
            self.fuse.append(ConvBlock(2 * skip, skip, factorised=config.factorised))
        self.head = nn.Conv3d(config.channels[0], 1, 1)
        # Prior: lesions are rare, start at p = sigmoid(-3) ~ 0.05 so that the
        # BCE of the background does not swamp the first steps.
        if self.head.bias is not None:
            nn.init.constant_(self.head.bias, LESION_PRIOR_LOGIT)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Lesion logits ``[N, 1, D, H, W]`` from the encoder features."""
        x = features[-1]
        for up, fuse, skip in zip(self.up, self.fuse, reversed(features[:-1])):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def presence_score(probability: torch.Tensor, top_k: int) -> torch.Tensor:
    """Mean of the ``top_k`` largest voxel probabilities of each sample.

    Parameters
    ----------
    probability: torch.Tensor
        ``[N, 1, D, H, W]`` lesion probabilities.
    top_k: int
        Voxels averaged (clamped to the number of voxels).

    Returns
    -------
    torch.Tensor
        ``[N]`` scores in [0, 1]: close to 1 when the map holds a lesion of
        at least ``top_k`` voxels, close to 0 when it is empty.
    """
    flat = probability.flatten(1)
    k = min(int(top_k), flat.shape[1])
    return torch.topk(flat, k, dim=1).values.mean(dim=1)


#: Number of values returned by :func:`lesion_descriptors`.
N_LESION_DESCRIPTORS = 4


def lesion_descriptors(
    lesion_probability: torch.Tensor, image: torch.Tensor, top_k: int
) -> torch.Tensor:
    """Scan-level summaries of the lesion map, ``[N, 4]``.

    ``[log(mean P + 1e-4) / 10, presence (mean of the top-k P),
    density sum(P x) / (sum P + 1) (mean normalised HU under the lesions:
    ground glass vs consolidation), asymmetry |L - R| / (L + R + 1) (lesion
    mass in the two column halves of the lung-centred grid: unilateral vs
    bilateral)]``. All are ~0 for an empty map.
    """
    mass = lesion_probability.sum(dim=(1, 2, 3, 4))
    burden = torch.log(lesion_probability.mean(dim=(1, 2, 3, 4)) + 1e-4) / 10.0
    presence = presence_score(lesion_probability, top_k)
    density = (lesion_probability * image).sum(dim=(1, 2, 3, 4)) / (mass + 1.0)
    half = lesion_probability.shape[-1] // 2
    first = lesion_probability[..., :half].sum(dim=(1, 2, 3, 4))
    second = lesion_probability[..., half:].sum(dim=(1, 2, 3, 4))
    asymmetry = (first - second).abs() / (mass + 1.0)
    return torch.stack([burden, presence, density, asymmetry], dim=1)


class LesionAttentionClassifier(nn.Module):
    """The classification subnet of the joint model (lesion attention).

    Parameters
    ----------
    config: ModelConfig
        Channels of the deepest level, pooling factor, head width.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pool = config.total_stride
        self.top_k = config.top_k
        channels = config.channels[-1]
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels + N_LESION_DESCRIPTORS, config.hidden),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.n_classes),
        )

    def forward(
        self, deep: torch.Tensor, lesion_probability: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """Class logits ``[N, n_classes]``.

        Parameters
        ----------
        deep: torch.Tensor
            Deepest shared features ``[N, C, d, h, w]``.
        lesion_probability: torch.Tensor
            ``[N, 1, D, H, W]``, the lesion subnet's sigmoid output.
        image: torch.Tensor
            ``[N, 1, D, H, W]``, the normalised input.
        """
        attention = F.max_pool3d(lesion_probability, self.pool, self.pool)
        pooled = deep.mean(dim=(2, 3, 4))
        weight = attention.sum(dim=(2, 3, 4))
        attended = (deep * attention).sum(dim=(2, 3, 4)) / (weight + 1e-3)
        descriptors = lesion_descriptors(lesion_probability, image, self.top_k)
        return self.mlp(torch.cat([pooled, attended, descriptors], dim=1))


class PooledClassifier(nn.Module):
    """Classifier of the classification-only ablation: ``[mean, max]`` pooling.

    Parameters
    ----------
    config: ModelConfig
        Channels of the deepest level and head width.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        channels = config.channels[-1]
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels, config.hidden),
            nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.n_classes),
        )

    def forward(self, deep: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, n_classes]`` from ``[N, C, d, h, w]`` features."""
        pooled = torch.cat([deep.mean(dim=(2, 3, 4)), deep.amax(dim=(2, 3, 4))], dim=1)
        return self.mlp(pooled)


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass, ``scale`` times its gradient in the backward pass.

    Parameters
    ----------
    x: torch.Tensor
        Any tensor.
    scale: float
        Factor on the gradient that flows back through the result.
    """
    return x * scale + x.detach() * (1.0 - scale)


class DeepSCNet(nn.Module):
    """The joint network (or a single-task ablation of it).

    Parameters
    ----------
    config: ModelConfig | None, optional
        Hyper-parameters; the defaults are those of the bundled model.

    Notes
    -----
    ``forward`` returns ``(lesion_logits, class_logits)`` with shapes
    ``[N, 1, D, H, W]`` and ``[N, n_classes]`` for every ``task``; the output
    a single-task variant does not learn is a constant (lesion logit
    ``-20``, i.e. probability ~0, or zero class logits, i.e. a uniform
    distribution), so that every variant fits the same model contract.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.encoder = Encoder(self.config)
        self.decoder: LesionDecoder | None = None
        self.classifier: nn.Module | None = None
        if self.config.task in ("joint", "segmentation"):
            self.decoder = LesionDecoder(self.config)
        if self.config.task == "joint":
            self.classifier = LesionAttentionClassifier(self.config)
        elif self.config.task == "classification":
            self.classifier = PooledClassifier(self.config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lesion logits ``[N, 1, D, H, W]`` and class logits ``[N, K]``.

        Parameters
        ----------
        x: torch.Tensor
            Normalised CT ``[N, 1, D, H, W]`` (layout NCDHW).
        """
        features = self.encoder(x)
        if self.decoder is not None:
            lesion_logits = self.decoder(features)
        else:
            lesion_logits = x * 0.0 - 20.0
        if isinstance(self.classifier, LesionAttentionClassifier):
            attention = torch.sigmoid(lesion_logits)
            if self.config.detach_attention:
                attention = attention.detach()
            shared = features[-1]
            if self.training and self.config.classifier_grad_scale != 1.0:
                shared = scale_gradient(shared, self.config.classifier_grad_scale)
            class_logits = self.classifier(shared, attention, x)
        elif isinstance(self.classifier, PooledClassifier):
            class_logits = self.classifier(features[-1])
        else:
            class_logits = features[-1].mean(dim=(1, 2, 3, 4))[:, None].expand(
                -1, self.config.n_classes
            ) * 0.0
        return lesion_logits, class_logits


class ProbabilityModel(nn.Module):
    """Export wrapper: sigmoid and softmax inside the graph.

    With ``gate_class`` the lesion probability is gated by the classifier:
    ``P_out = sigmoid(z) * (1 - softmax(c)[gate_class])``, i.e. the lesion
    subnet's map times the probability that the scan is *not* of the gate
    class (``"no_pneumonia"``: the probability of pneumonia). A scan the
    classifier calls "no pneumonia" then gets an (almost) empty lesion map,
    a scan it calls COVID-19 or CAP keeps the lesion subnet's map (the factor
    is close to 1). Parameter-free, so it applies to any joint checkpoint.

    Parameters
    ----------
    network: DeepSCNet
        The trained network (put in ``eval()`` mode by the caller).
    gate_class: str | None, optional
        Key in :data:`CLASS_KEYS` of the gating class; ``None`` (default):
        no gate.

    Raises
    ------
    ValueError
        If ``gate_class`` is not a class key, or the network is not a joint
        network (a single-task network has no classifier to gate with).
    """

    def __init__(self, network: DeepSCNet, gate_class: str | None = None) -> None:
        super().__init__()
        self.network = network
        self.gate_index: int | None = None
        if gate_class is not None:
            if gate_class not in CLASS_KEYS[: network.config.n_classes]:
                raise ValueError(
                    f'Argument "gate_class" should be one of {CLASS_KEYS}, not {gate_class!r}.'
                )
            if network.config.task != "joint":
                raise ValueError(
                    "a lesion gate needs a joint network (a classifier to gate with), "
                    f'not task "{network.config.task}"'
                )
            self.gate_index = CLASS_KEYS.index(gate_class)

    def forward(self, ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lesion_probability [N,1,D,H,W], class_probabilities [N,K])``."""
        lesion_logits, class_logits = self.network(ct)
        lesion = torch.sigmoid(lesion_logits)
        classes = torch.softmax(class_logits, dim=1)
        if self.gate_index is not None:
            keep = 1.0 - classes[:, self.gate_index]
            lesion = lesion * keep[:, None, None, None, None]
        return lesion, classes


def build_model(config: ModelConfig | dict[str, Any] | None = None) -> DeepSCNet:
    """Build a :class:`DeepSCNet` from a config or its dict form.

    Parameters
    ----------
    config: ModelConfig | dict | None, optional
        Hyper-parameters (``None``: defaults).

    Returns
    -------
    DeepSCNet

    Raises
    ------
    TypeError
        If ``config`` has another type.
    """
    if config is None or isinstance(config, ModelConfig):
        return DeepSCNet(config)
    if isinstance(config, dict):
        return DeepSCNet(ModelConfig.from_dict(config))
    raise TypeError('Argument "config" should be a ModelConfig, a dict or None.')
