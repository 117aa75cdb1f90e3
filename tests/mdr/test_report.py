"""mdr_keras.report (`mdr report`): the page and its PNGs on a real tiny run, the attention numbers, the errors."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from mdr_keras import cli, report, training
from mdr_keras.feature_spec import FeatureSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(task, domains, data_dir):
    """A metrics.json of the shape `mdr evaluate` writes (numbers made up: only the report reads them)."""
    if task == "retrieval":
        row = lambda r: {"queries": 10, "corpus": 20, "recall@10": r, "recall@50": min(1.0, 2 * r)}  # noqa: E731
    else:
        row = lambda r: {"auc": 0.5 + r / 2, "logloss": 0.7 - r / 4, "rows": 30, "ctr": 0.3}  # noqa: E731
    per_domain = {d: row(0.1 * (i + 1)) for i, d in enumerate(domains)}
    return {"model": "adi" if task == "retrieval" else "ranker", "task": task, "split": "eval", "data": data_dir,
            "per_domain": per_domain, "overall": row(0.2)}


@pytest.fixture(scope="module")
def run(tiny_models, tmp_path_factory):
    """A run folder: copies of the tiny models (with a metrics.json), a ScaNN benchmark JSON and an export
    report; and its report, built once: (run_dir, data_dir, html path)."""
    data_dir, retrieval_dir, ranker_dir = tiny_models
    domains = FeatureSpec.load(data_dir).domains
    root = str(tmp_path_factory.mktemp("run"))
    for src, name, task in ((retrieval_dir, "adi", "retrieval"), (ranker_dir, "ranker", "ranking")):
        dest = os.path.join(root, "models", name)
        shutil.copytree(src, dest)
        with open(os.path.join(dest, "metrics.json"), "w") as f:
            json.dump(_metrics(task, domains, data_dir), f)
    os.makedirs(os.path.join(root, "bench"))
    with open(os.path.join(root, "bench", report.SCANN_JSON), "w") as f:
        json.dump({"k": 100, "items": 5000, "dim": 32, "cores": 2, "batch_sizes": [1, 64], "results": [
            {"index": "scann", "leaves": 70, "leaves_to_search": 5, "recall": 0.9, "build_seconds": 0.1,
             "queries_per_second": {"1": 900.0, "64": 9000.0}},
            {"index": "scann", "leaves": 70, "leaves_to_search": 20, "recall": 0.99, "build_seconds": 0.1,
             "queries_per_second": {"1": 700.0, "64": 6000.0}},
            {"index": "exact", "leaves": 0, "leaves_to_search": 0, "recall": 1.0, "build_seconds": 0.0,
             "queries_per_second": {"1": 300.0, "64": 2000.0}}]}, f)
    os.makedirs(os.path.join(root, "export"))
    for version, recall in ((1, 0.5), (2, 0.95)):  # only the latest version is shown
        with open(os.path.join(root, "export", f"export_report_v{version}.json"), "w") as f:
            json.dump({"version": version, "index": {d: {"items": 50, "leaves": 7, "leaves_to_search": 2, "k": 10,
                                                         "recall@k": recall, "build_seconds": 0.01,
                                                         "brute_force": False} for d in domains},
                       "low_recall": []}, f)
    page = report.build_report(root, max_examples=256)
    return root, data_dir, page


def test_page_references_valid_pngs_of_every_section(run):
    root, _, page = run
    assert page == os.path.join(root, "report", "index.html")
    text = open(page, encoding="utf-8").read()
    sources = re.findall(r'<img src="([^"]+)"', text)
    for src in sources:
        path = os.path.join(os.path.dirname(page), src)
        assert not os.path.isabs(src) and os.path.isfile(path), src
        with open(path, "rb") as f:
            head = f.read(8)
        assert head == PNG_MAGIC and os.path.getsize(path) > 1000, src
    names = " ".join(sources)
    for expected in ("metrics_retrieval", "metrics_ranking", "curves_retrieval", "curves_ranking",
                     "adi_attention_models_adi", "d3_attention_models_ranker", "scann_bench_scann_vs_exact",
                     "index_export_export_report_v2"):
        assert expected in names, (expected, sources)
    assert "index_export_export_report_v1" not in names
    assert "<script" not in text and "http" not in text  # self-contained: no JavaScript, no external resources
    assert "not available" not in text, re.findall(r'class="na">([^<]*)', text)
    assert f"mdr run report: {os.path.basename(root)}" in text
    assert "<td>0.9500</td>" in text  # the v2 export's index recall, in a table


def test_adi_attention_is_one_row_per_domain_and_the_per_domain_mean(run):
    _, data_dir, _ = run
    model, spec, _ = training.load_model(os.path.join(run[0], "models", "adi"))
    batches, split = report.eval_batches(data_dir, spec, max_examples=128)
    assert split == "eval" and sum(int(b["domain"].shape[0]) for b in batches) == 128
    found = report.adi_attention(model, batches)
    assert set(found) == {("user", "dial"), ("item", "dial")}  # 3-SE: one adaptation per tower
    for (tower, key), (names, matrix) in found.items():
        tower_layer = model.user_tower if tower == "user" else model.item_tower
        assert names == tower_layer.field_names and "domain" in names
        assert matrix.shape == (spec.num_domains, len(names))
        finite = matrix[np.isfinite(matrix)]
        assert finite.size and ((finite > 0) & (finite < 1)).all()  # SE scores are sigmoids
    # The rows are the per-domain means of the per-field weights, recomputed here from the layer's own output.
    weights = np.concatenate([model.domain_attention_weights(b)["user"]["dial"].numpy() for b in batches])
    index = np.concatenate([np.reshape(model.encoder(b)["domain"], [-1]) for b in batches])
    names, matrix = found[("user", "dial")]
    per_field = weights.reshape(len(weights), len(names), -1).mean(axis=-1)
    for d in range(spec.num_domains):
        if (index == d).any():
            np.testing.assert_allclose(matrix[d], per_field[index == d].mean(axis=0), rtol=1e-6)
        else:
            assert np.isnan(matrix[d]).all()


def test_d3_attention_is_one_row_per_domain_summing_to_one(run):
    _, data_dir, _ = run
    model, spec, _ = training.load_model(os.path.join(run[0], "models", "ranker"))
    batches, _ = report.eval_batches(data_dir, spec, max_examples=128)
    names, matrix = report.dsfs_attention(model, batches)
    assert matrix.shape == (spec.num_domains, len(names))
    assert names[-1] == "hist_domain (pooled)" and "domain" in names and len(set(names)) == len(names)
    rows = matrix[np.isfinite(matrix).all(axis=1)]
    assert len(rows) and (rows >= 0).all()
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)  # softmax rows: each row's attention sums to 1


def test_per_domain_mean_field_means_and_attention_received_by_hand():
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    # domain 0: rows 0 and 2 -> ([1, 2] + [5, 6]) / 2 = [3, 4]; domain 1: row 1 = [3, 4]; domain 2: no rows (NaN);
    # row 3's index 5 is outside [0, 3): left out.
    out = report.per_domain_mean(values, np.array([0, 1, 0, 5]), 3)
    np.testing.assert_array_equal(out[:2], [[3.0, 4.0], [3.0, 4.0]])
    assert np.isnan(out[2]).all()
    # two fields of 2 units: [(1 + 3) / 2, (5 + 7) / 2] = [2, 6]
    np.testing.assert_array_equal(report.field_means([[1.0, 3.0, 5.0, 7.0]], 2), [[2.0, 6.0]])
    # A = [[0.5, 0.5], [0.1, 0.9]]: field 0 receives (0.5 + 0.1) / 2 = 0.3, field 1 (0.5 + 0.9) / 2 = 0.7
    np.testing.assert_allclose(report.attention_received([[[0.5, 0.5], [0.1, 0.9]]]), [[0.3, 0.7]])
    with pytest.raises(ValueError, match="same rows"):
        report.per_domain_mean(values, np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="`num_fields` must divide"):
        report.field_means([[1.0, 2.0, 3.0]], 2)


def test_history_keeps_the_last_row_of_a_resumed_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n0,3.0,4.0\n1,2.0,3.5\n1,1.5,3.0\n")
    assert report.read_history(str(path)) == {"epoch": [0.0, 1.0], "loss": [3.0, 1.5], "val_loss": [4.0, 3.0]}


def test_a_folder_without_models_is_an_error_naming_it(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        report.build_report(str(tmp_path))
    assert cli.main(["report", str(tmp_path)]) == 1  # an unusable input, like the other commands' (status 1)
    assert f"mdr report: error: {tmp_path} holds no model folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is not a folder"):
        report.build_report(str(tmp_path / "missing"))


def test_cli_writes_the_page_and_missing_parts_say_how(run, tmp_path, capsys):
    """`mdr report` on a run with a ranker never evaluated and an ADI ablation without attention."""
    root = tmp_path / "run"
    shutil.copytree(os.path.join(run[0], "models", "ranker"), root / "ranker",
                    ignore=shutil.ignore_patterns("metrics.json"))
    (root / "adi-no-attention").mkdir()
    (root / "adi-no-attention" / "train_config.json").write_text(json.dumps(
        {"model": "adi", "task": "retrieval", "model_config": {"attention": None}}))
    out = tmp_path / "out"
    assert cli.main(["report", str(root), "--output", str(out), "--data", run[1], "--max-examples", "64"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out / 'index.html'}"
    text = (out / "index.html").read_text(encoding="utf-8")
    for message in ("ranker has no metrics.json", "attention=None ablation", "adi-no-attention has no history.csv",
                    "no scann_vs_exact.json under", "--json", "no export_report_v&lt;N&gt;.json"):
        assert message in text, message
    assert "failed" not in text
    assert (out / "d3_attention_ranker.png").read_bytes()[:8] == PNG_MAGIC
    assert not (root / "report").exists()  # --output is where everything goes
