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


def test_parse_models_keeps_commas_inside_lists():
    assert models.parse_models("adi:forward_units=[64,32]:fusion=sum,star,,dnn") == [
        "adi:forward_units=[64,32]:fusion=sum", "star", "dnn"]


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


def test_a_retrieval_table_has_the_popularity_floor(synthetic_data, tmp_path, capsys):
    import json

    data_dir, _ = synthetic_data
    out = str(tmp_path / "bench")
    # The held-out case's protocol: Recall@10 of the positive among 100 sampled negatives (`mdr evaluate`'s).
    code = models.main(["--data", data_dir, "--task", "retrieval", "--models", "dnn-domain", "--epochs", "1",
                        "--batch-size", "256", "--output", out, "--split", "eval", "--validation-split", "",
                        "--ks", "10,50", "--sampled", "--sampling", "unseen"])
    assert code == 0
    results = json.load(open(os.path.join(out, "results.json")))["results"]
    assert [r["model"] for r in results] == [models.POPULARITY, "dnn-domain"]
    for r in results:
        assert r["metrics"]["protocol"] == {"sampled_negatives": 100, "sampling": "unseen"}
        assert 0 < r["metrics"]["overall"]["recall@50"] < 1 and "recall@100" not in r["metrics"]["overall"]
    out_lines = capsys.readouterr().out.splitlines()
    assert "sampled protocol, negatives per query: 100 unseen" in out_lines[0]
    assert out_lines[1].split()[1:5] == ["d0", "sampled_recall@10", "d0", "sampled_recall@50"]
    row = next(line for line in out_lines if line.startswith(models.POPULARITY))
    assert row.split()[-2:] == ["-", "-"]  # nothing trained: no parameters, no examples/s


def test_parse_ks_and_the_recall_columns_follow_the_cutoffs():
    assert models.parse_ks("100, 10,50") == [100, 10, 50]
    for bad in ("", "0", "a,10"):
        with pytest.raises(ValueError, match="--ks"):
            models.parse_ks(bad)
    overall = {"recall@100": 0.9, "recall@10": 0.2, "sampled_recall@10": 0.7, "sampled_recall@100": 1.0}
    results = [{"model": "adi", "seed": 0, "parameters": 1, "examples_per_second": 1.0,
                "metrics": {"per_domain": {"d0": dict(overall)}, "overall": overall}}]
    assert models.recall_columns(results) == ["recall@10", "recall@100"]  # by K, not as text
    assert models.recall_columns(results, sampled=True) == ["sampled_recall@10", "sampled_recall@100"]
    header = models.table(results, "retrieval", sampled=True).splitlines()[0].split()
    assert header[:5] == ["model", "d0", "sampled_recall@10", "d0", "sampled_recall@100"]
    assert "0.7000" in models.table(results, "retrieval", sampled=True).splitlines()[1]


def test_merge_builds_one_table_from_earlier_runs(tmp_path, capsys):
    import json

    def run(name, models, seeds="0"):
        args = {"data": "/d", "task": "retrieval", "split": "test", "epochs": 2, "batch_size": 1024,
                "learning_rate": 0.002, "seeds": seeds}
        metrics = {"per_domain": {"a": {"recall@50": 0.5, "recall@100": 0.6}},
                   "overall": {"recall@50": 0.5, "recall@100": 0.6}}
        rows = [{"model": m, "seed": 0, "parameters": 10, "examples_per_second": 5.0, "metrics": metrics}
                for m in models]
        path = tmp_path / name
        path.write_text(json.dumps({"args": args, "results": rows}))
        return str(path)

    first = run("a.json", [models.POPULARITY, "adi"])
    second = run("b.json", [models.POPULARITY, "adi:fusion=sum"])
    assert models.main(["--merge", first, second, "--rename", "adi:fusion=sum=>adi, SUM fusion"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines[2:]] == [models.POPULARITY, "adi", "adi, SUM fusion"]
    # the same name in two files (a default changed in between): renamed in one file only
    again = run("d.json", [models.POPULARITY, "adi"])
    assert models.main(["--merge", first, again, "--rename", "1:adi=>adi, before"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines[2:]] == [models.POPULARITY, "adi, before", "adi"]
    # rows left out: a model everywhere, or in one file only (its name there, before any rename)
    assert models.main(["--merge", first, again, "--drop", "2:adi", "--rename", "1:adi=>adi, before"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines[2:]] == [models.POPULARITY, "adi, before"]
    assert models.main(["--merge", first, second, "--drop", "adi"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines[2:]] == [models.POPULARITY, "adi:fusion=sum"]
    other = tmp_path / "c.json"
    other.write_text(open(first).read().replace('"/d"', '"/other"'))
    assert models.main(["--merge", first, str(other)]) == 2  # one data set per table
    # a run cut after its first seed: the title names the seed it holds, not the three it was asked for
    cut = run("e.json", [models.POPULARITY, "adi"], seeds="0,1,2")
    capsys.readouterr()
    assert models.main(["--merge", cut]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("seed(s) 0")


def test_merge_grows_a_committed_table(tmp_path, monkeypatch, capsys):
    # The run folders of a committed table are gone on a new machine: its own JSON is merged instead.
    import json

    args = {"data": "/d", "task": "ranking", "split": "test", "epochs": 5, "batch_size": 512,
            "learning_rate": 0.001, "lr_schedule": "cosine", "seeds": "0"}
    metrics = {"per_domain": {"a": {"auc": 0.8, "logloss": 0.5}}, "overall": {"auc": 0.8, "logloss": 0.5}}
    row = lambda model, seed: {"model": model, "seed": seed, "parameters": 10,  # noqa: E731
                               "examples_per_second": 5.0, "metrics": metrics}
    first = tmp_path / "a.json"
    first.write_text(json.dumps({"args": args, "results": [row("ranker", 0), row("din", 0)]}))
    saved = models.results_files.save  # the committed table goes to tmp_path, not into the repository
    monkeypatch.setattr(models.results_files, "save",
                        lambda *a, **k: saved(*a, **{**k, "results_dir": str(tmp_path / "results")}))
    assert models.main(["--merge", str(first), "--baseline", "din", "--results", "table"]) == 0
    table = tmp_path / "results" / "table.json"
    assert json.load(open(table))["merged"] == [args]
    later = tmp_path / "b.json"
    later.write_text(json.dumps({"args": {**args, "seeds": "1"}, "results": [row("ranker", 1)]}))
    capsys.readouterr()
    assert models.main(["--merge", str(table), str(later), "--baseline", "din", "--results", "table"]) == 0
    out = capsys.readouterr().out
    assert "seed(s) 0; " in out and "seed(s) 1" in out  # both runs' settings in the title
    grown = json.load(open(table))
    assert [(r["model"], r["seed"]) for r in grown["results"]] == [("ranker", 0), ("din", 0), ("ranker", 1)]
    assert grown["merged"] == [args, {**args, "seeds": "1"}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    assert models.main(["--merge", str(bad)]) == 1
    assert "not a results.json" in capsys.readouterr().err


def test_a_run_and_its_merge_have_one_title():
    # One function words both, so a table reads alike whether a run wrote it or a merge of runs did.
    args = {"data": "/d", "task": "retrieval", "split": "test", "epochs": 5, "batch_size": 512, "patience": 2,
            "learning_rate": 0.001, "lr_schedule": "auto", "seeds": "0,1", "weight_decay": 0.0, "cpu_replicas": 0,
            "sampled_negatives": 50, "sampling": "unseen"}
    title = models.table_title([args], sampled=True)
    assert title == ("retrieval on /d (test split), 5 epoch(s) (patience 2), batch 512, lr 0.001 (auto), "
                     "seed(s) 0,1; sampled protocol, negatives per query: 50 unseen")
    # a file from before patience, replicas and the sampling flags: no patience, 100 uniform, constant rate
    old = {k: v for k, v in args.items() if k not in ("patience", "cpu_replicas", "sampled_negatives", "sampling",
                                                     "lr_schedule")}
    assert "x 4 replica(s)" in models.table_title([{**args, "replicas": 4}])  # e.g. 4 GPUs
    assert models.table_title([args, {**old, "seeds": "2", "cpu_replicas": 2}], sampled=True).endswith(
        "5 epoch(s) (patience 2), batch 512, lr 0.001 (auto), seed(s) 0,1; "
        "5 epoch(s), batch 512 x 2 replica(s), lr 0.001 (constant), seed(s) 2; "
        "sampled protocol, negatives per query: 50 unseen, 100 uniform")  # in the runs' order
    later = {**args, "epochs": 20, "seeds": "0"}  # not sorted as text: 5 epochs, then 20
    assert "5 epoch(s) (patience 2), batch 512, lr 0.001 (auto), seed(s) 0,1; 20 epoch(s)" in models.table_title(
        [args, later])
