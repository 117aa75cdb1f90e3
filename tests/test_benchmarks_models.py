"""benchmarks.models: variants parse, and a bad one stops the run before any training."""
import os

import pytest

from benchmarks import models


def test_parse_model_reads_json_values():
    assert models.parse_model("adi:dsbn=false:fusion=sum:tower_units=[16,8]") == (
        "adi", {"dsbn": False, "fusion": "sum", "tower_units": [16, 8]})
    with pytest.raises(ValueError, match="name:key=value"):
        models.parse_model("adi:dsbn")


def test_a_bad_variant_stops_the_run_before_training(synthetic_data, tmp_path, capsys):
    data_dir, _ = synthetic_data
    out = str(tmp_path / "bench")
    code = models.main(["--data", data_dir, "--task", "retrieval", "--models", "dnn,adi:fusion=star",
                        "--output", out])
    assert code == 2
    err = capsys.readouterr().err
    assert "model variant 'adi:fusion=star'" in err and "num_shared" in err
    assert not os.path.exists(out)  # nothing trained, nothing written


def test_parse_seeds():
    assert models.parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a"):
        with pytest.raises(ValueError, match="distinct integers"):
            models.parse_seeds(bad)


def _result(model, seed, aucs, logloss, eps):
    per_domain = {d: {"auc": a, "logloss": logloss} for d, a in zip(("d0", "d1"), aucs)}
    return {"model": model, "seed": seed, "parameters": 1234, "examples_per_second": eps,
            "metrics": {"per_domain": per_domain, "overall": {"auc": sum(aucs) / 2, "logloss": logloss}}}


def test_table_puts_the_seeds_of_a_model_on_one_row_as_mean_and_sd():
    results = [_result("din", 0, (0.70, 0.60), 0.5, 100.0), _result("ranker", 0, (0.72, 0.64), 0.4, 50.0),
               _result("din", 1, (0.70, 0.62), 0.5, 300.0), _result("ranker", 1, (0.74, 0.64), 0.4, 70.0)]
    text = models.table(results, "ranking", baseline="din")
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].split()[-1] == "seeds"
    ranker = lines[2]
    # d0: mean(0.72, 0.74) = 0.73, sample sd = |0.74 - 0.72| / sqrt(2) = 0.0141.
    assert "0.7300 ± 0.0141" in ranker and "0.6400 ± 0.0000" in ranker
    # AUC Imp. on the mean overall AUC (ADS eq. 14): (0.685 - 0.5) / (0.655 - 0.5) - 1 = +19.35%.
    assert "+19.35%" in ranker and ranker.split()[-2:] == ["60", "0,1"]
    md = models.table(results, "ranking", baseline="din", markdown=True).splitlines()
    assert md[0].startswith("| model | d0 auc |") and md[1].startswith("| --- | ---: |")
    assert md[3].startswith("| ranker | 0.7300 ± 0.0141 |")
    # One seed: plain values, no seeds column.
    single = models.table(results[:2], "ranking").splitlines()
    assert "seeds" not in single[0] and "0.7200" in single[2] and "±" not in single[2]


def test_several_seeds_train_a_model_once_each(synthetic_data, tmp_path, capsys):
    import json

    data_dir, _ = synthetic_data
    out = str(tmp_path / "bench")
    code = models.main(["--data", data_dir, "--task", "ranking", "--models", "dnn", "--seeds", "0,1",
                        "--epochs", "1", "--batch-size", "256", "--output", out, "--split", "eval"])
    assert code == 0
    results = json.load(open(os.path.join(out, "results.json")))["results"]
    assert [r["seed"] for r in results] == [0, 1]
    assert sorted(p for p in os.listdir(out) if p.startswith("dnn")) == ["dnn_seed0", "dnn_seed1"]
    aucs = [r["metrics"]["overall"]["auc"] for r in results]
    assert aucs[0] != aucs[1]  # the seed reaches the model
    md = open(os.path.join(out, "results.md")).read()
    assert "seed(s) 0,1" in md and "| dnn |" in md and " ± " in md
