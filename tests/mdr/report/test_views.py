"""mdr.report.views: the numbers of the page, by hand on small arrays and on the tiny trained models."""

import numpy as np
import pytest

from mdr.report import views
from mdr.report.discovery import ModelRun
from mdr_keras import training


def _run(label, per_domain, overall, history=None):
    return ModelRun(path=label, label=label, model="m", task="retrieval", config={"model": "m"},
                    metrics={"per_domain": per_domain, "overall": overall}, history=history)


def test_per_domain_mean_field_means_and_attention_received_by_hand():
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    # domain 0: rows 0 and 2 -> ([1, 2] + [5, 6]) / 2 = [3, 4]; domain 1: row 1 = [3, 4]; domain 2: no rows (NaN);
    # row 3's index 5 is outside [0, 3): left out.
    out = views.per_domain_mean(values, np.array([0, 1, 0, 5]), 3)
    np.testing.assert_array_equal(out[:2], [[3.0, 4.0], [3.0, 4.0]])
    assert np.isnan(out[2]).all()
    # two fields of 2 units: [(1 + 3) / 2, (5 + 7) / 2] = [2, 6]
    np.testing.assert_array_equal(views.field_means([[1.0, 3.0, 5.0, 7.0]], 2), [[2.0, 6.0]])
    # A = [[0.5, 0.5], [0.1, 0.9]]: field 0 receives (0.5 + 0.1) / 2 = 0.3, field 1 (0.5 + 0.9) / 2 = 0.7
    np.testing.assert_allclose(views.attention_received([[[0.5, 0.5], [0.1, 0.9]]]), [[0.3, 0.7]])
    with pytest.raises(ValueError, match="same rows"):
        views.per_domain_mean(values, np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="`num_fields` must divide"):
        views.field_means([[1.0, 2.0, 3.0]], 2)
    with pytest.raises(ValueError, match=r"`attention` must be \[B, N, N\]"):
        views.attention_received([[0.5, 0.5]])


def test_metrics_tables_by_hand():
    a = _run("a", {"x": {"recall@10": 0.1, "recall@50": 0.4}}, {"recall@10": 0.2, "recall@100": 0.9,
                                                                 "recall@50": 0.5, "sampled_recall@10": 0.7})
    b = _run("b", {"y": {"recall@10": "oops"}, "x": {}}, {"recall@10": 0.3})
    # full-corpus Recall@K by K, recall@50 first; sampled recall is not a bar
    assert views.metric_names([a, b], "retrieval") == ["recall@50", "recall@10", "recall@100"]
    assert views.metric_names([_run("r", {}, {"logloss": 0.6})], "ranking") == ["logloss"]
    # domains in the order met over the runs, then overall
    assert views.metric_groups([a, b]) == ["x", "y", "overall"]
    assert views.metric_value(a, "x", "recall@50") == 0.4 and views.metric_value(b, "overall", "recall@10") == 0.3
    for run, group in ((b, "y"), (b, "x"), (a, "z")):  # not a number, missing metric, missing domain
        assert np.isnan(views.metric_value(run, group, "recall@10"))


def test_curve_metrics_and_scann_batch_sizes_by_hand():
    history = {"epoch": [0.0], "val_auc": [0.6], "auc": [0.7], "lr": [1e-3], "epoch_seconds": [3.0],
               "val_loss": [1.0], "loss": [0.9]}
    assert views.curve_metrics([_run("a", {}, {}, history), _run("b", {}, {})]) == ["loss", "auc"]
    assert views.scann_batch_sizes({"batch_sizes": [1, 64]}) == ["1", "64"]
    # no batch_sizes: the keys of the rows' queries_per_second, by number
    assert views.scann_batch_sizes({"results": [{"queries_per_second": {"64": 1.0, "8": 2.0}},
                                                {"queries_per_second": {"128": 3.0}}]}) == ["8", "64", "128"]


def test_per_domain_counts_and_dsfs_field_names_by_hand():
    batches = [{"domain": np.array([[b"a"], [b"b"]])}, {"domain": np.array([[b"a"]])}]
    assert views.per_domain_counts(batches, ["a", "b", "c"]) == [2, 1, 0]

    class Ranker:
        features = {"user": ["u"], "item": ["i"], "domain": ["domain"], "sequence": ["hist_item", "hist_domain"]}

    # 3 feature fields, then one pooled field per sequence feature when they make up the rest, else numbered
    assert views.dsfs_field_names(Ranker(), 5) == ["u", "i", "domain", "hist_item (pooled)", "hist_domain (pooled)"]
    assert views.dsfs_field_names(Ranker(), 4) == ["u", "i", "domain", "sequence 0"]
    assert views.dsfs_field_names(Ranker(), 2) == ["u", "i"]


def test_models_without_attention_have_no_view():
    assert views.adi_attention(object(), []) == {}
    assert views.dsfs_attention(object(), []) is None


def test_eval_batches_of_a_missing_split_name_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no eval or test records in"):
        views.eval_batches(str(tmp_path), spec=None, max_examples=8)


def test_adi_attention_is_one_row_per_domain_and_the_per_domain_mean(tiny_models):
    data_dir, retrieval_dir, _ = tiny_models
    model, spec, _ = training.load_model(retrieval_dir)
    batches, split = views.eval_batches(data_dir, spec, max_examples=128)
    assert split == "eval" and sum(int(b["domain"].shape[0]) for b in batches) == 128
    found = views.adi_attention(model, batches)
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


def test_d3_attention_is_one_row_per_domain_summing_to_one(tiny_models):
    data_dir, _, ranker_dir = tiny_models
    model, spec, _ = training.load_model(ranker_dir)
    batches, _ = views.eval_batches(data_dir, spec, max_examples=128)
    names, matrix = views.dsfs_attention(model, batches)
    assert matrix.shape == (spec.num_domains, len(names))
    assert names[-1] == "hist_domain (pooled)" and "domain" in names and len(set(names)) == len(names)
    rows = matrix[np.isfinite(matrix).all(axis=1)]
    assert len(rows) and (rows >= 0).all()
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)  # softmax rows: each row's attention sums to 1
    # the counts of the domain strings add up to the rows read
    assert sum(views.per_domain_counts(batches, list(spec.domains))) == 128
