"""The joint network and the task-aware loss (tiny grids, CPU)."""
from __future__ import annotations

import pytest
import torch

from inference.loss import TaskAwareLoss, soft_dice_loss
from inference.model import (
    CLASS_KEYS,
    ModelConfig,
    ProbabilityModel,
    build_model,
    lesion_descriptors,
    presence_score,
)

pytestmark = pytest.mark.torch

GRID = (16, 32, 32)
TINY = dict(channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)), blocks=(1, 1, 1))


def _net(task: str = "joint") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(task=task, **TINY)).eval()


@pytest.mark.parametrize("task", ["joint", "segmentation", "classification"])
def test_every_variant_has_both_outputs_with_static_shapes(task: str) -> None:
    net = _net(task)
    x = torch.randn(2, 1, *GRID)
    lesion, classes = net(x)
    assert lesion.shape == (2, 1, *GRID)
    assert classes.shape == (2, len(CLASS_KEYS))
    lesion_p, class_p = ProbabilityModel(net)(x)
    assert torch.all((lesion_p >= 0) & (lesion_p <= 1))
    assert torch.allclose(class_p.sum(dim=1), torch.ones(2), atol=1e-6)


def test_single_task_variants_output_constants_for_the_task_they_do_not_learn() -> None:
    x = torch.randn(1, 1, *GRID)
    lesion_p, _ = ProbabilityModel(_net("classification"))(x)
    assert float(lesion_p.max()) < 1e-6
    _, class_p = ProbabilityModel(_net("segmentation"))(x)
    assert torch.allclose(class_p, torch.full((1, 3), 1.0 / 3.0), atol=1e-6)
    assert _net("classification").decoder is None
    assert _net("segmentation").classifier is None


def test_joint_classifier_attends_to_the_lesion_output() -> None:
    net = _net("joint")
    x = torch.randn(1, 1, *GRID)
    with torch.no_grad():
        _, before = net(x)
        net.decoder.head.bias += 8.0  # the lesion map becomes "lesion everywhere"
        _, after = net(x)
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.parametrize("detach", [True, False])
def test_class_loss_trains_the_shared_encoder_and_the_decoder_only_without_detach(
    detach: bool,
) -> None:
    net = build_model(ModelConfig(task="joint", detach_attention=detach, **TINY)).train()
    _, classes = net(torch.randn(2, 1, *GRID))
    torch.nn.functional.cross_entropy(classes, torch.tensor([0, 2])).backward()
    encoder_grad = sum(float(p.grad.abs().sum()) for p in net.encoder.parameters())
    assert encoder_grad > 0
    head_grad = net.decoder.head.weight.grad
    if detach:
        assert head_grad is None or float(head_grad.abs().sum()) == 0.0
    else:
        assert float(head_grad.abs().sum()) > 0


def test_classifier_grad_scale_scales_the_class_gradient_into_the_encoder_only() -> None:
    """Same weights, same input: the deepest encoder level gets ``scale`` times the
    class gradient, the classifier its full gradient, and the outputs are equal."""
    x = torch.randn(2, 1, *GRID)
    grads = {}
    outputs = {}
    for scale in (1.0, 0.25):
        torch.manual_seed(0)
        net = build_model(ModelConfig(task="joint", classifier_grad_scale=scale, **TINY))
        net.train()
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        _, classes = net(x)
        torch.nn.functional.cross_entropy(classes, torch.tensor([0, 2])).backward()
        outputs[scale] = classes.detach()
        last = list(net.encoder.levels[-1].parameters())[0]
        grads[scale] = (last.grad.clone(), net.classifier.mlp[0].weight.grad.clone())
    assert torch.allclose(outputs[1.0], outputs[0.25], atol=1e-6)
    assert float(grads[1.0][0].abs().sum()) > 0
    assert torch.allclose(grads[0.25][0], 0.25 * grads[1.0][0], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads[0.25][1], grads[1.0][1], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="classifier_grad_scale"):
        ModelConfig(classifier_grad_scale=1.5)


def test_lesion_descriptors_tell_density_and_laterality() -> None:
    image = torch.full((2, 1, *GRID), -0.8)
    lesion = torch.zeros(2, 1, *GRID)
    lesion[0, 0, 4:8, 8:16, 2:10] = 1.0  # one side only
    image[0, 0, 4:8, 8:16, 2:10] = 0.3  # consolidation
    lesion[1, 0, 4:8, 8:16, 2:6] = 1.0  # both sides
    lesion[1, 0, 4:8, 8:16, 26:30] = 1.0
    image[1][lesion[1] > 0] = -0.3  # ground glass
    descriptors = lesion_descriptors(lesion, image, top_k=64)
    burden, presence, density, asymmetry = descriptors.T
    assert presence.tolist() == pytest.approx([1.0, 1.0])
    assert density[0] > density[1] + 0.5
    assert asymmetry[0] > 0.9 and asymmetry[1] < 0.05
    empty = lesion_descriptors(torch.zeros(1, 1, *GRID), image[:1], top_k=64)
    assert empty[0, 1:].abs().max() < 1e-6


def test_config_validation_and_round_trip() -> None:
    config = ModelConfig(task="segmentation", **TINY)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.total_stride == (2, 4, 4)
    config.check_shape(GRID)
    with pytest.raises(ValueError, match="shape"):
        config.check_shape((15, 32, 32))
    with pytest.raises(ValueError, match="task"):
        ModelConfig(task="detection")
    with pytest.raises(ValueError, match="strides"):
        ModelConfig(channels=(4, 8, 16), strides=((1, 2, 2),), blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="blocks"):
        ModelConfig(channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)), blocks=(1, 1))
    with pytest.raises(TypeError, match="config"):
        build_model("joint")  # type: ignore[arg-type]


def test_presence_score_separates_empty_from_lesion_maps() -> None:
    empty = torch.zeros(1, 1, *GRID)
    lesion = torch.zeros(1, 1, *GRID)
    lesion[0, 0, 4:8, 10:14, 10:14] = 1.0  # 64 voxels
    scores = presence_score(torch.cat([empty, lesion]), top_k=64)
    assert scores.tolist() == pytest.approx([0.0, 1.0])
    # a single bright voxel is not a lesion of 64 voxels
    speck = torch.zeros(1, 1, *GRID)
    speck[0, 0, 0, 0, 0] = 1.0
    assert float(presence_score(speck, top_k=64)) == pytest.approx(1.0 / 64)


def test_soft_dice_loss_bounds() -> None:
    target = torch.zeros(1, 1, *GRID)
    target[..., 2:6, 2:10, 2:10] = 1
    assert float(soft_dice_loss(target, target)) == pytest.approx(0.0, abs=1e-3)
    shifted = torch.roll(target, shifts=12, dims=4)
    assert float(soft_dice_loss(shifted, target)) == pytest.approx(1.0, abs=1e-2)
    with pytest.raises(ValueError, match="same shape"):
        soft_dice_loss(target, target[..., :4])


def _logits_from(probability: torch.Tensor) -> torch.Tensor:
    return torch.logit(probability.clamp(1e-4, 1 - 1e-4))


def test_coupling_penalises_lesions_on_no_pneumonia_scans() -> None:
    loss = TaskAwareLoss("joint", coupling_weight=1.0, top_k=16)
    target = torch.zeros(1, 1, *GRID)
    predicted_lesion = torch.full((1, 1, *GRID), 0.01)
    predicted_lesion[..., 4:8, 4:8, 4:8] = 0.99
    class_logits = torch.tensor([[0.0, 0.0, 4.0]])  # says "no pneumonia"
    label = torch.tensor([CLASS_KEYS.index("no_pneumonia")])
    with_lesion = loss(_logits_from(predicted_lesion), class_logits, target, label)
    without = loss(_logits_from(torch.full((1, 1, *GRID), 0.01)), class_logits, target, label)
    assert with_lesion.coupling > without.coupling + 1.0
    # the same lesion map is consistent with a covid19 label and class output
    covid = torch.tensor([CLASS_KEYS.index("covid19")])
    agree = loss(_logits_from(predicted_lesion), torch.tensor([[4.0, 0.0, 0.0]]),
                 (predicted_lesion > 0.5).float(), covid)
    assert agree.coupling < 0.1


def test_adaptive_task_weights_are_learned_only_for_the_joint_task() -> None:
    lesion = torch.randn(2, 1, *GRID, requires_grad=True)
    classes = torch.randn(2, 3, requires_grad=True)
    target = (torch.rand(2, 1, *GRID) > 0.8).float()
    labels = torch.tensor([0, 2])
    joint = TaskAwareLoss("joint")
    joint(lesion, classes, target, labels).total.backward()
    assert joint.log_variance.grad is not None and float(joint.log_variance.grad.abs().sum()) > 0
    seg = TaskAwareLoss("segmentation")
    terms = seg(lesion, classes, target, labels)
    assert terms.cls == 0.0 and terms.coupling == 0.0
    assert float(terms.total.detach()) == pytest.approx(terms.seg, rel=1e-5)
    cls = TaskAwareLoss("classification")
    terms = cls(lesion, classes, target, labels)
    assert terms.seg == 0.0
    assert float(terms.total.detach()) == pytest.approx(terms.cls, rel=1e-5)


def test_fixed_task_weights_weigh_the_two_losses_and_learn_nothing() -> None:
    """``task_weights`` replaces the learned weights; ``adaptive=False`` alone
    is still 1/2 and 1/2; the coupling term is added on top in both."""
    torch.manual_seed(3)
    lesion = torch.randn(2, 1, *GRID, requires_grad=True)
    classes = torch.randn(2, 3, requires_grad=True)
    target = (torch.rand(2, 1, *GRID) > 0.8).float()
    labels = torch.tensor([0, 2])
    fixed = TaskAwareLoss("joint", coupling_weight=0.3, task_weights=(1.0, 0.1))
    terms = fixed(lesion, classes, target, labels)
    assert not fixed.log_variance.requires_grad
    assert (terms.weight_seg, terms.weight_cls) == pytest.approx((1.0, 0.1))
    assert float(terms.total.detach()) == pytest.approx(
        terms.seg + 0.1 * terms.cls + 0.3 * terms.coupling, rel=1e-5
    )
    assert terms.cls > 0.1 and terms.coupling > 0.01  # so the weights are visible in the total
    half = TaskAwareLoss("joint", coupling_weight=0.3, adaptive=False)(lesion, classes, target,
                                                                      labels)
    assert float(half.total.detach()) == pytest.approx(
        0.5 * half.seg + 0.5 * half.cls + 0.3 * half.coupling, rel=1e-5
    )
    assert (half.weight_seg, half.weight_cls) == pytest.approx((0.5, 0.5))
    for bad in ((0.0, 0.0), (1.0, -0.1), (1.0,)):
        with pytest.raises(ValueError, match="task_weights"):
            TaskAwareLoss("joint", task_weights=bad)  # type: ignore[arg-type]


def test_loss_rejects_mismatched_shapes() -> None:
    loss = TaskAwareLoss()
    with pytest.raises(ValueError, match="lesion_target"):
        loss(torch.zeros(1, 1, *GRID), torch.zeros(1, 3), torch.zeros(1, 1, 8, 8, 8),
             torch.tensor([0]))
    with pytest.raises(ValueError, match="labels"):
        loss(torch.zeros(1, 1, *GRID), torch.zeros(1, 3), torch.zeros(1, 1, *GRID),
             torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="task"):
        TaskAwareLoss("detection")


def test_classification_only_variant_of_the_bundled_size_fits_a_few_labelled_scans() -> None:
    """Gradients reach the whole classification-only network (the ablation's sanity check).

    docs/model.md reports that this variant stays at chance level on 696
    phantoms; here it must memorise six scans, so that result is the data's
    and the budget's, not a broken head.
    """
    torch.manual_seed(0)
    net = build_model(ModelConfig(task="classification")).train()
    x = torch.randn(6, 1, *GRID)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(net(x)[1], labels)
        first = float(loss.detach()) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert first > 0.5
    assert float(loss.detach()) < 0.1


def _kernels(net: torch.nn.Module) -> list[tuple[int, ...]]:
    return [tuple(m.kernel_size) for m in net.modules() if isinstance(m, torch.nn.Conv3d)]


def test_factorised_blocks_split_each_convolution_into_in_plane_and_through_plane() -> None:
    """(2+1)D: every block but the stem is 1x3x3 then 3x1x1, strides split the same
    way, and the outputs keep the full network's shapes."""
    factorised = build_model(ModelConfig(task="joint", factorised=True, **TINY))
    full = build_model(ModelConfig(task="joint", **TINY))
    assert ModelConfig().factorised is False  # the bundled model's 3x3x3 blocks
    stem = factorised.encoder.levels[0][0][0]
    assert tuple(stem.kernel_size) == (3, 3, 3)
    kernels = _kernels(factorised)
    assert kernels.count((1, 3, 3)) == kernels.count((3, 1, 1)) > 0
    assert (3, 3, 3) not in kernels[1:-1]  # only the stem; the head is 1x1x1
    assert set(_kernels(full)) == {(3, 3, 3), (1, 1, 1)}
    down = factorised.encoder.levels[2][0]  # stride (2, 2, 2)
    assert tuple(down[0].stride) == (1, 2, 2) and tuple(down[3].stride) == (2, 1, 1)
    x = torch.randn(1, 1, *GRID)
    for net in (factorised.eval(), full.eval()):
        lesion, classes = net(x)
        assert lesion.shape == (1, 1, *GRID) and classes.shape == (1, 3)
    weights = sum(p.numel() for p in factorised.encoder.parameters())
    assert weights < sum(p.numel() for p in full.encoder.parameters())


def test_configs_written_before_factorised_blocks_load_as_full_kernels() -> None:
    """Manifests and checkpoints written before the field (model 1.1.0 included)
    have no "factorised" key: their weights must load into the 3x3x3 network
    they were trained in."""
    old = build_model(ModelConfig(task="joint", factorised=False, **TINY))
    data = old.config.to_dict()
    del data["factorised"]
    config = ModelConfig.from_dict(data)
    assert config.factorised is False
    build_model(config).load_state_dict(old.state_dict())
    with pytest.raises(RuntimeError):
        build_model(ModelConfig.from_dict({**data, "factorised": True})).load_state_dict(
            old.state_dict()
        )
