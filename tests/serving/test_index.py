"""Tests of serving/index.py: recall of the per-domain ScaNN index against exact search, the exact
index against numpy, routing of mixed-domain batches, auto parameters, config errors, the LOW RECALL
warning, and both SavedModels reloaded in a fresh process."""
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from serving import index as ix
from tests.serving.top_k_checks import assert_top_k, reference_scores, score_tolerance

SIZES = (30_000, 22_000, 500)  # two tree domains and one below brute_force_below (20k)
DIM = 32
K = 10


def clustered(n, dim, rng, clusters=20):
    """`n` points around `clusters` Gaussian centers: the shape item embeddings usually have."""
    centers = rng.normal(size=(clusters, dim)) * 2.0
    return (centers[rng.integers(0, clusters, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    embeddings = [clustered(n, DIM, rng) for n in SIZES]
    ids = [np.array([f"d{d}-{i}" for i in range(n)]) for d, n in enumerate(SIZES)]
    return embeddings, ids


@pytest.fixture(scope="module")
def built(corpus):
    embeddings, ids = corpus
    index, report = ix.build_multi_domain_index(embeddings, ids, ix.IndexConfig(num_neighbors=K),
                                                domain_names=["a", "b", "c"])
    return index, report, ix.ExactDomainIndex(embeddings, ids, k=K)


def mixed_batch(seed=1, batch=60):
    """Queries near corpus points of random domains, rows of all domains interleaved."""
    rng = np.random.default_rng(seed)
    domain = rng.integers(0, len(SIZES), size=batch)
    return rng.normal(size=(batch, DIM)).astype(np.float32) * 2.0, domain


# ------------------------------------------------------------------ recall and exactness
def test_scann_recall_per_domain_with_default_config(built, corpus):
    index, report, exact = built
    assert list(report) == ["a", "b", "c"]
    for name, n in zip("abc", SIZES):
        r = report[name]
        assert r["items"] == n and r["k"] == K and r["build_seconds"] >= 0
        assert r["recall@k"] >= 0.9, report
    assert report["c"]["brute_force"] and report["c"]["recall@k"] == 1.0  # 500 < brute_force_below
    # The same holds through the routed module, on other queries, against the exact module.
    embeddings, _ = corpus
    for d in range(len(SIZES)):
        queries = ix.sample_queries(embeddings[d], 300, seed=10 + d)
        domain = np.full(len(queries), d)
        got = index(queries, domain)[1].numpy()
        want = exact(queries, domain)[1].numpy()
        recall = np.mean([len(set(g) & set(w)) / K for g, w in zip(got, want)])
        assert recall >= 0.9, (d, recall)


@pytest.mark.parametrize("distance", ["dot_product", "squared_l2"])
def test_exact_index_matches_numpy_brute_force(corpus, distance):
    embeddings, ids = corpus
    exact = ix.ExactDomainIndex(embeddings, ids, k=K, distance=distance)
    queries, domain = mixed_batch()
    scores, found = exact(queries, domain)
    # Row by row against float64 brute force over the row's domain; near-ties may swap (top_k_checks).
    for q, d, row_scores, row_ids in zip(queries[:, None], domain, scores.numpy(), found.numpy()):
        assert all(i.startswith(f"d{d}-".encode()) for i in row_ids), (d, row_ids)
        positions = np.array([[int(i.split(b"-")[1]) for i in row_ids]])  # ids are f"d{d}-{position}"
        assert_top_k(row_scores[None], positions, reference_scores(q, embeddings[d], distance),
                     score_tolerance(q, embeddings[d], distance), distance)


@pytest.mark.parametrize("distance", ["dot_product", "squared_l2"])
def test_exact_top_k_helper_matches_argsort(corpus, distance):
    embeddings, _ = corpus
    queries = ix.sample_queries(embeddings[1], 100)
    scores, positions = ix.exact_top_k(embeddings[1], queries, K, distance)
    # Against float64 scores, not another float32 matmul: its kernel may sum in another order.
    assert_top_k(scores, positions, reference_scores(queries, embeddings[1], distance),
                 score_tolerance(queries, embeddings[1], distance), distance)
    # recall_at_k: 7 of the 10 exact positions found, the rest padding or wrong.
    found = np.concatenate([positions[:1, :7], [[-1, -1, 10**6]]], axis=1)
    assert ix.recall_at_k(found, positions[:1]) == pytest.approx(0.7)


# ------------------------------------------------------------------ routing
@pytest.mark.parametrize("form", ["int32", "int64", "column"])
@pytest.mark.parametrize("which", ["scann", "exact"])
def test_mixed_batch_rows_get_only_their_domain(built, form, which):
    index = built[0] if which == "scann" else built[2]
    queries, domain = mixed_batch(seed=2, batch=41)
    d = {"int32": domain.astype(np.int32), "int64": domain.astype(np.int64),
         "column": domain.astype(np.int64)[:, None]}[form]
    scores, found = index(queries, d)
    assert scores.shape == (41, K) and found.shape == (41, K)
    for row, dom in zip(found.numpy(), domain):
        assert all(i.startswith(f"d{dom}-".encode()) for i in row), (dom, row)
    s = scores.numpy()
    assert np.all(np.diff(s, axis=1) <= 1e-4)  # best first


def test_scann_and_exact_agree_on_mixed_batch(built):
    index, _, exact = built
    queries, domain = mixed_batch(seed=3, batch=200)
    got, want = index(queries, domain)[1].numpy(), exact(queries, domain)[1].numpy()
    assert np.mean([len(set(g) & set(w)) / K for g, w in zip(got, want)]) >= 0.9


@pytest.mark.parametrize("which", ["scann", "exact"])
def test_small_domain_is_padded_and_empty_batch_works(which):
    rng = np.random.default_rng(4)
    embeddings = [clustered(30, 8, rng), clustered(4, 8, rng)]
    ids = [[f"x{i}" for i in range(30)], [b"y0", b"y1", b"y2", b"y3"]]
    if which == "scann":
        index, _ = ix.build_multi_domain_index(embeddings, ids, ix.IndexConfig(num_neighbors=6, eval_queries=20))
    else:
        index = ix.ExactDomainIndex(embeddings, ids, k=6)
    scores, found = index(rng.normal(size=(3, 8)).astype(np.float32), np.array([1, 0, 1]))
    assert found.shape == (3, 6)
    # Domain 1 has 4 items: its rows end with 2 paddings (id b"", score -inf).
    assert set(found.numpy()[0, :4]) == {b"y0", b"y1", b"y2", b"y3"}
    assert list(found.numpy()[0, 4:]) == [b"", b""] and np.all(np.isneginf(scores.numpy()[0, 4:]))
    assert all(i.startswith(b"x") for i in found.numpy()[1])
    empty_scores, empty_ids = index(np.zeros((0, 8), np.float32), np.zeros((0,), np.int64))
    assert empty_scores.shape == (0, 6) and empty_ids.shape == (0, 6)


def test_out_of_range_domain_fails(built):
    with pytest.raises(tf.errors.InvalidArgumentError, match="domain index >= num_domains"):
        built[2](np.zeros((1, DIM), np.float32), np.array([3]))


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("n, k, leaves, searched", [
    # round(sqrt(n)) leaves; searched: max(ceil(0.1 * leaves), ceil(50 * K * leaves / n), 10) <= leaves.
    (1_000_000, 100, 1000, 100),  # 10% = 100 > 50 * 100 * 1000 / 1e6 = 5
    (200_000, 100, 447, 45),  # 10% = 44.7 -> 45 > 5000 * 447 / 2e5 = 11.2
    (20_000, 100, 141, 36),  # 5000 * 141 / 2e4 = 35.25 -> 36 > 10% = 15: K=100 is large against ~142-point leaves
    (30_000, 10, 173, 18),  # 10% = 17.3 -> 18 > 500 * 173 / 3e4 = 2.9
    (2000, 10, 45, 12),  # 500 * 45 / 2000 = 11.25 -> 12 > 10 > 10% = 4.5 -> 5
    (2000, 100, 45, 45),  # 5000 * 45 / 2000 = 112.5: capped at all 45 leaves
])
def test_leaves_scale_with_corpus_size(n, k, leaves, searched):
    config = ix.IndexConfig(num_neighbors=k)
    assert config.leaves_for(n) == leaves
    assert config.leaves_to_search_for(n, leaves) == searched
    fixed = ix.IndexConfig(leaves=64, leaves_to_search=8)
    assert fixed.leaves_for(n) == 64 and fixed.leaves_to_search_for(n, 64) == 8


def test_built_report_has_scaled_leaves(built):
    _, report, _ = built
    assert (report["a"]["leaves"], report["b"]["leaves"], report["c"]["leaves"]) == (173, 148, 0)
    assert [report[d]["leaves_to_search"] for d in "abc"] == [18, 15, 0]
    json.dumps(report)  # plain values


@pytest.mark.parametrize("kwargs", [
    {"num_neighbors": 0}, {"num_neighbors": 2.5}, {"leaves": 0}, {"leaves_to_search": -1},
    {"leaves": 10, "leaves_to_search": 11}, {"search_fraction": 0.0}, {"search_fraction": 1.5},
    {"dimensions_per_block": 0}, {"anisotropic_quantization_threshold": "0.2"}, {"reorder_multiplier": -1},
    {"training_sample_size": 0}, {"candidates_per_neighbor": -1}, {"distance": "cosine"},
    {"min_recall": 1.5}, {"eval_queries": 0},
    {"brute_force_below": -1}, {"num_neighbors": True}, {"target_recall": 0.0}, {"target_recall": 1.5},
])
def test_config_value_errors(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[-1]):
        ix.IndexConfig(**kwargs)


def test_build_value_errors(corpus):
    embeddings, ids = corpus
    e, i = embeddings[0][:3000], ids[0][:3000]
    with pytest.raises(ValueError, match="leaves"):
        ix.build_domain_index(e, i, ix.IndexConfig(leaves=4000, brute_force_below=0))
    with pytest.raises(ValueError, match="ids"):
        ix.build_domain_index(e, i[:10])
    with pytest.raises(ValueError, match="queries"):
        ix.build_domain_index(e, i, queries=np.zeros((5, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="embeddings"):
        ix.build_domain_index(e[0], i[:1])
    with pytest.raises(ValueError, match="config"):
        ix.build_domain_index(e, i, config={"num_neighbors": 10})
    with pytest.raises(ValueError, match="same size"):
        ix.ExactDomainIndex([e, e[:, :4]], [i, i])
    with pytest.raises(ValueError, match="domain_names"):
        ix.build_multi_domain_index([e, e], [i, i], domain_names=["x", "x"])
    with pytest.raises(ValueError, match="domains"):
        ix.MultiDomainIndex([])


def test_tuning_grid():
    assert ix.tuning_grid(1) == [1]
    assert ix.tuning_grid(10) == [1, 2, 3, 4, 6, 9, 10]
    assert ix.tuning_grid(173)[:8] == [1, 2, 3, 4, 6, 9, 13, 19] and ix.tuning_grid(173)[-1] == 173


@pytest.mark.parametrize("target", [0.8, 0.99])
def test_a_tuned_tree_searches_the_fewest_leaves_reaching_its_target_recall(corpus, tmp_path, target):
    # With 2 K candidates re-scored, even every leaf gives ~0.81: 0.99 needs more re-scored (x2, x4, x8).
    embeddings, ids = corpus
    config = ix.IndexConfig(num_neighbors=K, eval_queries=300, target_recall=target, reorder_multiplier=2)
    tuned = ix.build_domain_index(embeddings[0], ids[0], config, name="a")
    report = tuned.report
    grid = ix.tuning_grid(report["leaves"])
    for reorder in sorted({m for _, m, _ in report["tuning"]}):
        tried = [n for n, m, _ in report["tuning"] if m == reorder]
        assert tried == grid[:len(tried)]  # in order, stopping at the first hit
    reorders = [m for _, m, _ in report["tuning"]]
    assert reorders == sorted(reorders) and set(reorders) <= {2 * K, 4 * K, 8 * K, 16 * K}
    assert report["tuning"][-1][2] >= target > max([r for _, _, r in report["tuning"][:-1]], default=0.0)
    assert report["leaves_to_search"] == tuned.leaves_to_search == report["tuning"][-1][0] < report["leaves"]
    assert report["reorder"] == tuned.pre_reorder_num_neighbors == report["tuning"][-1][1]
    assert report["recall@k"] == report["tuning"][-1][2]
    if target == 0.99:
        assert report["reorder"] > 2 * K
    # The searches use the tuned values, in process and from the saved graph.
    queries = ix.sample_queries(embeddings[0], 300, seed=0)
    _, exact = ix.exact_top_k(embeddings[0], queries, K)
    assert ix.recall_at_k(tuned.search_positions(queries)[1].numpy(), exact) == pytest.approx(
        report["recall@k"], abs=1e-4)
    index = ix.MultiDomainIndex([tuned])
    ix.save_index(index, str(tmp_path / "tuned"))
    domain = np.zeros(len(queries), np.int64)
    np.testing.assert_array_equal(ix.load_index(str(tmp_path / "tuned"))(queries, domain)[1].numpy(),
                                  index(queries, domain)[1].numpy())


def test_low_recall_is_logged(corpus, caplog):
    embeddings, ids = corpus
    with caplog.at_level(logging.WARNING, logger="serving.index"):
        ix.build_domain_index(embeddings[0], ids[0], ix.IndexConfig(num_neighbors=K, eval_queries=200),
                              name="fine")
        assert not [r for r in caplog.records if "LOW RECALL" in r.getMessage()]
        # One leaf of 100 searched and no exact reordering: most neighbours are missed.
        low = ix.build_domain_index(embeddings[0], ids[0], name="starved", config=ix.IndexConfig(
            num_neighbors=K, leaves=100, leaves_to_search=1, reorder_multiplier=0, eval_queries=200))
    assert low.report["recall@k"] < 0.9
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("LOW RECALL") and "'starved'" in m for m in messages), messages


# ------------------------------------------------------------------ SavedModels in a fresh process
_FRESH = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    args = json.loads(sys.argv[1])
    data = np.load(args["inputs"])
    queries, domain = data["queries"], data["domain"]
    out = {}
    # The exact index loads and runs on stock TensorFlow: ScaNN is not imported yet.
    exact = tf.saved_model.load(args["exact"])
    out["exact_call"] = exact(queries, domain)[1].numpy()
    out["exact_signature"] = exact.signatures["serving_default"](
        queries=tf.constant(queries), domain=tf.constant(domain, tf.int64))["ids"].numpy()
    try:
        tf.saved_model.load(args["scann"])
        print("scann model loaded without the ScaNN ops", file=sys.stderr)
        sys.exit(3)
    except Exception as e:  # the graph names ops TensorFlow does not know yet
        assert "Scann" in str(e), str(e)[:500]
    assert "scann" not in sys.modules
    import scann  # registers the ScaNN ops: needed before loading a ScaNN index
    index = tf.saved_model.load(args["scann"])
    out["scann_call"] = index(queries, domain.astype(np.int32))[1].numpy()
    out["scann_signature"] = index.signatures["serving_default"](
        queries=tf.constant(queries), domain=tf.constant(domain, tf.int64))["ids"].numpy()
    np.savez(args["outputs"], **{k: v.astype("S") for k, v in out.items()})
""")


def saved_ops(export_dir):
    """Op types of a SavedModel's graph and function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
        ops.update(n.op for n in fn.node_def)
    return ops


def test_saved_models_reload_in_fresh_process(built, tmp_path):
    index, _, exact = built
    queries, domain = mixed_batch(seed=6, batch=30)
    scann_dir, exact_dir = str(tmp_path / "scann"), str(tmp_path / "exact")
    ix.save_index(index, scann_dir)
    ix.save_index(exact, exact_dir)
    assert not any(op.startswith("Scann") for op in saved_ops(exact_dir))
    assert any(op.startswith("Scann") for op in saved_ops(scann_dir))
    np.savez(tmp_path / "inputs.npz", queries=queries, domain=domain.astype(np.int64))
    args = json.dumps({"scann": scann_dir, "exact": exact_dir, "inputs": str(tmp_path / "inputs.npz"),
                       "outputs": str(tmp_path / "outputs.npz")})
    # A fresh interpreter: it inherits this process's environment (Keras 2, set by `mdr_contract`).
    done = subprocess.run([sys.executable, "-c", _FRESH, args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "outputs.npz")
    scann_ids, exact_ids = index(queries, domain)[1].numpy(), exact(queries, domain)[1].numpy()
    np.testing.assert_array_equal(got["exact_call"], exact_ids)
    np.testing.assert_array_equal(got["exact_signature"], exact_ids)
    np.testing.assert_array_equal(got["scann_call"], scann_ids)
    np.testing.assert_array_equal(got["scann_signature"], scann_ids)
    # In this process too, through load_index (which imports scann first).
    np.testing.assert_array_equal(ix.load_index(scann_dir)(queries, domain)[1].numpy(), scann_ids)
