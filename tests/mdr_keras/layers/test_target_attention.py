"""TargetAttention (ADS eq. 8-12 MHA form, DIN activation unit): hand-computed values, exactly-zero weights
at padded positions, all-padding rows, NumPy references over a shape grid, config, save / reload,
argument checks."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.target_attention import TargetAttention
from tests.mdr_keras import layer_checks

LN3 = math.log(3.0)  # softmax([ln 3, 0]) = [3/4, 1/4]


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, np.float64)))


def short_name(var):
    return var.name.split("/")[-1].split(":")[0]


def assign(layer, **values):
    assert sorted(short_name(w) for w in layer.weights) == sorted(values)
    for var in layer.weights:
        var.assign(np.asarray(values[short_name(var)], np.float32).reshape(var.shape))


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for var in layer.weights:
        var.assign(rng.normal(scale=0.7, size=var.shape))


def data(batch, t, d_q, d_s, multi, seed=0, real=None):
    """Queries, sequence and a mask with `real[b]` real items first (default `b % t + 1`)."""
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(batch, t, d_q) if multi else (batch, d_q)).astype(np.float32)
    seq = rng.normal(size=(batch, t, d_s)).astype(np.float32)
    real = [(b % t) + 1 for b in range(batch)] if real is None else real
    mask = np.arange(t)[None, :] < np.asarray(real)[:, None]
    return queries, seq, mask


def masked_softmax(logits, mask):  # logits [B, T, ...], mask [B, T]; an all-padding row -> zeros
    m = np.broadcast_to(mask.reshape(mask.shape + (1,) * (logits.ndim - 2)), logits.shape)
    shifted = np.where(m, logits - np.where(m, logits, -np.inf).max(axis=1, keepdims=True), 0.0)
    e = np.where(m, np.exp(shifted), 0.0)
    return e / np.maximum(e.sum(axis=1, keepdims=True), 1e-30)


def mha_reference(layer, queries, seq, mask):
    w = {short_name(v): v.numpy().astype(np.float64) for v in layer.weights}
    q = np.einsum("...d,dha->...ha", queries, w["query_kernel"]) + w.get("query_bias", 0.0)
    k = np.einsum("btd,dha->btha", seq, w["key_kernel"]) + w.get("key_bias", 0.0)
    v = np.einsum("btd,dha->btha", seq, w["value_kernel"]) + w.get("value_bias", 0.0)
    q = q[:, None] if queries.ndim == 2 else q
    weights = masked_softmax((q * k).sum(-1) / math.sqrt(k.shape[-1]), mask)  # [B, T, H]
    out = np.einsum("bth,btha->bha", weights, v).reshape(len(seq), -1)
    if "output_kernel" in w:
        out = out @ w["output_kernel"] + w.get("output_bias", 0.0)
    return out, weights.transpose(0, 2, 1)


def din_reference(layer, queries, seq, mask, softmax):
    w = {short_name(v): v.numpy().astype(np.float64) for v in layer.weights}
    q = np.broadcast_to(queries[:, None] if queries.ndim == 2 else queries, seq.shape)
    h = np.concatenate([q, seq, q - seq, q * seq], axis=-1)
    n = len(layer.hidden_units)
    for i in range(n + 1):
        h = h @ w[f"unit_kernel_{i}"] + w[f"unit_bias_{i}"]
        h = sigmoid(h) if i < n else h
    weights = masked_softmax(h[..., 0], mask) if softmax else np.where(mask, h[..., 0], 0.0)
    return np.einsum("bt,btd->bd", weights, seq), weights


# ------------------------------------------------------------------ 1. values by hand
def mha_by_hand():
    # d_S = d_Q = 2, H = 2 heads of d_A = 1: head h reads coordinate h of queries and items (W_Q = W_K = W_V = I)
    layer = TargetAttention("mha", num_heads=2, head_dim=1)
    layer([np.zeros((1, 3, 2), np.float32), np.zeros((1, 3, 2), np.float32), np.ones((1, 3), bool)])
    eye = np.eye(2).reshape(2, 2, 1)
    assign(layer, query_kernel=eye, key_kernel=eye, value_kernel=eye)
    return layer


def test_mha_multi_query_by_hand():
    layer = mha_by_hand()
    queries = np.array([[[LN3, 1.0], [1.0, 0.0], [9.0, 9.0]]], np.float32)  # query t for position t
    seq = np.array([[[1.0, 2.0], [0.0, 3.0], [100.0, -7.0]]], np.float32)  # position 2 padded
    mask = np.array([[True, True, False]])
    out, scores = layer([queries, seq, mask], return_attention_scores=True)
    # head 0: logits <q_t, k_t> / sqrt(1) = [ln3 * 1, 1 * 0, masked] -> softmax [3/4, 1/4, 0]
    #   output 3/4 * 1 + 1/4 * 0 = 0.75
    # head 1: logits [1 * 2, 0 * 3, masked] = [2, 0] -> [sigmoid(2), sigmoid(-2), 0]
    #   output sigmoid(2) * 2 + sigmoid(-2) * 3 = 2 + sigmoid(-2) = 2.119203
    np.testing.assert_allclose(out, [[0.75, 2 + sigmoid(-2)]], rtol=1e-6)
    np.testing.assert_allclose(scores, [[[0.75, 0.25, 0.0], [sigmoid(2), sigmoid(-2), 0.0]]], rtol=1e-6)
    assert scores.numpy()[0, :, 2].tolist() == [0.0, 0.0]


def test_mha_single_query_and_scaling_by_hand():
    layer = mha_by_hand()
    seq = np.array([[[1.0, 2.0], [0.0, 3.0], [100.0, -7.0]]], np.float32)
    mask = np.array([[True, True, False]])
    out = layer([np.array([[LN3, 0.0]], np.float32), seq, mask])
    # the one query (ln3, 0) meets every key: head 0 logits [ln3, 0] -> [3/4, 1/4] -> 0.75;
    # head 1 logits [0, 0] -> [1/2, 1/2] -> (2 + 3) / 2 = 2.5
    np.testing.assert_allclose(out, [[0.75, 2.5]], rtol=1e-6)
    # the 1 / sqrt(d_A) scaling: one head of d_A = 2, W = I, q = (sqrt(2) ln3, 0), k_0 = (1, 0), k_1 = (0, 5):
    # logits [sqrt(2) ln3 / sqrt(2), 0] = [ln3, 0] -> [3/4, 1/4]
    one = TargetAttention("mha", num_heads=1)
    one([np.zeros((1, 2), np.float32), np.zeros((1, 2, 2), np.float32)])
    eye = np.eye(2).reshape(2, 1, 2)
    assign(one, query_kernel=eye, key_kernel=eye, value_kernel=eye)
    out = one([np.array([[math.sqrt(2) * LN3, 0.0]], np.float32), np.array([[[1.0, 0.0], [0.0, 5.0]]], np.float32)])
    np.testing.assert_allclose(out, [[0.75, 1.25]], rtol=1e-6)  # 3/4 (1, 0) + 1/4 (0, 5)


@pytest.mark.parametrize("normalization", [None, "softmax"])
def test_din_by_hand(normalization):
    layer = TargetAttention("din", hidden_units=[1], activation="relu", normalization=normalization)
    layer([np.zeros((1, 1), np.float32), np.zeros((1, 3, 1), np.float32), np.ones((1, 3), bool)])
    # activation unit on [q, k, q - k, q * k]: a = 2 * relu(q + k) + 0
    assign(layer, unit_kernel_0=[[1], [1], [0], [0]], unit_bias_0=[0], unit_kernel_1=[[2]], unit_bias_1=[0])
    seq = np.array([[[1.0], [-0.5], [2.0]]], np.float32)  # position 2 padded
    out, scores = layer([np.array([[1.0]], np.float32), seq, np.array([[True, True, False]])],
                        return_attention_scores=True)
    # a_0 = 2 relu(1 + 1) = 4, a_1 = 2 relu(1 - 0.5) = 1, a_2 = 0 (padded)
    if normalization is None:  # DIN: raw weights, out = 4 * 1 + 1 * (-0.5) = 3.5
        np.testing.assert_allclose(scores, [[4.0, 1.0, 0.0]], rtol=1e-6)
        np.testing.assert_allclose(out, [[3.5]], rtol=1e-6)
    else:  # softmax over [4, 1]: [e^4, e] / (e^4 + e); out = (e^4 - 0.5 e) / (e^4 + e)
        e4, e1 = math.exp(4), math.e
        np.testing.assert_allclose(scores, [[e4 / (e4 + e1), e1 / (e4 + e1), 0.0]], rtol=1e-6)
        np.testing.assert_allclose(out, [[(e4 - 0.5 * e1) / (e4 + e1)]], rtol=1e-6)
    assert scores.numpy()[0, 2] == 0.0


# ------------------------------------------------------------------ 2. padding
CASES = [("mha", None, False), ("mha", None, True), ("din", None, False), ("din", None, True),
         ("din", "softmax", True), ("mha", "none", True)]


@pytest.mark.parametrize("mode,normalization,multi", CASES)
def test_padded_positions_get_exactly_zero_weight_and_do_not_matter(mode, normalization, multi):
    layer = TargetAttention(mode, num_heads=2, hidden_units=[8, 4], normalization=normalization, output_units=3,
                            use_bias=True)
    queries, seq, mask = data(4, 6, 4, 4, multi, real=[6, 1, 3, 5])
    out, scores = layer([queries, seq, mask], return_attention_scores=True)
    randomize(layer)
    out, scores = layer([queries, seq, mask], return_attention_scores=True)
    padded = ~mask if mode == "din" else np.broadcast_to(~mask[:, None, :], scores.shape)
    assert (scores.numpy()[padded] == 0.0).all()
    assert (np.abs(scores.numpy()[~padded]) > 0.0).all()
    garbage = np.random.default_rng(9).normal(scale=1e3, size=seq.shape).astype(np.float32)
    seq2 = np.where(mask[..., None], seq, garbage)
    queries2 = np.where(mask[..., None], queries, -garbage) if multi else queries  # padded queries too
    out2, scores2 = layer([queries2, seq2, mask], return_attention_scores=True)
    np.testing.assert_array_equal(out2.numpy(), out.numpy())
    np.testing.assert_array_equal(scores2.numpy(), scores.numpy())


@pytest.mark.parametrize("mode,normalization,multi", CASES)
def test_all_padding_row_gives_zero_output_and_finite_gradients(mode, normalization, multi):
    layer = TargetAttention(mode, num_heads=2, hidden_units=[4], normalization=normalization)
    queries, seq, mask = data(3, 4, 4, 4, multi, real=[0, 2, 0])
    layer([queries, seq, mask])
    randomize(layer)
    seq_t = tf.constant(seq)
    with tf.GradientTape() as tape:
        tape.watch(seq_t)
        out, scores = layer([queries, seq_t, mask], return_attention_scores=True)
        loss = tf.reduce_sum(out ** 2)
    out, scores = out.numpy(), scores.numpy()
    assert (out[[0, 2]] == 0.0).all() and (scores[[0, 2]] == 0.0).all()
    assert np.abs(out[1]).max() > 0.0 and np.isfinite(out).all()
    grads = tape.gradient(loss, [seq_t] + layer.trainable_weights)
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in grads)


def test_no_mask_means_no_padding():
    layer = TargetAttention("mha")
    queries, seq, _ = data(2, 3, 4, 4, multi=False)
    np.testing.assert_array_equal(layer([queries, seq]).numpy(),
                                  layer([queries, seq, np.ones((2, 3), bool)]).numpy())
    np.testing.assert_array_equal(layer([queries, seq, np.array([[1, 1, 0], [1, 0, 0]])]).numpy(),  # 0/1 mask
                                  layer([queries, seq, np.array([[1, 1, 0], [1, 0, 0]], bool)]).numpy())


@pytest.mark.parametrize("mode", ["mha", "din"])
def test_single_query_is_the_tiled_multi_query(mode):
    layer = TargetAttention(mode, num_heads=2)
    queries, seq, mask = data(3, 5, 4, 4, multi=False)
    single = layer([queries, seq, mask]).numpy()
    tiled = layer([np.repeat(queries[:, None], 5, axis=1), seq, mask]).numpy()
    np.testing.assert_allclose(single, tiled, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ 3. shapes, references
@pytest.mark.parametrize("num_heads,head_dim", [(1, None), (2, None), (2, 3)])
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("output_units,use_bias", [(None, False), (5, True)])
@pytest.mark.parametrize("d_q", [4, 3])
def test_mha_shapes_and_reference(num_heads, head_dim, multi, output_units, use_bias, d_q):
    batch, t, d_s = 4, 5, 4
    layer = TargetAttention("mha", num_heads=num_heads, head_dim=head_dim, output_units=output_units,
                            use_bias=use_bias)
    queries, seq, mask = data(batch, t, d_q, d_s, multi)
    layer([queries, seq, mask])
    randomize(layer, seed=num_heads)
    out, scores = layer([queries, seq, mask], return_attention_scores=True)
    a = head_dim or d_s // num_heads
    width = output_units or num_heads * a
    assert out.shape == (batch, width) and scores.shape == (batch, num_heads, t)
    assert layer.compute_output_shape([tf.TensorShape([None, d_q]), tf.TensorShape([None, t, d_s]),
                                       tf.TensorShape([None, t])]) == [None, width]
    assert layer.key_kernel.shape == (d_s, num_heads, a) and layer.query_kernel.shape == (d_q, num_heads, a)
    want_out, want_scores = mha_reference(layer, queries, seq, mask)
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores.numpy().sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("hidden_units", [[3], [8, 4]])
@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("normalization", [None, "softmax"])
@pytest.mark.parametrize("output_units", [None, 2])
def test_din_shapes_and_reference(hidden_units, multi, normalization, output_units):
    batch, t, d = 4, 5, 3
    layer = TargetAttention("din", hidden_units=hidden_units, normalization=normalization, output_units=output_units)
    queries, seq, mask = data(batch, t, d, d, multi)
    layer([queries, seq, mask])
    randomize(layer, seed=len(hidden_units))
    out, scores = layer([queries, seq, mask], return_attention_scores=True)
    assert out.shape == (batch, output_units or d) and scores.shape == (batch, t)
    assert [tuple(k.shape) for k in layer.unit_kernels] == list(zip([4 * d] + hidden_units, hidden_units + [1]))
    want_out, want_scores = din_reference(layer, queries, seq, mask, softmax=normalization == "softmax")
    if output_units:
        want_out = want_out @ layer.output_kernel.numpy()
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["mha", "din"])
def test_mixed_precision(mode):
    layer = TargetAttention(mode, dtype=keras.mixed_precision.Policy("mixed_float16"))
    queries, seq, mask = data(3, 4, 4, 4, multi=True, real=[0, 2, 4])
    out, scores = layer([queries, seq, mask], return_attention_scores=True)
    assert out.dtype == tf.float16 and scores.dtype == tf.float16
    assert (out.numpy()[0] == 0).all() and np.isfinite(out.numpy()).all()
    reference = mha_reference(layer, queries, seq, mask)[0] if mode == "mha" else \
        din_reference(layer, queries, seq, mask, softmax=False)[0]
    np.testing.assert_allclose(out.numpy(), reference, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ 4. config, save / reload
@pytest.mark.parametrize("kwargs", [
    {},
    {"mode": "mha", "num_heads": 4, "head_dim": 8, "output_units": 16, "use_bias": True, "name": "mha"},
    {"mode": "din", "hidden_units": [16, 8], "activation": "relu", "normalization": "softmax",
     "kernel_initializer": "he_normal", "kernel_regularizer": keras.regularizers.L2(1e-4)},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(TargetAttention(**kwargs))
    for key in ("mode", "num_heads", "head_dim", "output_units", "use_bias", "hidden_units", "normalization"):
        if key in kwargs:
            assert getattr(clone, key) == kwargs[key]
    queries, seq, mask = data(2, 3, 4, 4, multi=True)
    clone([queries, seq, mask])


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    t, d = 5, 4
    q_in = keras.Input(shape=(d,), name="query")
    mq_in = keras.Input(shape=(t, d), name="queries")
    seq_in = keras.Input(shape=(t, d), name="sequence")
    mask_in = keras.Input(shape=(t,), dtype="bool", name="mask")
    mha_out, mha_scores = TargetAttention("mha", num_heads=2, output_units=3, name="mha")(
        [mq_in, seq_in, mask_in], return_attention_scores=True)
    outputs = {"mha": mha_out, "mha_scores": mha_scores,
               "mha_single": TargetAttention("mha", num_heads=1, use_bias=True, name="mha1")([q_in, seq_in, mask_in]),
               "din": TargetAttention("din", hidden_units=[6], name="din")([mq_in, seq_in, mask_in])}
    model = keras.Model({"query": q_in, "queries": mq_in, "sequence": seq_in, "mask": mask_in}, outputs)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, TargetAttention):
            randomize(layer, seed=i)
    queries, seq, mask = data(4, t, d, d, multi=True, real=[5, 0, 2, 4])
    inputs = {"query": queries[:, 0], "queries": queries, "sequence": seq, "mask": mask}
    layer_checks.assert_same_after_reload_in_fresh_process(model, inputs, tmp_path,
                                                           modules=["mdr_keras.layers.target_attention"])


# ------------------------------------------------------------------ 5. bad arguments
@pytest.mark.parametrize("kwargs", [
    {"mode": "MHA"}, {"mode": "can"},
    {"num_heads": 0}, {"num_heads": 2.0}, {"num_heads": True},
    {"head_dim": 0}, {"head_dim": "8"},
    {"output_units": 0}, {"output_units": 1.5},
    {"use_bias": 1},
    {"hidden_units": []}, {"hidden_units": [8, 0]}, {"hidden_units": 8},
    {"normalization": "sparsemax"}, {"normalization": "Softmax"},
    {"activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        TargetAttention(**kwargs)


@pytest.mark.parametrize("kwargs,inputs", [
    ({"mode": "din"}, [np.ones((2, 3)), np.ones((2, 5, 4)), np.ones((2, 5), bool)]),  # d_Q != d_S
    ({"num_heads": 3}, [np.ones((2, 4)), np.ones((2, 5, 4)), np.ones((2, 5), bool)]),  # 3 heads do not divide 4
    ({}, [np.ones((2, 4)), np.ones((2, 4)), np.ones((2, 5), bool)]),                    # sequence not [B, T, d_S]
    ({}, [np.ones((2, 1, 5, 4)), np.ones((2, 5, 4)), np.ones((2, 5), bool)]),           # queries rank 4
    ({}, [np.ones((2, 5, 4))]),                                                         # one input
])
def test_bad_inputs(kwargs, inputs):
    with pytest.raises(ValueError, match="Received:"):
        TargetAttention(**kwargs)([np.asarray(x, np.float32) if x.dtype != bool else x for x in inputs])
