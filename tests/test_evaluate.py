"""Metrics against hand-computed confusion matrices; streamed evaluation; the evaluate CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner

from tileseg.cli.main import cli
from tileseg.evaluation import EvaluateConfig, evaluate
from tileseg.metrics import compute_metrics, confusion_matrix, format_table


def test_metrics_match_hand_computed_three_classes() -> None:
    # rows: reference, columns: predicted; class 2 never occurs in the reference
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]])
    m = compute_metrics(cm)
    # diag 5,3,0; reference totals 6,6,0; predicted totals 7,4,1; unions 8,7,1
    assert m.pixel_accuracy == pytest.approx(8 / 12)
    assert m.mean_class_accuracy == pytest.approx((5 / 6 + 3 / 6) / 2)  # class 2 has no reference
    assert m.class_iou == pytest.approx((5 / 8, 3 / 7, 0.0))
    assert m.mean_iou == pytest.approx((5 / 8 + 3 / 7 + 0.0) / 3)
    assert m.frequency_weighted_iou == pytest.approx((6 * 5 / 8 + 6 * 3 / 7) / 12)
    assert m.class_accuracy[2] is None
    assert m.pixels == 12


def test_metrics_perfect_and_absent_class() -> None:
    m = compute_metrics(np.array([[4, 0, 0], [0, 2, 0], [0, 0, 0]]))
    assert m.pixel_accuracy == m.mean_iou == m.mean_class_accuracy == 1.0
    assert m.frequency_weighted_iou == 1.0
    assert m.class_iou[2] is None  # absent from reference and prediction: left out of the means


def test_metrics_two_classes_worked_example() -> None:
    # FCN paper formulas on a 2-class case: n = [[3, 1], [0, 4]]
    m = compute_metrics(np.array([[3, 1], [0, 4]]))
    assert m.class_iou == pytest.approx((3 / 4, 4 / 5))
    assert m.mean_class_accuracy == pytest.approx((3 / 4 + 4 / 4) / 2)
    assert m.frequency_weighted_iou == pytest.approx((4 * 3 / 4 + 4 * 4 / 5) / 8)


def test_confusion_matrix_counts_and_skips() -> None:
    ref = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 0])
    cm = confusion_matrix(ref, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    valid = np.array([True, True, False, True, True, True])
    assert confusion_matrix(ref, pred, 3, valid=valid).sum() == 4


def test_format_table_lists_everything() -> None:
    text = format_table(compute_metrics(np.array([[3, 1], [0, 4]])), ("land", "water"))
    for word in ("pixel accuracy", "mean class accuracy", "mean IoU", "frequency-weighted IoU",
                 "water", "confusion matrix"):
        assert word in text


@pytest.fixture
def pair(make_raster: Callable[..., Path]) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = rng.integers(1, 4, (50, 70)).astype(np.uint8)  # label values 1..3
    labels[:3] = 0  # nodata rows
    pred = (labels - 1).astype(np.uint8)
    flip = rng.random(labels.shape) < 0.2
    pred[flip] = rng.integers(0, 3, flip.sum())
    pred[:3] = 0
    return (make_raster(pred, "pred.tif", nodata=255), make_raster(labels, "labels.tif", nodata=0),
            pred, labels)


def test_evaluate_streams_like_the_whole_array(pair: tuple[Path, Path, np.ndarray, np.ndarray]
                                               ) -> None:
    pred_path, label_path, pred, labels = pair
    report = evaluate(EvaluateConfig(str(pred_path), str(label_path), num_classes=3,
                                     label_values=(1, 2, 3), block_size=16))
    valid = labels != 0
    expected = confusion_matrix(labels[valid] - 1, pred[valid], 3)
    assert np.array_equal(np.array(report.metrics.confusion), expected)
    assert report.metrics.pixels == valid.sum()


def test_evaluate_window(pair: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    pred_path, label_path, pred, labels = pair
    report = evaluate(EvaluateConfig(str(pred_path), str(label_path), num_classes=3,
                                     label_values=(1, 2, 3), window=(10, 5, 20, 30)))
    sub_l, sub_p = labels[10:30, 5:35], pred[10:30, 5:35]
    assert np.array_equal(np.array(report.metrics.confusion),
                          confusion_matrix(sub_l - 1, sub_p, 3))


def test_label_values_recorded_by_training_are_used(
        pair: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    """A mask from a tileseg-trained model lists each class's training label value; evaluate
    needs no --label-values for labels coded that way."""
    import json

    import rasterio

    pred_path, label_path, pred, labels = pair
    with rasterio.open(pred_path, "r+") as ds:
        ds.update_tags(TILESEG_CLASSES=json.dumps(
            [{"id": i, "name": n, "color": "#000000", "label_value": i + 1}
             for i, n in enumerate(("a", "b", "c"))]))
    report = evaluate(EvaluateConfig(str(pred_path), str(label_path)))
    valid = labels != 0
    assert np.array_equal(np.array(report.metrics.confusion),
                          confusion_matrix(labels[valid] - 1, pred[valid], 3))
    assert report.class_names == ("a", "b", "c")


def test_cli_evaluate_table_and_json(pair: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    pred_path, label_path, _, _ = pair
    runner = CliRunner()
    args = ["evaluate", str(pred_path), str(label_path), "--classes", "a,b,c",
            "--label-values", "1,2,3"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "mean IoU" in res.output and "confusion matrix" in res.output
    res = runner.invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert [c["name"] for c in data["classes"]] == ["a", "b", "c"]
    assert len(data["confusion_matrix"]) == 3
    assert set(data) >= {"pixel_accuracy", "mean_class_accuracy", "mean_iou",
                         "frequency_weighted_iou"}


def test_cli_evaluate_bad_inputs(make_raster: Callable[..., Path],
                                 pair: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    pred_path, label_path, pred, labels = pair
    runner = CliRunner()
    shifted = make_raster(labels, "shifted.tif", nodata=0,
                          transform=Affine(10.0, 0.0, 500100.0, 0.0, -10.0, 6000000.0))
    res = runner.invoke(cli, ["evaluate", str(pred_path), str(shifted), "--num-classes", "3",
                              "--label-values", "1,2,3"])
    assert res.exit_code == 2
    assert "grid" in res.output and len(res.output.strip().splitlines()) == 1
    # label value 3 is not declared
    res = runner.invoke(cli, ["evaluate", str(pred_path), str(label_path), "--num-classes", "2",
                              "--label-values", "1,2"])
    assert res.exit_code == 2 and "match no class" in res.output
    res = runner.invoke(cli, ["evaluate", str(pred_path), str(label_path)])
    assert res.exit_code == 2 and "--classes" in res.output
    res = runner.invoke(cli, ["evaluate", str(pred_path), "missing.tif", "--num-classes", "3"])
    assert res.exit_code == 2 and "missing.tif" in res.output


def test_labels_with_no_valid_pixel_are_an_error(make_raster: Callable[..., Path],
                                                 pair: tuple[Path, Path, np.ndarray, np.ndarray]
                                                 ) -> None:
    pred_path, _, pred, labels = pair
    empty = make_raster(np.zeros_like(labels), "empty.tif", nodata=0)
    res = CliRunner().invoke(cli, ["evaluate", str(pred_path), str(empty), "--num-classes", "3",
                                   "--label-values", "1,2,3"])
    assert res.exit_code == 2 and "no pixel" in res.stderr, res.output
    assert "mIoU" not in res.output and "mean IoU" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1
    # a window on the nodata rows only
    res = CliRunner().invoke(cli, ["evaluate", str(pred_path), str(pair[1]), "--num-classes",
                                   "3", "--label-values", "1,2,3", "--window", "0,0,3,70"])
    assert res.exit_code == 2 and "no pixel" in res.stderr, res.output
