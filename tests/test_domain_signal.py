"""benchmarks.domain_signal: hit rates of grouped popularity, checked against the records read back."""
import pytest

from benchmarks import domain_signal
from tests import helpers


def test_hit_rates_match_the_records(synthetic_data, capsys):
    data_dir, meta = synthetic_data
    train = [r for r in helpers.read_records(data_dir, "train") if r["label"] > 0]
    held = [r for r in helpers.read_records(data_dir, "eval") if r["label"] > 0]
    result = domain_signal.measure(data_dir, "eval", k=10**6, user_feature="age_group")
    assert set(result["domains"]) == set(meta["domains"])
    for d, row in result["domains"].items():
        targets = [r for r in held if r["domain"] == d]
        assert row["clicks"] == len(targets)
        # With K above the catalogue, "top K" of a group is every item the group clicked in training.
        seen = {r["item_id"] for r in train}
        seen_d = {r["item_id"] for r in train if r["domain"] == d}
        assert row["global"] == pytest.approx(sum(r["item_id"] in seen for r in targets) / len(targets))
        assert row["own_domain"] == pytest.approx(sum(r["item_id"] in seen_d for r in targets) / len(targets))
        by_age_d = {(r["age_group"], r["item_id"]) for r in train if r["domain"] == d}
        assert row["feature_x_domain"] == pytest.approx(
            sum((r["age_group"], r["item_id"]) in by_age_d for r in targets) / len(targets))
        assert row["feature_x_domain"] <= row["feature"] <= row["global"]
        assert result["cosine"][f"{d}|{d}"] == pytest.approx(1.0)
    assert domain_signal.main(["--data", data_dir, "--split", "eval", "--user-feature", "age_group"]) == 0
    assert "age_group x domain" in capsys.readouterr().out


def test_errors_name_the_problem(synthetic_data, tmp_path, capsys):
    data_dir, _ = synthetic_data
    assert domain_signal.main(["--data", data_dir, "--user-feature", "price"]) == 1
    assert "--user-feature must name a categorical feature" in capsys.readouterr().err
    assert domain_signal.main(["--data", str(tmp_path)]) == 1
    assert "No feature spec at" in capsys.readouterr().err
    with pytest.raises(ValueError, match="k must be >= 1"):
        domain_signal.measure(data_dir, k=0)


def test_results_writes_the_table_and_its_command(synthetic_data, tmp_path, monkeypatch, capsys):
    import json

    data_dir, _ = synthetic_data
    from benchmarks import results as results_files

    saved = results_files.save  # the committed table goes to tmp_path, not into the repository
    monkeypatch.setattr(results_files, "save", lambda *a, **k: saved(*a, **{**k, "results_dir": str(tmp_path)}))
    argv = ["--data", data_dir, "--split", "eval", "--user-feature", "age_group", "--results", "signal"]
    assert domain_signal.main(argv) == 0
    written = json.loads((tmp_path / "signal.json").read_text())
    assert written["command"].startswith("python -m benchmarks.domain_signal --data ")
    measured = domain_signal.measure(data_dir, "eval", 50, "age_group")
    assert written["domains"] == measured["domains"] and written["cosine"] == measured["cosine"]
    md = (tmp_path / "signal.md").read_text()
    assert "| domain | eval clicks | global | domain | age_group | age_group x domain |" in md
    # A bad name is refused before the measurement, in one line.
    assert domain_signal.main(["--data", data_dir, "--results", "../x"]) == 1
    assert "--results takes a plain file name" in capsys.readouterr().err
