"""benchmarks.curves: the epoch early stopping restores, the table's marks, and a real two-epoch run."""
import json
import os
import types

import numpy as np
import pytest
import tf_keras as keras

from benchmarks import curves


def test_stopped_at_is_the_epoch_early_stopping_restores():
    # Best 0.3 at epoch 2; epochs 3 and 4 do not beat it -> patience 2 stops after epoch 4 and restores 2,
    # though epoch 5 would have been better. Without patience (0) every epoch runs: the best of all, 5.
    curve = [0.1, 0.3, 0.2, 0.25, 0.4]
    assert curves.stopped_at(curve, 2) == 2 and curves.stopped_at(curve, 3) == 5 and curves.stopped_at(curve, 0) == 5
    assert curves.stopped_at([0.5, 0.5, 0.5], 1) == 1  # a tie is no improvement


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_stopped_at_agrees_with_keras_early_stopping(patience):
    rng = np.random.default_rng(patience)
    for curve in [list(rng.random(12)) for _ in range(20)] + [[0.1, 0.3, 0.2, 0.25, 0.4], [0.5] * 6]:
        stopping = keras.callbacks.EarlyStopping(monitor="v", mode="max", patience=patience)
        stopping.set_model(types.SimpleNamespace(stop_training=False))
        stopping.on_train_begin()
        for epoch, value in enumerate(curve):
            stopping.on_epoch_end(epoch, {"v": value})
            if stopping.model.stop_training:
                break
        assert curves.stopped_at(curve, patience) == stopping.best_epoch + 1


def _row(epoch, validation, overall):
    return {"epoch": epoch, "validation": validation, "overall": overall, "per_domain": {"d0": overall}}


def test_table_marks_the_stopped_and_the_best_reported_epoch():
    run = {"model": "adi", "seed": 0, "stopped_at": 1, "curve": [_row(1, 0.5, 0.2), _row(2, 0.4, 0.3)]}
    lines = curves.table([run], "eval", 50).splitlines()
    assert lines[0].split()[:3] == ["model", "seed", "epoch"] and lines[0].rstrip().endswith("mark")
    assert lines[1].rstrip().endswith("stopped") and lines[2].rstrip().endswith("best on eval")
    md = curves.table([run], "eval", 50, markdown=True).splitlines()
    assert md[2] == "| adi | 0 | 1 | 0.5000 | 0.2000 | 0.2000 | stopped |"


def test_a_run_records_both_curves_every_epoch(synthetic_data, tmp_path, capsys):
    data_dir, _ = synthetic_data
    out = str(tmp_path / "curves")
    assert curves.main(["--data", data_dir, "--models", "dnn-domain", "--epochs", "2", "--output", out]) == 0
    with open(os.path.join(out, "curves.json")) as f:
        (run,) = json.load(f)["runs"]
    # No test split: early stopping watches the train split's holdout, the latest rows of a time split.
    assert run["validation_split"] == "holdout" and run["holdout_start"] is not None
    assert [r["epoch"] for r in run["curve"]] == [1, 2]
    assert run["stopped_at"] == (1 if run["curve"][1]["validation"] <= run["curve"][0]["validation"] else 2)
    for r in run["curve"]:
        assert 0 <= r["validation"] <= 1 and 0 <= r["overall"] <= 1 and set(r["per_domain"]) == {"d0", "d1", "d2"}
    assert "validation rows: holdout; reported split: eval" in capsys.readouterr().out
    # Refused before any training: a rerun into the same folders (it would resume, the curve missing its
    # first epochs), no epochs, no model, a split without rows, a bad variant.
    for bad, message in [([], "exists: remove it"), (["--epochs", "0"], "--epochs must be >= 1"),
                         (["--models", ","], "--models names no model"), (["--split", "test"], "--split test:"),
                         (["--models", "adi:fusion=star"], "model variant 'adi:fusion=star'")]:
        argv = ["--data", data_dir, "--models", "dnn-domain", "--epochs", "2", "--output", out] + bad
        assert curves.main(argv) == 2 and message in capsys.readouterr().err
