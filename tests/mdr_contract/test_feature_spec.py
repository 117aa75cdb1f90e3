"""The feature spec: record layout, JSON round trip, index conventions, parse spec."""
import pytest

from mdr_contract import feature_spec as fs

SIDE = (fs.SideFeature("age", fs.ROLE_USER, fs.KIND_CATEGORICAL),
        fs.SideFeature("price", fs.ROLE_ITEM, fs.KIND_NUMERIC),
        fs.SideFeature("tags", fs.ROLE_ITEM, fs.KIND_CATEGORICAL_LIST, length=3),
        fs.SideFeature("cat", fs.ROLE_ITEM, fs.KIND_CATEGORICAL))


def make_spec(T=5):
    import dataclasses

    feats = [dataclasses.replace(f, vocab_size=10) if f.vocab_file else f
             for f in fs.record_features(SIDE, "cat", T)]
    return fs.FeatureSpec(feats, domains=["a", "b"], sequence_length=T, source="test")


def test_record_features_roles_and_order():
    spec = make_spec()
    assert [f.name for f in spec.by_role(fs.ROLE_USER)] == ["user_id", "age"]
    assert [f.name for f in spec.by_role(fs.ROLE_ITEM)] == ["item_id", "price", "tags", "cat"]
    assert spec["hist_category"].vocab_from == "cat"
    assert spec["hist_item_id"].is_list and not spec["hist_len"].is_list and spec["tags"].is_list
    assert spec["domain"].num_oov_buckets == 0
    assert spec["item_id"].input_dim == 10 + 1 + 1  # vocab + OOV + padding
    assert [f.name for f in fs.item_corpus_features(spec.features)] == [
        "item_id", "price", "tags", "cat", "domain", "item_domain_impressions", "item_domain_clicks",
        "item_domain_ctr"]


def test_json_round_trip(tmp_path):
    spec = make_spec()
    spec.save(str(tmp_path))
    back = fs.FeatureSpec.load(str(tmp_path))
    assert back.features == spec.features and back.domains == spec.domains
    assert back.sequence_length == 5 and back.path == str(tmp_path)


def test_index_conventions():
    vocab = {"x": 0, "y": 1}
    assert fs.categorical_index("", vocab) == 0     # padding
    assert fs.categorical_index("zzz", vocab) == 1  # OOV
    assert fs.categorical_index("y", vocab) == 3    # position 1 + OOV + padding
    # bisect_right: a value equal to a boundary goes to the bucket above it.
    assert [fs.bucket_index(v, [1.0, 2.0]) for v in (0.5, 1.0, 1.5, 2.0, 9.0)] == [0, 1, 1, 2, 2]


def test_tf_parse_spec_shapes():
    import tensorflow as tf

    parse = make_spec(T=7).tf_parse_spec()
    assert parse["hist_item_id"].shape == [7] and parse["hist_item_id"].dtype == tf.string
    assert parse["tags"].shape == [3]
    assert parse["price"].shape == [] and parse["price"].dtype == tf.float32
    assert parse["label"].dtype == tf.int64


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="x", role="domain", kind="categorical"), "role"),
    (dict(name="x", role="user", kind="image"), "kind"),
    (dict(name="x", role="user", kind="numeric", length=3), "length"),
    (dict(name="user_id", role="user", kind="categorical"), "reserved"),
])
def test_side_feature_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fs.SideFeature(**kwargs)


def test_bad_spec_values():
    with pytest.raises(ValueError, match="sequence_length"):
        fs.FeatureSpec([], domains=["a"], sequence_length=0)
    with pytest.raises(ValueError, match="version"):
        fs.FeatureSpec.from_json({"version": 99})
    with pytest.raises(FileNotFoundError, match="mdr preprocess"):
        fs.FeatureSpec.load("/nonexistent/folder")


def test_domain_stat_values_by_hand():
    # 3 events, 2 clicks, domain CTR 0.5: (2 + 5 * 0.5) / (3 + 5) = 4.5 / 8 = 0.5625.
    assert fs.domain_stat_values(fs.USER_DOMAIN_STATS, 3, 2, 0.5, min_events=1) == {
        "user_domain_events": 3.0, "user_domain_clicks": 2.0, "user_domain_ctr": 0.5625}
    # No event: the prior itself.
    assert fs.domain_stat_values(fs.ITEM_DOMAIN_STATS, 0, 0, 0.2)["item_domain_ctr"] == pytest.approx(0.2)
    # Below min_events (default 20) the clicks are the prior's, n * p = 4 * 0.5 = 2, and the CTR is p:
    # one event, one click would otherwise give (1 + 2.5) / 6 = 0.583, its own label.
    assert fs.domain_stat_values(fs.USER_DOMAIN_STATS, 4, 4, 0.5) == {
        "user_domain_events": 4.0, "user_domain_clicks": 2.0, "user_domain_ctr": 0.5}
    assert fs.domain_stat_values(fs.USER_DOMAIN_STATS, 1, 1, 0.5, min_events=1)["user_domain_ctr"] == \
        pytest.approx(3.5 / 6)
