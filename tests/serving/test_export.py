"""Tests of serving/export.py: TF Serving layout and configs, atomic versions, signature names and
dtypes, no ScaNN op where stock TF Serving must load the model, and the exported SavedModels
reloaded in a fresh process (TensorFlow only: no mdr code, ScaNN imported only for
`retrieval_scann`) against the in-process Keras models on real eval records, through both
signatures."""
import inspect
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from mdr_keras import data
from mdr_keras import training
from serving import config as cfg
from serving import export as ex
from serving import index as ix
from serving.feature_store import FeatureStore, to_array
from serving.servables import read_signature_defs
from tests.serving.top_k_checks import F32_EPS, assert_top_k, reference_scores, score_tolerance

K = 10
ROWS_PER_DOMAIN = 16
# Keras here against the SavedModel's graph in another process: the same float32 ops, maybe fused or
# vectorized otherwise (another machine, another kernel), over a few layers of outputs below 1.
TOWER_ATOL = 100 * F32_EPS
STOCK_MODELS = (artifacts.USER_TOWER, artifacts.ITEM_TOWER, artifacts.RANKER, artifacts.RETRIEVAL,
                artifacts.RECOMMENDER)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """The session's tiny ADI and ranker, and a folder for this module's exports."""
    return (*tiny_models, str(tmp_path_factory.mktemp("export")))


@pytest.fixture(scope="module")
def exported(trained):
    """One export of both models (version 1). A tree index even for these small domains
    (`brute_force_below=0`), so the partitioned, hashed and reordered search is what is served."""
    data_dir, retrieval_dir, ranker_dir, root = trained
    export_dir = os.path.join(root, "serving")
    lines = []
    report = ex.export_models(retrieval_dir, ranker_dir, data_dir, export_dir,
                              index_config=ix.IndexConfig(brute_force_below=0), k=K, progress=lines.append)
    report["progress_lines"] = lines  # what `mdr export` printed as it went
    return export_dir, report


@pytest.fixture(scope="module")
def batch(trained):
    """`ROWS_PER_DOMAIN` eval records of each domain: serialized, and parsed into raw tensors."""
    data_dir = trained[0]
    spec = fs.FeatureSpec.load(data_dir)
    records = [r.numpy() for r in tf.data.TFRecordDataset(data.record_files(data_dir, "eval"), compression_type="GZIP")]
    parsed = tf.io.parse_example(records, spec.tf_parse_spec())
    domain = parsed[fs.DOMAIN].numpy()
    rows = np.concatenate([np.flatnonzero(domain == d.encode())[:ROWS_PER_DOMAIN] for d in spec.domains])
    assert len(rows) == ROWS_PER_DOMAIN * spec.num_domains
    serialized = np.array([records[i] for i in rows], dtype=object)
    raw = {k: v.numpy() for k, v in tf.io.parse_example(serialized, spec.tf_parse_spec()).items()}
    return serialized, raw


@pytest.fixture(scope="module")
def expected(trained, batch):
    """What the Keras models give in this process, and each domain's item corpus (ids, embeddings)."""
    data_dir, retrieval_dir, ranker_dir, _ = trained
    _, raw = batch
    retrieval, spec, _ = training.load_model(retrieval_dir)
    ranker, _, _ = training.load_model(ranker_dir)
    ids, embeddings = ex.item_corpus(retrieval, spec, data_dir)
    return {"user": retrieval.user_embedding(raw).numpy(), "item": retrieval.item_embedding(raw).numpy(),
            "probability": ranker(raw, training=False)["probability"].numpy(),
            "corpus_ids": ids, "corpus_embeddings": embeddings, "spec": spec}


_RELOAD = textwrap.dedent("""
    import json, os, pickle, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf  # nothing of mdr: the SavedModels must stand alone
    args = json.loads(sys.argv[1])
    with open(args["inputs"], "rb") as f:
        serialized, raw = pickle.load(f)
    exec(args["rank_items"])

    def run(path):
        loaded = tf.saved_model.load(path)
        out = {}
        for key in ("serving_default", "examples"):
            fn = loaded.signatures[key]
            names = sorted(fn.structured_input_signature[1])
            feed = ({"examples": tf.constant(serialized)} if key == "examples"
                    else {n: tf.constant(raw[n]) for n in names})
            out[key] = {k: v.numpy() for k, v in fn(**feed).items()}
        if "rank" in loaded.signatures:  # the recommender's: each row's items = rank_items(raw)
            fn = loaded.signatures["rank"]
            feed = {n: tf.constant(raw[n]) for n in fn.structured_input_signature[1] if n != "item_ids"}
            out["rank"] = {k: v.numpy() for k, v in fn(item_ids=tf.constant(rank_items(raw)), **feed).items()}
        return out

    results = {}
    for name, path in args["stock"].items():  # before ScaNN registers its ops, as stock TF Serving
        results[name] = run(path)
    import scann  # noqa: F401  (registers the Scann>* ops retrieval_scann needs)
    results["retrieval_scann"] = run(args["scann"])
    with open(args["outputs"], "wb") as f:
        pickle.dump(results, f)
""")


def rank_items(raw):
    """The items the reloaded `rank` signature scores for each row: its own, the next two rows', an unknown one."""
    import numpy as np

    ids = raw["item_id"]
    return np.stack([ids, np.roll(ids, -1), np.roll(ids, -2), np.full(ids.shape, b"no-such-item", object)], axis=1)


@pytest.fixture(scope="module")
def reloaded(exported, batch, tmp_path_factory):
    """Every exported model's outputs on the batch, from a fresh process, through both signatures."""
    export_dir, report = exported
    folder = tmp_path_factory.mktemp("reload")
    inputs, outputs = str(folder / "inputs.pkl"), str(folder / "outputs.pkl")
    with open(inputs, "wb") as f:
        pickle.dump(batch, f)
    paths = {name: m["path"] for name, m in report["models"].items()}
    args = json.dumps({"inputs": inputs, "outputs": outputs, "scann": paths.pop(artifacts.RETRIEVAL_SCANN),
                       "stock": paths, "rank_items": inspect.getsource(rank_items)})
    done = subprocess.run([sys.executable, "-c", _RELOAD, args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(outputs, "rb") as f:
        return pickle.load(f)


# ------------------------------------------------------------------ layout and configs
def test_layout_configs_and_report(exported, expected):
    export_dir, report = exported
    spec = expected["spec"]
    assert report["version"] == 1 and report["export_dir"] == os.path.abspath(export_dir)
    assert sorted(report["models"]) == sorted(artifacts.MODEL_NAMES)
    for name in artifacts.MODEL_NAMES:
        version_dir = os.path.join(export_dir, name, "1")
        assert report["models"][name]["path"] == version_dir
        assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
        assert os.path.isdir(os.path.join(version_dir, "variables"))
        # Written aside, then renamed: nothing of the temporary folder is left.
        assert os.listdir(os.path.join(export_dir, name)) == ["1"]
        # The spec travels with the model: a client can read it from the export.
        shipped = fs.FeatureSpec.load(os.path.join(version_dir, artifacts.ASSETS_EXTRA))
        assert shipped.to_json() == spec.to_json()
        assert shipped.vocabulary(fs.ITEM_ID) == spec.vocabulary(fs.ITEM_ID)
        checks = cfg.read_serving_checks(version_dir)
        assert checks.max_batch_size == ex.MAX_BATCH_SIZE
        # The domain and every domain-valued sequence (padding "" allowed there) are closed vocabularies.
        assert checks.allowed_values == {n: spec.domains + ([fs.PAD] if spec[n].is_list else [])
                                         for n in ex.model_inputs(spec, name)
                                         if n == fs.DOMAIN or spec[n].vocab_from == fs.DOMAIN}
        assert checks.reject_non_finite
        sequences = [n for n in ex.model_inputs(spec, name) if spec[n].role == fs.ROLE_SEQUENCE]
        assert checks.max_length == {n: spec.sequence_length for n in sequences}
        assert bool(sequences) == (name != artifacts.ITEM_TOWER)
    models = cfg.read_models_config(os.path.join(export_dir, artifacts.MODELS_CONFIG))
    assert [(m.name, m.base_path) for m in models] == [(n, n) for n in artifacts.MODEL_NAMES]
    docker = cfg.read_models_config(os.path.join(export_dir, artifacts.DOCKER_MODELS_CONFIG))
    # Stock TF Serving (docker) cannot load retrieval_scann: its config leaves it out.
    assert [(m.name, m.base_path) for m in docker] == [(n, f"/models/{n}") for n in artifacts.MODEL_NAMES
                                                       if n != artifacts.RETRIEVAL_SCANN]
    batching = cfg.read_batching_config(os.path.join(export_dir, artifacts.BATCHING_CONFIG))
    assert batching.max_batch_size == ex.MAX_BATCH_SIZE
    # no wait for more requests; the thread count is each server's own default
    assert batching.batch_timeout_micros == 0 and batching.num_batch_threads is None
    assert report["configs"]["models_config"] == os.path.join(export_dir, artifacts.MODELS_CONFIG)
    # The index: each domain's whole corpus, measured against exact search.
    assert report["corpus"] == {d: len(i) for d, i in zip(spec.domains, expected["corpus_ids"])}
    assert sorted(report["index"]) == sorted(spec.domains)
    for d, r in report["index"].items():
        assert r["items"] == report["corpus"][d] and r["k"] == K and not r["brute_force"] and r["leaves"] > 1
    assert report["low_recall"] == [d for d, r in report["index"].items() if r["recall@k"] < 0.9]
    assert "retrieval_scann" in ex.format_report(report)
    assert "index " in ex.format_report(report) and "index " not in ex.format_report(report, indexes=False)
    # Progress as it went: the corpus, then each domain's index as it finished, then each model written.
    lines = report["progress_lines"]
    assert lines[0].startswith(f"embedded the item corpus: {sum(report['corpus'].values()):,} items")
    n = len(spec.domains)
    assert [line.split("] ")[0] for line in lines[1:1 + n]] == [f"[{i}/{n}" for i in range(1, n + 1)]
    assert [line.split()[2].rstrip(":") for line in lines[1:1 + n]] == list(spec.domains)
    assert [line.split()[1] for line in lines[1 + n:]] == list(report["models"])


def test_signatures_take_named_raw_inputs_and_give_named_outputs(exported, expected):
    export_dir, report = exported
    spec = expected["spec"]
    dtypes = {"bytes": tf.string, "float": tf.float32, "int64": tf.int64}
    for name in artifacts.MODEL_NAMES:
        defs = read_signature_defs(report["models"][name]["path"])
        assert {artifacts.DEFAULT_SIGNATURE, artifacts.EXAMPLES_SIGNATURE} <= set(defs)
        default, examples = defs[artifacts.DEFAULT_SIGNATURE], defs[artifacts.EXAMPLES_SIGNATURE]
        names = ex.model_inputs(spec, name)
        assert sorted(default.inputs) == sorted(names)
        assert report["models"][name]["signatures"][artifacts.DEFAULT_SIGNATURE]["inputs"] == names
        for n in names:
            info = default.inputs[n]
            dims = [d.size for d in info.tensor_shape.dim]
            assert tf.dtypes.as_dtype(info.dtype) == dtypes[spec[n].record_dtype], n
            assert dims == ([-1, spec[n].length] if spec[n].is_list else [-1]), n
        assert list(examples.inputs) == [artifacts.EXAMPLES_INPUT]
        assert examples.inputs[artifacts.EXAMPLES_INPUT].dtype == tf.string.as_datatype_enum
        for sig in (default, examples):
            assert sorted(sig.outputs) == sorted(ex.OUTPUTS[name])  # named, no output_0
    # Exactly the features each model reads.
    assert fs.ITEM_ID not in ex.model_inputs(spec, artifacts.USER_TOWER)
    assert fs.USER_ID not in ex.model_inputs(spec, artifacts.ITEM_TOWER)
    assert fs.HIST_DOMAIN in ex.model_inputs(spec, artifacts.RANKER)
    assert fs.LABEL not in ex.model_inputs(spec, artifacts.RANKER)


def _ops(saved_model_dir):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for graph in proto.meta_graphs:
        ops |= {n.op for n in graph.graph_def.node}
        for function in graph.graph_def.library.function:
            ops |= {n.op for n in function.node_def}
    return ops


def test_only_retrieval_scann_holds_scann_ops(exported):
    _, report = exported
    for name in STOCK_MODELS:
        assert not [op for op in _ops(report["models"][name]["path"]) if op.startswith("Scann")], name
    assert "Scann>TensorsToScann" in _ops(report["models"][artifacts.RETRIEVAL_SCANN]["path"])


# ------------------------------------------------------------------ reloaded outputs
@pytest.mark.parametrize("signature", [artifacts.DEFAULT_SIGNATURE, artifacts.EXAMPLES_SIGNATURE])
def test_reloaded_towers_and_ranker_match_keras(reloaded, expected, signature):
    np.testing.assert_allclose(reloaded[artifacts.USER_TOWER][signature]["embedding"], expected["user"],
                               atol=TOWER_ATOL)
    np.testing.assert_allclose(reloaded[artifacts.ITEM_TOWER][signature]["embedding"], expected["item"],
                               atol=TOWER_ATOL)
    np.testing.assert_allclose(reloaded[artifacts.RANKER][signature]["probability"], expected["probability"],
                               atol=TOWER_ATOL)


@pytest.mark.parametrize("signature", [artifacts.DEFAULT_SIGNATURE, artifacts.EXAMPLES_SIGNATURE])
def test_reloaded_exact_retrieval_is_top_k_of_the_rows_domain(reloaded, expected, batch, signature):
    spec = expected["spec"]
    out = reloaded[artifacts.RETRIEVAL][signature]
    assert out["item_ids"].shape == (len(expected["user"]), K) and out["scores"].dtype == np.float32
    for row, domain in enumerate(batch[1][fs.DOMAIN]):
        d = spec.domains.index(domain.decode())
        ids, emb = expected["corpus_ids"][d], expected["corpus_embeddings"][d]
        assert set(out["item_ids"][row]) <= set(ids)  # only items of the row's domain
        # The export's user tower ran in its own graph: its embedding is this process's within
        # TOWER_ATOL per element, which the tolerance carries into the scores; near-ties may swap.
        user = expected["user"][row:row + 1]
        position = {item: i for i, item in enumerate(ids)}
        found = np.array([[position[item] for item in out["item_ids"][row]]])
        assert_top_k(out["scores"][row:row + 1], found, reference_scores(user, emb),
                     score_tolerance(user, emb, input_error=TOWER_ATOL))


def test_reloaded_scann_retrieval_agrees_with_exact(reloaded):
    for signature in (artifacts.DEFAULT_SIGNATURE, artifacts.EXAMPLES_SIGNATURE):
        exact = reloaded[artifacts.RETRIEVAL][signature]["item_ids"]
        found = reloaded[artifacts.RETRIEVAL_SCANN][signature]["item_ids"]
        assert found.shape == exact.shape
        recall = np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)])
        assert recall >= 0.9, (signature, recall)


@pytest.mark.parametrize("signature", [artifacts.DEFAULT_SIGNATURE, artifacts.EXAMPLES_SIGNATURE])
def test_reloaded_recommender_is_the_retrieval_ranked_by_the_ranker(reloaded, expected, batch, trained, signature):
    # the two calls it replaces: retrieval's K candidates, then the ranker on the row's features with each
    # candidate's features from the feature store, ordered by probability
    data_dir, _, ranker_dir, _ = trained
    spec, (_, raw) = expected["spec"], batch
    out, retrieved = reloaded[artifacts.RECOMMENDER][signature], reloaded[artifacts.RETRIEVAL][signature]
    assert out["item_ids"].shape == out["probabilities"].shape == out["retrieval_scores"].shape == (len(raw[fs.DOMAIN]), K)
    ranker, _, _ = training.load_model(ranker_dir)
    store = FeatureStore.load(data_dir)
    names = ex.model_inputs(spec, artifacts.RANKER)
    feed, candidates = {n: [] for n in names}, []
    for row, domain in enumerate(raw[fs.DOMAIN]):
        ids = [i.decode() for i in retrieved["item_ids"][row] if i]
        assert sorted(i.decode() for i in out["item_ids"][row] if i) == sorted(ids)  # the same K candidates
        items = store.item_features(ids, domain.decode())
        for n in names:
            feed[n].append(to_array(spec[n], items[n]) if n in items else np.repeat(raw[n][row:row + 1], len(ids), 0))
        candidates.append(ids)
    probability = iter(ranker({n: np.concatenate(v) for n, v in feed.items()}, training=False)["probability"].numpy())
    for row, ids in enumerate(candidates):
        by_id = {i: next(probability) for i in ids}
        found = [i.decode() for i in out["item_ids"][row][:len(ids)]]
        np.testing.assert_allclose(out["probabilities"][row][:len(ids)], [by_id[i] for i in found], atol=TOWER_ATOL)
        assert (np.diff(out["probabilities"][row][:len(ids)]) <= 0).all()  # best first
        assert sorted(by_id.values(), reverse=True) == pytest.approx(out["probabilities"][row][:len(ids)], abs=TOWER_ATOL)


def test_reloaded_recommenders_rank_signature_is_the_ranker_on_the_stores_features(reloaded, expected, batch,
                                                                                  trained):
    # `rank`: the user's features once, the items' looked up in the graph; the ranker with the store's features.
    data_dir, _, ranker_dir, _ = trained
    spec, (_, raw) = expected["spec"], batch
    out, ids = reloaded[artifacts.RECOMMENDER]["rank"], rank_items(raw)
    assert out["probabilities"].shape == out["known"].shape == ids.shape and out["known"].dtype == bool
    ranker, _, _ = training.load_model(ranker_dir)
    store = FeatureStore.load(data_dir)
    names = ex.model_inputs(spec, artifacts.RANKER)
    for row, domain in enumerate(raw[fs.DOMAIN]):
        known = [store.has_item(i.decode(), domain.decode()) for i in ids[row]]
        assert out["known"][row].tolist() == known and not known[-1] and any(known)
        found = [i.decode() for i, k in zip(ids[row], known) if k]
        items = store.item_features(found, domain.decode())
        feed = {n: to_array(spec[n], items[n]) if n in items else np.repeat(raw[n][row:row + 1], len(found), 0)
                for n in names}
        np.testing.assert_allclose(out["probabilities"][row][known], ranker(feed, training=False)["probability"]
                                   .numpy().reshape(-1), atol=TOWER_ATOL)
        assert (out["probabilities"][row][~np.array(known)] == 0).all()


# ------------------------------------------------------------------ versions
def test_second_export_adds_version_2_and_keeps_1(exported, trained):
    data_dir, _, ranker_dir, _ = trained
    export_dir, first = exported
    with pytest.raises(FileExistsError, match="Version 1 already exists"):
        ex.export_models(None, ranker_dir, data_dir, export_dir, version=1)
    report = ex.export_models(None, ranker_dir, data_dir, export_dir)  # the ranker alone
    assert report["version"] == 2 and list(report["models"]) == [artifacts.RANKER]
    assert sorted(os.listdir(os.path.join(export_dir, artifacts.RANKER))) == ["1", "2"]
    assert cfg.list_versions(os.path.join(export_dir, artifacts.USER_TOWER)) == [1]
    assert os.path.isfile(os.path.join(first["models"][artifacts.RANKER]["path"], "saved_model.pb"))
    # The models not exported this time stay in the config.
    names = [m.name for m in cfg.read_models_config(os.path.join(export_dir, artifacts.MODELS_CONFIG))]
    assert names == list(artifacts.MODEL_NAMES)
    assert ex.next_version(export_dir) == 3


def test_a_popularity_prior_is_exported_and_needs_the_dot_product(trained, expected, tmp_path):
    data_dir, retrieval_dir, _, _ = trained
    # The tiny ADI has the prior (tests/conftest.py): its towers' 8 units and the prior's; the item's last unit is
    # temperature * log(clicks + 1) of the item in its domain (prior 1).
    model, spec, _ = training.load_model(retrieval_dir)
    assert model.popularity_prior == 1.0
    assert expected["user"].shape[1] == expected["item"].shape[1] == 8 + 1
    np.testing.assert_allclose(expected["user"][:, -1], 1.0)
    assert np.ptp(expected["item"][:, -1]) > 0  # items of different popularity
    with pytest.raises(ValueError, match="popularity prior, which needs the dot product. Received: distance"):
        ex.export_models(retrieval_dir, None, data_dir, str(tmp_path / "out"),
                         index_config=ix.IndexConfig(distance="squared_l2"))


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="Nothing to export"):
        ex.export_models(None, None, str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="`k` must be an integer >= 1"):
        ex.export_models(None, "ranker", str(tmp_path), str(tmp_path / "out"), k=0)
    with pytest.raises(ValueError, match="`version` must be an integer >= 1"):
        ex.export_models(None, "ranker", str(tmp_path), str(tmp_path / "out"), version=0)
    with pytest.raises(ValueError, match="must be a local folder"):
        ex.export_models(None, "ranker", str(tmp_path), "gs://bucket/export")
