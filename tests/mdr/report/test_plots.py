"""mdr.report.plots: every plot writes a PNG, on small hand-made inputs with gaps (NaN, missing metrics)."""
import numpy as np
import pytest

from mdr.report import plots
from mdr.report.discovery import ModelRun

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_digits_tell_the_values_apart():
    # ceil(-log10(spread)) + 1, within [2, 4]: 0.5 -> 1 + 1 -> 2; 0.02 -> 2 + 1 = 3; 0.001 -> 3 + 1 = 4; 1e-6 -> 4
    assert [plots._digits(s) for s in (0.0, float("nan"), 5.0, 0.5, 0.02, 0.001, 1e-6)] == [2, 2, 2, 2, 3, 4, 4]


def test_every_plot_writes_a_png(tmp_path):
    runs = [ModelRun(path=n, label=n, model="m", task="ranking", config={},
                     metrics={"per_domain": {"a": {"auc": 0.7}, "b": {"auc": float("nan")}}, "overall": {"auc": 0.6}},
                     history={"epoch": [0.0, 1.0], "loss": [1.0, 0.5], "val_loss": [1.1, 0.9]}) for n in ("x", "y")]
    paths = [
        plots.plot_metric_bars(runs, ["auc", "logloss"], str(tmp_path / "bars.png"), "ranking"),
        plots.plot_training_curves(runs, str(tmp_path / "curves.png"), "ranking"),
        plots.plot_heatmaps([("t", ["f0", "f1"], np.array([[0.5, 0.51], [np.nan, np.nan]]))], ["a", "b"],
                            str(tmp_path / "heat.png"), "weight"),
        plots.plot_scann_curve({"k": 10, "batch_sizes": [1], "results": [
            {"index": "scann", "leaves": 4, "leaves_to_search": 2, "recall": 0.9, "queries_per_second": {"1": 10.0}},
            {"index": "exact", "recall": 1.0, "queries_per_second": {"1": 5.0}}]}, str(tmp_path / "scann.png"), "s"),
        plots.plot_index_recall({"index": {"a": {"recall@k": 0.9, "k": 10},
                                           "b": {"recall@k": 1.0, "brute_force": True}}},
                                str(tmp_path / "index.png"), "i"),
    ]
    assert paths == [str(tmp_path / n) for n in ("bars.png", "curves.png", "heat.png", "scann.png", "index.png")]
    assert all(_is_png(p) for p in paths)


def test_anchored_colour_limits_keep_noise_around_the_uniform_weight_pale():
    from mdr.report.plots import anchored_limits

    # 19 fields, uniform 1/19 = 0.05263; the map of the issue spans 0.05257-0.05270: the floor, a quarter
    # of the uniform weight (0.01316) each way, sets the scale, so these cells sit within 1% of its middle
    lo, hi = anchored_limits(np.array([[0.05257, 0.05270]]), 1 / 19, 0.25 / 19)
    assert (lo, hi) == pytest.approx((0.75 / 19, 1.25 / 19))
    # a real preference (0.10 against a uniform 0.05) spans the scale: 0.05 -+ 0.05
    assert anchored_limits(np.array([[0.10, 0.02, np.nan]]), 0.05, 0.0125) == pytest.approx((0.0, 0.10))
