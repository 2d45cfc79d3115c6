"""Evaluation metrics and the evaluate path (onnxruntime only, no torch)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.dataset import CLASS_KEYS, Case, phantom_case
from inference.evaluate import (
    CaseResult,
    Prediction,
    auc_one_vs_rest,
    compute_metrics,
    confusion_matrix,
    dice_score,
    evaluate_cases,
    evaluate_models,
    format_comparison,
    format_report,
    load_predictor,
    plot_confusion_matrix,
    sensitivity_specificity,
)
from inference.geometry import Geometry
from tests.onnx_fixtures import band_model_dir

GRID = (16, 32, 32)
SPACING = (20.0, 12.0, 12.0)


def test_dice_score() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    b = np.zeros((4, 4, 4), dtype=bool)
    assert dice_score(a, b) is None
    a[0, :2] = True  # 8 voxels
    b[0, 1:3] = True  # 8 voxels, 4 shared
    assert dice_score(a, b) == pytest.approx(0.5)
    assert dice_score(a, a) == pytest.approx(1.0)
    assert dice_score(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        dice_score(a, b[:2])


def test_confusion_sensitivity_specificity() -> None:
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    predicted = [0, 0, 1, 1, 2, 2, 2, 0]
    matrix = confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    sensitivity, specificity = sensitivity_specificity(matrix)
    assert sensitivity == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    # class 0: negatives are 5 scans, one of them (a class-2 scan) called 0
    assert specificity == pytest.approx([4 / 5, 5 / 6, 4 / 5])


def test_auc_one_vs_rest() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    perfect = np.eye(3)[labels] * 0.8 + 0.1
    assert auc_one_vs_rest(labels, perfect) == pytest.approx([1.0, 1.0, 1.0])
    reversed_scores = 1.0 - perfect
    assert auc_one_vs_rest(labels, reversed_scores) == pytest.approx([0.0, 0.0, 0.0])
    constant = np.full((6, 3), 1 / 3)
    assert auc_one_vs_rest(labels, constant) == pytest.approx([0.5, 0.5, 0.5])
    # class 0: one positive scores below all 4 negatives -> 4 of 8 pairs right
    scores = perfect.copy()
    scores[1, 0] = 0.05
    assert auc_one_vs_rest(labels, scores)[0] == pytest.approx(4 / 8)
    # ... or ties with all 4 negatives -> ties count one half
    scores[1, 0] = 0.1
    assert auc_one_vs_rest(labels, scores)[0] == pytest.approx((4 + 0.5 * 4) / 8)
    assert auc_one_vs_rest([0, 0], np.full((2, 3), 0.3)) == [None, None, None]


def _result(label: str, predicted: str, ref: int, pred: int, inter: int) -> CaseResult:
    probabilities = tuple(0.8 if k == predicted else 0.1 for k in CLASS_KEYS)
    return CaseResult("c", label, predicted, probabilities, ref, pred, inter, 0.1)


def test_compute_metrics_definitions() -> None:
    cases = [
        _result("covid19", "covid19", 100, 100, 90),  # Dice 0.9
        _result("cap", "covid19", 300, 100, 100),  # Dice 0.5
        _result("no_pneumonia", "no_pneumonia", 0, 0, 0),  # not in the mean
        _result("no_pneumonia", "no_pneumonia", 0, 10, 0),  # a false positive
    ]
    metrics = compute_metrics(cases)
    assert metrics["dice_mean"] == pytest.approx(0.7)
    assert metrics["dice_pooled"] == pytest.approx(2 * 190 / 610)
    assert metrics["false_positive_rate"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["sensitivity"]["cap"] == 0.0
    assert metrics["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 2]]
    text = format_report(__import__("inference.evaluate", fromlist=["x"]).EvaluationReport(
        "m", cases, metrics))
    assert "accuracy: 0.750" in text and "confusion matrix" in text
    with pytest.raises(ValueError, match="cases"):
        compute_metrics([])


@pytest.fixture(scope="module")
def phantoms() -> list[Case]:
    return [phantom_case(5, n, matrix=64) for n in range(3)]


def test_evaluate_cases_with_oracle_and_empty_predictors(phantoms: list[Case]) -> None:
    truth = {id(c.hu): c for c in phantoms}

    def oracle(hu: np.ndarray, geometry: Geometry) -> Prediction:
        case = truth[id(hu)]
        probabilities = tuple(1.0 if k == case.label else 0.0 for k in CLASS_KEYS)
        return Prediction(case.lesion_mask.copy(), probabilities)

    def empty(hu: np.ndarray, geometry: Geometry) -> Prediction:
        return Prediction(np.zeros(hu.shape, dtype=bool), (0.0, 0.0, 1.0))

    reports = evaluate_cases({"oracle": oracle, "empty": empty}, phantoms)
    best, worst = reports["oracle"].metrics, reports["empty"].metrics
    assert best["dice_mean"] == pytest.approx(1.0) and best["accuracy"] == 1.0
    assert best["auc"] == {k: 1.0 for k in CLASS_KEYS}
    assert best["false_positive_rate"] == 0.0
    assert worst["dice_mean"] == 0.0 and worst["accuracy"] == pytest.approx(1 / 3)
    assert worst["confusion_matrix"] == [[0, 0, 1], [0, 0, 1], [0, 0, 1]]
    table = format_comparison(reports)
    assert "| lesion Dice, mean per scan | 1.000 | 0.000 |" in table


def test_model_directory_runs_through_the_runtime_path(tmp_path: Path,
                                                      phantoms: list[Case]) -> None:
    model_dir = band_model_dir(tmp_path / "band", shape=GRID, spacing=SPACING)
    predict = load_predictor(model_dir, threads=1)
    case = phantoms[0]
    prediction = predict(case.hu, case.geometry)
    assert prediction.lesion_mask.shape == case.hu.shape
    assert prediction.lesion_mask.dtype == bool
    assert sum(prediction.class_probabilities) == pytest.approx(1.0, abs=1e-5)
    reports = evaluate_models([model_dir], seed=5, n=3, matrix=64, threads=1)
    (report,) = reports.values()
    assert [c.case_id for c in report.cases] == ["phantom-5-0", "phantom-5-1", "phantom-5-2"]
    assert report.cases[0].predicted_voxels == int(prediction.lesion_mask.sum())
    assert report.metrics["n_per_class"] == {k: 1 for k in CLASS_KEYS}
    assert report.metrics["seed"] == 5
    png = plot_confusion_matrix(report.metrics["confusion_matrix"], CLASS_KEYS,
                                tmp_path / "cm.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_command_prints_json(tmp_path: Path) -> None:
    model_dir = band_model_dir(tmp_path / "band", shape=GRID, spacing=SPACING)
    out_json = tmp_path / "eval.json"
    done = subprocess.run(
        [sys.executable, "-m", "pacs_node.cli", "evaluate", "--model", str(model_dir),
         "--name", "band", "--seed", "5", "--n", "3", "--matrix", "64", "--threads", "1",
         "--json", "--out-json", str(out_json), "--confusion-png", str(tmp_path / "cm.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["band"]
    assert metrics["n_scans"] == 3
    assert set(metrics) >= {"dice_mean", "dice_pooled", "accuracy", "sensitivity",
                            "specificity", "auc", "confusion_matrix"}
    saved = json.loads(out_json.read_text())
    assert len(saved["band"]["cases"]) == 3
    assert (tmp_path / "cm.png").stat().st_size > 1000


def test_the_node_side_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import inference, inference.evaluate, inference.dataset, inference.commands\n"
        "import inference.cli, pacs_node.cli\n"
        "pacs_node.cli.build_parser()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
