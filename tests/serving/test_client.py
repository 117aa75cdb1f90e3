"""serving/client.py against the real embedded server (127.0.0.1, ephemeral port).

The served models are tiny hand-built SavedModels that follow the export contract of
`serving.export` (signature names, raw input names/dtypes/shapes from the spec, named outputs), so
these tests do not depend on the export: `retrieval` returns fixed ids per domain, `ranker` a
deterministic function of user, item, statistics and sequence inputs, `probe` echoes an int64 input,
`slow` is the ranker behind a sleeping validator (deadlines). A recording validator keeps the dtypes
and shapes that reached the server. The feature store's own tests are in test_feature_store.py.
"""
import collections
import math
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from mdr_contract import feature_spec as fs
from mdr_keras.models.ranker import ranker_features
from mdr_keras.models.retrieval import tower_features
from serving import client as cl
from serving import config as cfg
from serving.feature_store import FeatureStore
from serving.server import ModelServer

T = 4
SIDE = [fs.SideFeature("age_group", "user", "categorical"), fs.SideFeature("tenure_days", "user", "numeric"),
        fs.SideFeature("category", "item", "categorical"),
        fs.SideFeature("tags", "item", "categorical_list", length=2), fs.SideFeature("price", "item", "numeric")]
SPEC = fs.FeatureSpec(fs.record_features(SIDE, "category", T), domains=["d0", "d1"], sequence_length=T)
USER_INPUTS = [n for n in [f.name for f in SPEC.features]
               if n in set(tower_features(SPEC)[0] + tower_features(SPEC)[1])]
RANKER_INPUTS = [f.name for f in SPEC.features if f.name in set(sum(ranker_features(SPEC).values(), []))]
PROBE_INPUTS = ["user_id", "hist_item_id", "hist_len", "tenure_days"]

K = 5
RETRIEVED = {"d0": ["i1", "i2", "i3", "i4", "i9"], "d1": ["i6", "i7", "i3", "", ""]}  # i9: unknown to the store
BASE_SCORES = {"d0": [5.0, 4.0, 3.0, 2.0, 1.0], "d1": [5.0, 4.0, 3.0, -math.inf, -math.inf]}
SLOW_SECONDS = 0.6


def input_specs(names):
    parse = SPEC.tf_parse_spec(names)
    return [tf.TensorSpec([None] + list(parse[n].shape), parse[n].dtype, name=n) for n in names]


class Fake(tf.Module):
    """A contract-shaped model: `serving_default` over named raw inputs and `examples`."""

    def __init__(self, names, outputs):
        super().__init__()
        self.names, self._outputs = list(names), outputs
        self._parse = SPEC.tf_parse_spec(self.names)

    def signatures(self):
        @tf.function(input_signature=input_specs(self.names))
        def serve(*tensors):
            return self._outputs(dict(zip(self.names, tensors)))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def examples(serialized):
            return self._outputs(tf.io.parse_example(serialized, self._parse))

        return {"serving_default": serve, "examples": examples}


def retrieval_outputs(x):
    row = tf.cast(tf.equal(x["domain"], "d1"), tf.int32)
    ids = tf.gather(tf.constant([RETRIEVED["d0"], RETRIEVED["d1"]]), row)
    scores = tf.gather(tf.constant([BASE_SCORES["d0"], BASE_SCORES["d1"]]), row) + 0.01 * x["tenure_days"][:, None]
    return {"item_ids": ids, "scores": scores}


def ranker_logit(f, xp):
    """The fake ranker's logit, for tf (xp=tf) and numpy (xp=np) columns alike."""
    def eq(a, b):
        return xp.cast(xp.equal(a, b), tf.float32) if xp is tf else (a == b).astype(np.float64)

    in_history = (tf.reduce_sum(eq(f["hist_item_id"], f["item_id"][:, None]), axis=1) if xp is tf
                  else eq(f["hist_item_id"], f["item_id"][:, None]).sum(axis=1))
    return (0.1 * f["price"] + 0.01 * f["tenure_days"] + 1.0 * in_history + 0.5 * eq(f["age_group"], b"a1")
            + f["item_domain_ctr"] + 0.01 * f["user_domain_clicks"] + 0.25 * eq(f["tags"][:, 0], b"t1")
            + 0.3 * eq(f["hist_domain"][:, 0], f["domain"]) - 3.0)


def ranker_outputs(x):
    return {"probability": tf.sigmoid(ranker_logit(x, tf))}


def expected_probability(columns):
    f = {k: (v.astype(np.float64) if v.dtype != object else v) for k, v in columns.items()}
    return 1.0 / (1.0 + np.exp(-ranker_logit(f, np)))


def probe_outputs(x):
    return {"hist_len_plus_one": x["hist_len"] + 1,
            "real_positions": tf.reduce_sum(tf.cast(tf.not_equal(x["hist_item_id"], ""), tf.int64), axis=1)}


def write(path, module):
    tf.saved_model.save(module, path, signatures=module.signatures())


def make_store():
    def user(uid, age, tenure, hist):
        items = [h[0] for h in hist]
        return {"user_id": uid, "age_group": age, "tenure_days": tenure,
                "hist_item_id": items + [""] * (T - len(hist)),
                "hist_category": [h[1] for h in hist] + [""] * (T - len(hist)),
                "hist_domain": [h[2] for h in hist] + [""] * (T - len(hist)), "hist_len": len(hist)}

    def item(iid, category, tags, price):
        return {"item_id": iid, "category": category, "tags": tags, "price": price}

    def ustats(n, clicks, ctr):
        return {"user_domain_events": n, "user_domain_clicks": clicks, "user_domain_ctr": ctr}

    def istats(n, clicks, ctr):
        return {"item_domain_impressions": n, "item_domain_clicks": clicks, "item_domain_ctr": ctr}

    users = {"u1": user("u1", "a1", 100.0, [("i3", "c1", "d0"), ("i1", "c1", "d1")]),
             "u2": user("u2", "a2", 20.0, [])}
    user_stats = {("u1", "d0"): ustats(10.0, 3.0, 0.3), ("u2", "d0"): ustats(4.0, 0.0, 0.1),
                  ("u2", "d1"): ustats(6.0, 5.0, 0.8)}
    items = {"i1": item("i1", "c1", ["t1", ""], 5.0), "i2": item("i2", "c2", ["t2", "t1"], 30.0),
             "i3": item("i3", "c1", ["", ""], 12.0), "i4": item("i4", "c2", ["t1", "t2"], 20.0),
             "i6": item("i6", "c3", ["t3", ""], 8.0), "i7": item("i7", "c3", ["t1", ""], 1.0)}
    item_stats = {(i, "d0"): istats(10.0, 2.0, 0.2 + 0.05 * k) for k, i in enumerate(["i1", "i2", "i3", "i4"])}
    item_stats.update({("i6", "d1"): istats(5.0, 1.0, 0.25), ("i7", "d1"): istats(50.0, 40.0, 0.75)})
    return FeatureStore(SPEC, users, user_stats, items, item_stats, domain_priors={"d0": 0.25, "d1": 0.5})


RECEIVED = collections.defaultdict(list)


def recorder(model):
    def validate(signature, inputs):
        RECEIVED[model].append((signature, {k: (v.dtype, v.shape) for k, v in inputs.items()}))
    return validate


def slow_validator(signature, inputs):
    time.sleep(SLOW_SECONDS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("client_export")
    write(str(root / "retrieval" / "1"), Fake(USER_INPUTS, retrieval_outputs))
    write(str(root / "ranker" / "1"), Fake(RANKER_INPUTS, ranker_outputs))
    write(str(root / "probe" / "1"), Fake(PROBE_INPUTS, probe_outputs))
    write(str(root / "slow" / "1"), Fake(RANKER_INPUTS, ranker_outputs))
    models = [cfg.ModelConfig(m, str(root / m)) for m in ("retrieval", "ranker", "probe", "slow")]
    with ModelServer(models=models, port=0, poll_interval=0, max_workers=4,
                     validators={"retrieval": recorder("retrieval"), "ranker": recorder("ranker"),
                                 "probe": recorder("probe"), "slow": slow_validator}) as server:
        yield server


@pytest.fixture(scope="module")
def store():
    return make_store()


@pytest.fixture(scope="module", params=[False, True], ids=["serving_default", "examples"])
def client(server, request):
    with cl.Client(server.address, timeout=10, use_examples=request.param) as client:
        yield client


# ------------------------------------------------------------------ client against the server
def test_candidates_are_the_domain_ids_best_first(client, store):
    # u1's tenure 100 adds 0.01 * 100 = 1.0 to each fixed score.
    assert client.candidates("d0", "u1", 3, store) == [("i1", 6.0), ("i2", 5.0), ("i3", 4.0)]
    # d1 pads its 3 ids with "" / -inf: dropped. u2: + 0.2.
    found = client.candidates("d1", "u2", 10, store)
    assert [i for i, _ in found] == ["i6", "i7", "i3"]
    np.testing.assert_allclose([s for _, s in found], [5.2, 4.2, 3.2], rtol=1e-6)


def test_scores_match_the_model_on_the_store_features(client, store):
    items = ["i4", "i1", "i3", "i2"]
    got = client.scores("d0", "u1", items, store)
    want = expected_probability(store.features("u1", "d0", items))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_recommend_is_the_rankers_order_over_the_retrieved_candidates(client, store):
    recs = client.recommend("d0", "u1", store, n=3, k=K)
    known = ["i1", "i2", "i3", "i4"]  # i9 was retrieved but the store does not know it: dropped
    probabilities = expected_probability(store.features("u1", "d0", known))
    order = np.argsort(-probabilities, kind="stable")[:3]
    assert [i for i, _ in recs] == [known[i] for i in order]
    np.testing.assert_allclose([p for _, p in recs], probabilities[order], rtol=1e-5)
    assert [i for i, _ in recs] != known[:3]  # the ranker reorders retrieval's answer
    # A user unseen in d1 (u1): empty domain statistics, the item i3 unlisted in d1: prior CTR.
    recs = client.recommend("d1", "u1", store, n=10, k=K)
    assert sorted(i for i, _ in recs) == ["i3", "i6", "i7"]
    assert [p for _, p in recs] == sorted((p for _, p in recs), reverse=True)


def test_dtypes_and_shapes_reaching_the_server(server, store):
    RECEIVED.clear()
    with cl.Client(server.address, timeout=10) as client:
        client.scores("d0", "u1", ["i1", "i2", "i3"], store)
        client.candidates("d0", "u2", 2, store)
        out = client.run("probe", store.features("u1", "d0", ["i1", "i2"]))
    (signature, ranker), = RECEIVED["ranker"]
    assert signature == "serving_default" and sorted(ranker) == sorted(RANKER_INPUTS)
    for name, (dtype, shape) in ranker.items():
        f = SPEC[name]
        want_dtype = np.float32 if f.kind == fs.KIND_NUMERIC else np.int64 if f.kind == fs.KIND_INT else object
        assert dtype == want_dtype, name
        assert shape == ((3, f.length) if f.is_list else (3,)), name
    assert ranker["hist_item_id"] == (object, (3, T)) and ranker["tags"] == (object, (3, 2))
    (_, retrieval), = RECEIVED["retrieval"]
    assert sorted(retrieval) == sorted(USER_INPUTS) and retrieval["domain"] == (object, (1,))
    (_, probe), = RECEIVED["probe"]
    assert probe["hist_len"] == (np.int64, (2,)) and probe["tenure_days"] == (np.float32, (2,))
    assert out["hist_len_plus_one"].tolist() == [3, 3] and out["real_positions"].tolist() == [2, 2]


def test_examples_signature_reaches_the_server(server, store):
    RECEIVED.clear()
    with cl.Client(server.address, timeout=10, use_examples=True) as client:
        client.scores("d0", "u1", ["i1", "i2"], store)
    (signature, inputs), = RECEIVED["ranker"]
    assert signature == "examples" and inputs == {"examples": (object, (2,))}


def test_predict_raw_call(server):
    with cl.Client(server.address) as client:
        out = client.predict("probe", {"user_id": np.array(["u"]), "hist_item_id": np.array([["a", "", "", ""]]),
                                       "hist_len": np.array([4], np.int64), "tenure_days": np.array([1.0], np.float32)})
        assert out["hist_len_plus_one"].tolist() == [5] and out["real_positions"].tolist() == [1]
        assert client.model_status("ranker") == {1: "AVAILABLE"}
        assert set(client.signature_inputs("ranker")) == set(RANKER_INPUTS)


def test_unknown_model_is_not_found(server, store):
    with cl.Client(server.address) as client:
        with pytest.raises(cl.ServingError) as info:
            client.predict("nope", {"x": np.zeros([1], np.float32)})
        assert info.value.code == grpc.StatusCode.NOT_FOUND and info.value.code_name == "NOT_FOUND"
        assert "'nope'" in info.value.message and "ranker" in info.value.message
        assert str(info.value).startswith("model 'nope': NOT_FOUND: ")
        with pytest.raises(cl.ServingError, match="NOT_FOUND"):
            client.candidates("d0", "u1", 3, store, model="nope")


def test_bad_request_is_invalid_argument(server):
    with cl.Client(server.address) as client:
        with pytest.raises(cl.ServingError) as info:
            client.predict("probe", {"user_id": np.array(["u"])})
    assert info.value.code_name == "INVALID_ARGUMENT" and "missing input" in info.value.message


def test_deadline(server, store):
    # `slow`'s validator sleeps SLOW_SECONDS; the client's deadline is shorter.
    with cl.Client(server.address, timeout=SLOW_SECONDS / 3) as client:
        started = time.monotonic()
        with pytest.raises(cl.ServingError) as info:
            client.scores("d0", "u1", ["i1"], store, model="slow")
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < SLOW_SECONDS
        # A per-call timeout overrides the client's.
        assert len(client.scores("d0", "u1", ["i1"], store, model="slow", timeout=10)) == 1


def test_unreachable_server_is_unavailable():
    with cl.Client("127.0.0.1:1", timeout=2) as client:
        with pytest.raises(cl.ServingError) as info:
            client.predict("ranker", {"x": np.zeros([1], np.float32)})
    assert info.value.code_name == "UNAVAILABLE" and "127.0.0.1:1" in info.value.message


def test_unknown_user_and_domain_fail_before_any_rpc(store):
    with cl.Client("127.0.0.1:1", timeout=2) as client:  # nothing listens: a ValueError proves no RPC ran
        with pytest.raises(ValueError, match="Unknown user 'u404'.*cold_start=True"):
            client.candidates("d0", "u404", 3, store)
        with pytest.raises(ValueError, match=r"Unknown domain 'd7'; domains: \['d0', 'd1'\]"):
            client.recommend("d7", "u1", store)
        with pytest.raises(ValueError, match=r"Unknown item\(s\) \['i404'\]"):
            client.scores("d0", "u1", ["i1", "i404"], store)


def test_cold_start_user_is_served(server, store):
    with cl.Client(server.address, timeout=10) as client:
        found = client.candidates("d0", "u404", 2, store, cold_start=True)
    assert [i for i, _ in found] == ["i1", "i2"]  # cold-start tenure: the median of 100 and 20, + 0.01 * 60
    np.testing.assert_allclose([s for _, s in found], [5.6, 4.6], rtol=1e-6)


def test_chunked_scores_equal_one_request(server, store):
    items = ["i1", "i2", "i3", "i4", "i6"]
    with cl.Client(server.address, timeout=10) as one, \
            cl.Client(server.address, timeout=10, max_batch_size=2) as chunked:
        # Float32, other batch shapes: vectorized and scalar paths of sigmoid may differ by a few ulps.
        np.testing.assert_allclose(chunked.scores("d0", "u2", items, store), one.scores("d0", "u2", items, store),
                                   rtol=4 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("kwargs, match", [
    ({"address": "localhost"}, "`address`"), ({"timeout": 0}, "`timeout`"),
    ({"max_message_bytes": 0}, "`max_message_bytes`"), ({"max_batch_size": 0}, "`max_batch_size`")])
def test_client_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cl.Client(**{"address": "127.0.0.1:8500", **kwargs})


def test_conform_to_the_signature():
    seq = np.array([[b"a", b"b", b"c", b""]], dtype=object)
    assert cl._conform(seq, tf.string, (None, 2)).tolist() == [[b"a", b"b"]]  # most recent first: keep the front
    assert cl._conform(seq, tf.string, (None, 6)).tolist() == [[b"a", b"b", b"c", b"", b"", b""]]
    assert cl._conform(np.array(["x"]), tf.string, (None,)).tolist() == [b"x"]
    assert cl._conform(np.array([1.5]), tf.float32, (None, 1)).dtype == np.float32
    assert cl._conform(np.array([1.5]), tf.float32, (None, 1)).shape == (1, 1)
    assert cl._conform(np.array([2], np.int32), tf.int64, (None,)).dtype == np.int64


def test_format_tables():
    text = cl.format_candidates("d0", "u1", [("i1", 6.0), ("i22", 5.5)])
    lines = text.splitlines()
    assert lines[0] == "retrieval candidates for user 'u1' in domain 'd0'"
    assert lines[1].split() == ["rank", "item_id", "score"] and lines[3].split() == ["1", "i1", "6.0000"]
    assert cl.format_scores("d0", "u1", ["i1"], [0.25]).splitlines()[-1].split() == ["i1", "0.2500"]
    assert cl.format_recommendations("d0", "u1", [])
    assert cl.format_recommendations("d0", "u1", []).splitlines()[-1] == "(none)"


# ------------------------------------------------------------------ FeatureStore on hand-made data
def test_store_fallbacks(store):
    u1_d1 = store.user_features("u1", "d1")  # u1 never seen in d1
    assert (u1_d1["user_domain_events"], u1_d1["user_domain_clicks"], u1_d1["user_domain_ctr"]) == (0.0, 0.0, 0.5)
    assert u1_d1["hist_item_id"] == ["i3", "i1", "", ""] and u1_d1["age_group"] == "a1" and u1_d1["domain"] == "d1"
    cold = store.user_features("u404", "d0", cold_start=True)
    assert cold["user_id"] == "u404" and cold["age_group"] == "" and cold["hist_len"] == 0
    assert cold["hist_item_id"] == [""] * T and cold["user_domain_ctr"] == 0.25
    items = store.item_features(["i3", "i6"], "d1")  # i3 is not listed in d1
    assert items["item_domain_impressions"] == [0.0, 5.0] and items["item_domain_ctr"] == [0.5, 0.25]
    assert items["domain"] == ["d1", "d1"] and items["tags"] == [["", ""], ["t3", ""]]
    arrays = store.features("u1", "d0", ["i1", "i2"])
    assert arrays["hist_item_id"].shape == (2, T) and arrays["hist_item_id"].dtype == object
    assert arrays["price"].dtype == np.float32 and arrays["hist_len"].dtype == np.int64
    assert arrays["user_id"].tolist() == [b"u1", b"u1"]
    assert store.user_ids("d1") == ["u2"] and store.item_ids("d1") == ["i6", "i7"]
