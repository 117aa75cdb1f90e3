"""FeatureEncoder: the in-graph raw -> index mapping must agree with the spec's reference functions."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_contract import feature_spec as fs
from mdr_keras.layers.feature_encoder import FeatureEncoder
from tests import helpers
from tests.mdr_keras import layer_checks

FEATURES = [
    fs.Feature("item_id", fs.ROLE_ITEM, fs.KIND_CATEGORICAL, vocab_file="vocab/item_id.txt", vocab_size=3,
               num_oov_buckets=1),
    fs.Feature("tags", fs.ROLE_ITEM, fs.KIND_CATEGORICAL_LIST, length=2, vocab_file="vocab/tags.txt",
               vocab_size=2, num_oov_buckets=1),
    fs.Feature("price", fs.ROLE_ITEM, fs.KIND_NUMERIC, boundaries=(1.0, 10.0)),
    fs.Feature("domain", fs.ROLE_DOMAIN, fs.KIND_CATEGORICAL, vocab_file="vocab/domain.txt", vocab_size=2),
    fs.Feature("hist_item_id", fs.ROLE_SEQUENCE, fs.KIND_CATEGORICAL, length=3, vocab_from="item_id"),
    fs.Feature("hist_domain", fs.ROLE_SEQUENCE, fs.KIND_CATEGORICAL, length=3, vocab_from="domain"),
    fs.Feature("hist_len", fs.ROLE_SEQUENCE, fs.KIND_INT),
]
VOCABS = {"item_id": ["i1", "i2", "i3"], "tags": ["x", "y"]}


def make_encoder(**kwargs):
    return FeatureEncoder(FEATURES, ["a", "b"], VOCABS, **kwargs)


def raw_batch():
    return {
        "item_id": tf.constant(["i2", "zzz", ""]),
        "tags": tf.constant([["y", ""], ["x", "q"], ["", ""]]),
        "price": tf.constant([0.5, 1.0, 99.0]),
        "domain": tf.constant(["b", "a", "a"]),
        "hist_item_id": tf.constant([["i3", "i1", ""], ["", "", ""], ["new", "", ""]]),
        "hist_domain": tf.constant([["b", "a", ""], ["", "", ""], ["a", "", ""]]),
        "hist_len": tf.constant([2, 0, 1], tf.int64),
    }


def test_indices_computed_by_hand():
    out = {k: v.numpy().tolist() for k, v in make_encoder()(raw_batch()).items()}
    # item vocab i1, i2, i3 -> 2, 3, 4 (0 padding, 1 OOV): i2 -> 3, zzz -> 1, "" -> 0
    assert out["item_id"] == [3, 1, 0]
    assert out["tags"] == [[3, 0], [2, 1], [0, 0]]
    # bisect_right over (1, 10): 0.5 -> 0, 1.0 -> 1 (equal goes up), 99 -> 2
    assert out["price"] == [0, 1, 2]
    assert out["domain"] == [1, 0, 0]
    assert out["hist_item_id"] == [[4, 2, 0], [0, 0, 0], [1, 0, 0]]
    # history domains: 0 padding, then 1 + domain index
    assert out["hist_domain"] == [[2, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert out["hist_len"] == [2, 0, 1]


def test_agrees_with_the_spec_reference_functions():
    enc = make_encoder()
    tokens = ["i1", "i3", "", "nope", "i2"]
    got = enc({"item_id": tf.constant(tokens)})["item_id"].numpy().tolist()
    index = {t: i for i, t in enumerate(VOCABS["item_id"])}
    assert got == [fs.categorical_index(t, index) for t in tokens]
    values = [-1.0, 1.0, 5.0, 10.0, 11.0]
    got = enc({"price": tf.constant(values)})["price"].numpy().tolist()
    assert got == [fs.bucket_index(v, (1.0, 10.0)) for v in values]


def test_unknown_domain_is_an_error():
    with pytest.raises(tf.errors.InvalidArgumentError):
        make_encoder()({"domain": tf.constant(["zz"])})


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("names", [None, ["item_id", "domain"]])
def test_shapes(batch, names):
    raw = {k: tf.repeat(v[:1], batch, axis=0) for k, v in raw_batch().items()}
    out = make_encoder(names=names)(raw)
    assert set(out) == (set(raw) if names is None else set(names))
    for k, v in out.items():
        assert v.shape == raw[k].shape and v.dtype == tf.int64


def test_input_dims():
    enc = make_encoder()
    assert [enc.input_dim(n) for n in ("item_id", "tags", "price", "domain", "hist_item_id", "hist_domain")] == \
        [5, 4, 3, 2, 5, 3]


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: domains"):
        FeatureEncoder(FEATURES, [], VOCABS)
    with pytest.raises(ValueError, match="No vocabulary for feature 'tags'"):
        FeatureEncoder(FEATURES, ["a"], {"item_id": ["i1"]})


def test_config_round_trip_and_reload_in_fresh_process(tmp_path):
    enc = make_encoder()
    layer_checks.assert_config_round_trip(enc)
    inputs = {
        "item_id": keras.Input([], dtype=tf.string, name="item_id"),
        "price": keras.Input([], dtype=tf.float32, name="price"),
        "domain": keras.Input([], dtype=tf.string, name="domain"),
        "hist_item_id": keras.Input([3], dtype=tf.string, name="hist_item_id"),
    }
    model = keras.Model(inputs, make_encoder()(inputs))
    raw = {k: v.numpy() for k, v in raw_batch().items() if k in inputs}
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, raw, tmp_path, modules=["mdr_keras.layers.feature_encoder"], atol=0)


def test_encodes_the_jobs_records(sample_data):
    out, _ = sample_data
    spec = fs.FeatureSpec.load(out)
    enc = FeatureEncoder.from_spec(spec)
    records = helpers.read_records(out, "eval")
    batch = {name: tf.constant(np.array([r[name] for r in records])) for name in
             ("item_id", "domain", "hist_item_id", "genres", "price")}
    got = enc(batch)
    index = {t: i for i, t in enumerate(spec.vocabulary("item_id"))}
    assert got["item_id"].numpy().tolist() == [fs.categorical_index(r["item_id"], index) for r in records]
    assert got["domain"].numpy().tolist() == [spec.domains.index(r["domain"]) for r in records]
    assert got["price"].numpy().tolist() == [fs.bucket_index(r["price"], spec["price"].boundaries) for r in records]
    # i5 only occurs in the eval window: out of vocabulary.
    assert 1 in got["item_id"].numpy().tolist()
