"""Training from a model-grid cache: loss goes down, checkpoints resume."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.dataset import CLASS_KEYS, Case, build_cache, load_cache
from inference.export import build_manifest, load_checkpoint_network
from inference.geometry import Geometry
from inference.loss import TaskAwareLoss
from inference.model import ModelConfig, build_model
from inference.train import (
    TrainConfig,
    augment_batch,
    calibrate_threshold,
    coupling_scale,
    cpu_has_native_bf16,
    learning_rate,
    select_threshold,
    train,
    use_bf16,
)

pytestmark = pytest.mark.torch

TINY = dict(channels=(4, 8, 16), strides=((1, 2, 2), (2, 2, 2)), blocks=(1, 1, 1))


def synthetic_case(index: int) -> Case:
    """An ellipsoidal 'lung' with one spherical lesion (none for no_pneumonia)."""
    rng = np.random.default_rng(index)
    geometry = Geometry(shape=(40, 64, 64), spacing=(5.0, 5.0, 5.0), origin=(0.0, 0.0, 0.0))
    k, i, j = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    hu = np.full(geometry.shape, 40.0, dtype=np.float32)
    lung = ((k - 20) / 15) ** 2 + ((i - 32) / 20) ** 2 + ((j - 32) / 25) ** 2 < 1
    hu[lung] = -850.0
    label = CLASS_KEYS[index % 3]
    mask = np.zeros(geometry.shape, dtype=bool)
    if label != "no_pneumonia":
        centre = rng.uniform([14, 24, 22], [26, 40, 42])
        radius = rng.uniform(4.0, 6.0)
        mask = ((k - centre[0]) ** 2 + (i - centre[1]) ** 2 + (j - centre[2]) ** 2
                < radius**2) & lung
        hu[mask] = -300.0 if label == "covid19" else 30.0
    hu += rng.normal(0.0, 10.0, geometry.shape).astype(np.float32)
    return Case(f"synthetic-{index}", hu.astype(np.int16), mask, geometry, label)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cache")
    manifest = build_manifest(grid_shape=(16, 32, 32), spacing_mm=(12.0, 10.0, 10.0))
    build_cache((synthetic_case(i) for i in range(18)), directory, manifest, {"kind": "test"})
    return directory


def _training_set_loss(network: torch.nn.Module, cache_dir: Path, n: int) -> dict[str, float]:
    """The joint loss over the first ``n`` cached cases (batch statistics, no grad)."""
    cache = load_cache(cache_dir)
    x = torch.from_numpy(cache.images[:n].astype(np.float32))[:, None]
    y = torch.from_numpy(cache.lesions[:n].astype(np.float32) / 255.0)[:, None]
    labels = torch.from_numpy(cache.labels[:n])
    network.train()
    with torch.no_grad():
        terms = TaskAwareLoss("joint", adaptive=False)(*network(x), y, labels)
    return terms.as_dict()


def test_tiny_training_lowers_the_loss_and_writes_its_products(cache_dir: Path,
                                                              tmp_path: Path) -> None:
    model_config = ModelConfig(task="joint", **TINY)
    config = TrainConfig(steps=100, batch_size=2, lr=1e-2, warmup_steps=5, val_cases=3,
                         log_every=10, checkpoint_every=50, max_shift=(1, 2, 2), threads=2,
                         device="cpu", seed=4, eval_every=0)
    torch.manual_seed(config.seed)  # the initial weights train() starts from
    before = _training_set_loss(build_model(model_config), cache_dir, 15)
    result = train(cache_dir, tmp_path, model_config, config, progress=False)
    after = _training_set_loss(load_checkpoint_network(result.checkpoint)[0], cache_dir, 15)
    assert after["loss"] < 0.85 * before["loss"]
    assert after["seg"] < 0.8 * before["seg"]
    assert after["cls"] < before["cls"] and after["coupling"] < before["coupling"]
    assert len(result.history) == 10
    assert result.validation[-1]["dice_mean"] > 0.3  # held-out synthetic lesions are found
    checkpoint = torch.load(str(result.checkpoint), weights_only=False)
    assert checkpoint["format"] == "deepsc-node-checkpoint"
    assert checkpoint["step"] == config.steps
    assert checkpoint["grid"]["shape"] == [16, 32, 32]
    assert checkpoint["data"] == {"source": {"kind": "test"}, "train_cases": 15, "val_cases": 3}
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["validation"]) == 1
    assert 0.0 <= history["validation"][0]["accuracy"] <= 1.0
    png = (tmp_path / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_resumes_from_the_last_checkpoint(cache_dir: Path, tmp_path: Path) -> None:
    model_config = ModelConfig(task="segmentation", **TINY)
    first = TrainConfig(steps=10, log_every=5, checkpoint_every=5, val_cases=3, device="cpu")
    train(cache_dir, tmp_path, model_config, first, progress=False)
    again = TrainConfig(steps=20, log_every=5, checkpoint_every=5, val_cases=3, device="cpu")
    result = train(cache_dir, tmp_path, model_config, again, progress=False)
    assert [p["step"] for p in result.history] == [5.0, 10.0, 15.0, 20.0]
    assert torch.load(str(result.checkpoint), weights_only=False)["step"] == 20
    with pytest.raises(ValueError, match="another network"):
        train(cache_dir, tmp_path, ModelConfig(task="joint", **TINY), again, progress=False)


def test_training_refuses_a_grid_the_network_cannot_divide(cache_dir: Path,
                                                          tmp_path: Path) -> None:
    # total stride (2, 6, 6) does not divide the 16 x 32 x 32 grid of the cache
    config = ModelConfig(channels=(4, 8, 16), strides=((1, 3, 3), (2, 2, 2)), blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="divisible"):
        train(cache_dir, tmp_path, config, TrainConfig(steps=1, val_cases=3), progress=False)


def test_augmentation_moves_image_and_target_together() -> None:
    rng = np.random.default_rng(3)
    images = np.full((1, 16, 32, 32), -1.0, dtype=np.float32)
    lesions = np.zeros((1, 16, 32, 32), dtype=np.float32)
    images[0, 6:10, 12:18, 12:18] = 0.5
    lesions[0, 6:10, 12:18, 12:18] = 1.0
    out_images, out_lesions = augment_batch(images, lesions, rng, max_shift=(2, 4, 4))
    assert out_images.shape == images.shape and out_lesions.shape == lesions.shape
    assert out_lesions.sum() == lesions.sum()  # shifted, not cropped
    bright = np.argwhere(out_images[0] > 0.2).mean(axis=0)
    target = np.argwhere(out_lesions[0] > 0.5).mean(axis=0)
    assert np.allclose(bright, target)
    assert not np.array_equal(out_images, images)
    assert images[0, 0, 0, 0] == -1.0  # input untouched


def test_learning_rate_warms_up_then_decays() -> None:
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10)
    rates = [learning_rate(s, config) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4)
    assert max(rates) == pytest.approx(1e-3)
    assert rates[-1] < 0.1e-3
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="max_shift"):
        TrainConfig(max_shift=(1, 2))
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="coupling_ramp"):
        TrainConfig(coupling_ramp=(0.6, 0.2))
    with pytest.raises(ValueError, match="task_weights"):
        TrainConfig(task_weights=(0.0, 0.0))
    assert TrainConfig(task_weights=(1, 0.1)).task_weights == (1.0, 0.1)


def test_train_command_task_weights_are_checked_before_the_cache_is_built(
    tmp_path: Path,
) -> None:
    """A bad ``--task-weights`` is exit 2 with the reason, and nothing is cached;
    it cannot be combined with ``--fixed-weights``."""
    base = [sys.executable, "-m", "pacs_node.cli", "train", "--phantoms", "2",
            "--out", str(tmp_path / "run"), "--no-progress"]
    negative = subprocess.run(base + ["--task-weights", "1", "-1"], capture_output=True,
                              text=True, timeout=120)
    assert negative.returncode == 2
    assert "task_weights" in negative.stderr and "Traceback" not in negative.stderr
    assert not (tmp_path / "run").exists()
    both = subprocess.run(base + ["--task-weights", "1", "0.1", "--fixed-weights"],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_precision_and_coupling_schedule() -> None:
    cpu = torch.device("cpu")
    assert use_bf16("fp32", cpu) is False
    assert use_bf16("bf16", cpu) is True
    assert use_bf16("auto", cpu) is cpu_has_native_bf16()
    config = TrainConfig(steps=100, coupling_ramp=(0.2, 0.6))
    scales = [coupling_scale(s, config) for s in (0, 19, 20, 40, 60, 99)]
    assert scales == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_auto_precision_asks_for_bf16_instructions_not_onednn_emulation(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: bool
) -> None:
    # oneDNN reports bf16 support on any AVX-512 CPU (emulated, slower than
    # fp32); "auto" must follow the instruction checks only.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_has_native_bf16() is expected
    assert use_bf16("auto", torch.device("cpu")) is expected


def test_threshold_calibration_picks_the_best_validation_threshold(cache_dir: Path) -> None:
    cache = load_cache(cache_dir)

    # calibrate_threshold runs the model on the lesion cases, in order
    queue = [cache.lesions[n].astype(np.float32) / 255.0 for n in range(len(cache))
             if (cache.lesions[n] >= 128).any()]

    class Oracle(torch.nn.Module):
        """Lesion logit 8 (target - 0.7): p >= 0.5 misses the edges, p >= 0.25 does not."""

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            target = torch.from_numpy(queue.pop(0))[None, None]
            return 8.0 * (target - 0.7), torch.zeros(1, 3)

    threshold, scores = calibrate_threshold(
        Oracle(), cache, range(len(cache)), torch.device("cpu")  # type: ignore[arg-type]
    )
    assert threshold <= 0.3
    assert scores["0.25"] > scores["0.50"] + 0.005
    # a gain within the tolerance keeps the threshold nearest 0.5
    assert select_threshold({"0.25": 0.862, "0.45": 0.8605, "0.50": 0.8596}) == 0.5
    assert select_threshold({"0.25": 0.90, "0.40": 0.85, "0.50": 0.84}) == 0.25
    assert select_threshold({}) == 0.5


def test_cache_holds_prepared_inputs_and_aligned_targets(cache_dir: Path) -> None:
    cache = load_cache(cache_dir)
    assert cache.images.shape == (18, 16, 32, 32) and cache.images.dtype == np.float16
    assert list(cache.labels[:3]) == [0, 1, 2]
    for n in range(3):
        case = synthetic_case(n)
        lesion_ml = case.lesion_mask.sum() * case.geometry.voxel_volume_ml
        cached_ml = cache.lesions[n].astype(np.float64).sum() / 255.0 * 12 * 10 * 10 / 1000
        assert cached_ml == pytest.approx(lesion_ml, rel=0.05, abs=0.5)
        if lesion_ml:
            # the lesion target sits on the lesion's HU in the cached input
            inside = cache.images[n][cache.lesions[n] > 200].astype(np.float32).mean()
            outside_lung = cache.images[n][cache.lesions[n] == 0].astype(np.float32).min()
            assert inside > outside_lung + 0.3


def test_train_command_on_a_dataset_directory(tmp_path: Path) -> None:
    """``deepsc-node train --data`` reads the NIfTI + dataset.json layout."""
    from inference.dataset import write_dataset

    write_dataset(tmp_path / "data", [synthetic_case(i) for i in range(6)])
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "pacs_node.cli", "train", "--data", str(tmp_path / "data"),
        "--out", str(out), "--steps", "4", "--val-cases", "3", "--eval-every", "0",
        "--grid", "16", "32", "32", "--spacing", "12", "10", "10",
        "--channels", "4", "8", "16", "--threads", "1", "--device", "cpu", "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 4
    cache = json.loads((out / "cache" / "cache.json").read_text())
    assert cache["source"]["kind"] == "dataset"
    assert cache["grid"]["shape"] == [16, 32, 32]
    assert len(list((out / "cache").glob("case_*.npz"))) == 6
    checkpoint = torch.load(str(out / "last.pt"), weights_only=False)
    assert checkpoint["model_config"]["channels"] == [4, 8, 16]
    assert checkpoint["data"]["train_cases"] == 3
    # what autocast really did, for the manifest (the command said "auto")
    assert checkpoint["precision"] == (
        "bf16" if use_bf16("auto", torch.device("cpu")) else "fp32"
    )
    broken = subprocess.run(
        [sys.executable, "-m", "pacs_node.cli", "train", "--data", str(tmp_path / "none"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert broken.returncode == 1 and "dataset.json" in broken.stderr


def test_command_defaults_are_the_train_config_defaults() -> None:
    from dataclasses import fields

    from inference.commands import TRAIN_DEFAULTS

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key, value in TRAIN_DEFAULTS.items():
        assert defaults[key] == value, key


def test_train_architecture_options() -> None:
    """--strides/--blocks/--kernels reach the ModelConfig; defaults are the bundled
    model's; a level count that disagrees is an error that says what is needed."""
    import argparse

    from inference.commands import architecture, stride_triple
    from inference.model import ModelConfig

    def args(**kw: object) -> argparse.Namespace:
        values = dict(task="joint", channels=None, strides=None, blocks=None,
                      kernels="full", classifier_grad_scale=0.1)
        values.update(kw)
        return argparse.Namespace(**values)

    default = architecture(args())
    assert default == ModelConfig(task="joint", classifier_grad_scale=0.1)
    factorised = architecture(args(kernels="factorised", channels=[4, 8, 16]))
    assert factorised.factorised is True
    assert factorised.strides == ((1, 2, 2), (2, 2, 2)) and factorised.blocks == (1, 2, 2)
    custom = architecture(args(channels=[4, 8, 16], strides=[(2, 2, 2), (1, 2, 2)],
                               blocks=[1, 1, 2]))
    assert custom.strides == ((2, 2, 2), (1, 2, 2)) and custom.blocks == (1, 1, 2)
    with pytest.raises(ValueError, match="3 levels need 2 --strides"):
        architecture(args(channels=[4, 8, 16], strides=[(2, 2, 2)]))
    assert stride_triple("1x2X2") == (1, 2, 2)
    for bad in ("2x2", "0x2x2", "axbxc"):
        with pytest.raises(argparse.ArgumentTypeError, match="2x2x2"):
            stride_triple(bad)
