"""ADIBackbone (ADI eq. 8-18 with DSBN eq. 20 and DIAL eq. 21-26): hand-computed values, a NumPy reference
for every fusion / placement, the gate, per-domain routing of rows and gradients, shapes, config, save /
reload, argument checks."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.adi_backbone import ADIBackbone
from tests.mdr_keras import layer_checks

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4, softmax([ln 3, 0]) = [3/4, 1/4]
EPS = 1e-3


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, np.float64)))


def relu(v):
    return np.maximum(v, 0.0)


def inputs_for(batch, features, emb_dim, num_domains, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, features)).astype(np.float32)
    domain = (np.arange(batch) % num_domains).astype(np.int32)
    emb = rng.normal(size=(num_domains, emb_dim)).astype(np.float32)[domain]  # one embedding per domain
    return x, domain, emb


def short_name(var):
    return var.name.split("/")[-1].split(":")[0]


def set_by_name(layer, values):
    """set_weights with the values given by (short) weight name, in `layer.weights` order."""
    names = [short_name(w) for w in layer.weights]
    assert sorted(names) == sorted(values), (names, sorted(values))
    layer.set_weights([np.asarray(values[n], np.float32).reshape(w.shape) for n, w in zip(names, layer.weights)])


def randomize(layer, seed=0):
    """Random values for the layer's own weights and its adaptation layers' (DSBN keeps gamma 1, beta 0,
    moving mean 0, moving variance 1)."""
    rng = np.random.default_rng(seed)
    for var in layer.trainable_weights:
        if "_bn_" not in var.name:
            var.assign(rng.normal(scale=0.7, size=var.shape))


# ------------------------------------------------------------------ 1. values by hand
def tiny(fusion, **kwargs):
    """D = 2, F = 2, e_d = 1, 1-unit networks, no DSBN, no adaptation."""
    layer = ADIBackbone(2, shared_units=[1], forward_units=[1], fusion=fusion, attention=None, dsbn=False,
                        **kwargs)
    layer([np.zeros((2, 2), np.float32), np.array([0, 1]), np.zeros((2, 1), np.float32)])
    return layer


# Rows: x = [1, 2] in domain 0 (f_domain = 1) and in domain 1 (f_domain = -1).
X = np.array([[1.0, 2.0], [1.0, 2.0]], np.float32)
DOMAIN = np.array([0, 1], np.int32)
EMB = np.array([[1.0], [-1.0]], np.float32)
SHARED_AND_SPECIFIC = {
    "gate_kernel": [[LN3, 0.0]], "gate_bias": [0.0, 0.0],
    "shared_kernel_0": [[[1.0], [1.0]], [[2.0], [-1.0]]], "shared_bias_0": [[0.0], [1.0]],
    "specific_kernel_0": [[[1.0], [0.0]], [[0.0], [1.0]]], "specific_bias_0": [[0.0], [1.0]],
}
# Eq. 8 (softmax): row 0 logits [ln 3, 0] -> alpha [3/4, 1/4]; row 1 logits [-ln 3, 0] -> alpha [1/4, 3/4].
# Eq. 9: expert 0 relu(1 + 2 + 0) = 3, expert 1 relu(2*1 - 2 + 1) = 1 (both rows);
#   E_shared row 0 = 3/4*3 + 1/4*1 = 2.5, row 1 = 1/4*3 + 3/4*1 = 1.5.
# Eq. 10: domain 0 relu(1*1 + 0*2 + 0) = 1, domain 1 relu(0*1 + 1*2 + 1) = 3: E_spec = [1, 3].


def test_sum_fusion_by_hand():
    layer = tiny("sum", num_shared=2)
    set_by_name(layer, {**SHARED_AND_SPECIFIC,
                        "fusion_gate_kernel": [[0.0], [LN3]], "fusion_gate_bias": [0.0],
                        "forward_kernel_0": [[[2.0]], [[-1.0]]], "forward_bias_0": [[0.0], [1.0]]})
    out = layer([X, DOMAIN, EMB])
    # eq. 14: row 0 a = sigmoid(0*1 + 0) = 1/2, row 1 a = sigmoid(ln3 * -1 + 0) = 1/4
    # eq. 15: row 0 1/2*1 + 1/2*2.5 = 1.75;  row 1 1/4*3 + 3/4*1.5 = 1.875
    # eq. 18 (linear): row 0 2*1.75 + 0 = 3.5;  row 1 -1*1.875 + 1 = -0.875
    np.testing.assert_allclose(out, [[3.5], [-0.875]], rtol=1e-5)
    np.testing.assert_allclose(layer.gate_weights(EMB), [[0.75, 0.25], [0.25, 0.75]], rtol=1e-5)


def test_concat_fusion_by_hand():
    layer = tiny("concat", num_shared=2)
    set_by_name(layer, {**SHARED_AND_SPECIFIC,
                        "fusion_spec_kernel": [[0.0], [LN3]], "fusion_shared_kernel": [[LN3], [0.0]],
                        "forward_kernel_0": [[[1.0], [0.0], [1.0]], [[1.0], [-2.0], [0.0]]],
                        "forward_bias_0": [[0.0], [0.0]]})
    out = layer([X, DOMAIN, EMB])
    # eq. 11-12: row 0 beta1 = sigmoid(0) = 1/2, beta2 = sigmoid(ln 3) = 3/4;
    #            row 1 beta1 = sigmoid(-ln 3) = 1/4, beta2 = sigmoid(0) = 1/2
    # eq. 13: row 0 [1/2*1, 0.5*1.875, 3/4*2.5] = [0.5, 0.9375, 1.875]
    #         row 1 [1/4*3, 0.75*0.75, 1/2*1.5] = [0.75, 0.5625, 0.75]
    # eq. 18: row 0 0.5 + 1.875 = 2.375;  row 1 0.75 - 2*0.5625 = -0.375
    np.testing.assert_allclose(out, [[2.375], [-0.375]], rtol=1e-5)


def test_star_fusion_by_hand():
    layer = tiny("star")
    set_by_name(layer, {"star_shared_kernel_0": [[1.0], [2.0]], "star_shared_bias_0": [1.0],
                        "star_specific_kernel_0": [[[1.0], [1.0]], [[-1.0], [0.5]]],
                        "star_specific_bias_0": [[0.0], [2.0]],
                        "forward_kernel_0": [[[0.5]], [[1.0]]], "forward_bias_0": [[0.0], [-1.0]]})
    x = np.array([[1.0, 2.0], [1.0, 2.0], [-3.0, 0.0]], np.float32)
    out = layer([x, np.array([0, 1, 0]), np.zeros((3, 1), np.float32)])
    # eq. 16-17, W = W_shared * W_spec^(d): domain 0 W = [1, 2], domain 1 W = [-1, 1]
    #   row 0: relu(1*1 + 2*2 + 1 + 0) = 6;  row 1: relu(-1*1 + 1*2 + 1 + 2) = 4;  row 2: relu(-3 + 0 + 1 + 0) = 0
    # eq. 18: row 0 0.5*6 = 3;  row 1 1*4 - 1 = 3;  row 2 0.5*0 = 0
    np.testing.assert_allclose(out, [[3.0], [3.0], [0.0]], rtol=1e-5)
    np.testing.assert_allclose(layer.gate_weights(EMB), [[1.0], [1.0]])  # no gate in STAR


def test_star_forward_network_by_hand():
    layer = tiny("star", forward_sharing="star")
    set_by_name(layer, {"star_shared_kernel_0": [[1.0], [2.0]], "star_shared_bias_0": [1.0],
                        "star_specific_kernel_0": [[[1.0], [1.0]], [[-1.0], [0.5]]],
                        "star_specific_bias_0": [[0.0], [2.0]],
                        "forward_shared_kernel_0": [[2.0]], "forward_shared_bias_0": [0.5],
                        "forward_kernel_0": [[[0.5]], [[-1.0]]], "forward_bias_0": [[0.0], [1.0]]})
    x = np.array([[1.0, 2.0], [1.0, 2.0], [-3.0, 0.0]], np.float32)
    out = layer([x, np.array([0, 1, 0]), np.zeros((3, 1), np.float32)])
    # fused as in test_star_fusion_by_hand: [6, 4, 0]. Forward W = W_shared * W^(d): domain 0 2*0.5 = 1,
    # domain 1 2*-1 = -2.  row 0: 1*6 + 0.5 + 0 = 6.5;  row 1: -2*4 + 0.5 + 1 = -6.5;  row 2: 0 + 0.5 + 0 = 0.5
    np.testing.assert_allclose(out, [[6.5], [-6.5], [0.5]], rtol=1e-5)


def test_input_norm_normalises_each_domains_rows_by_their_own_statistics():
    kwargs = dict(shared_units=[3], forward_units=[2], fusion="sum", attention="se", dsbn=False, num_fields=2)
    normed = ADIBackbone(2, input_norm=True, **kwargs)
    plain = ADIBackbone(2, **kwargs)
    # Domain 0 rows [1, 2], [3, 6]: mean [2, 4], variance [1, 4] -> [-1, -1], [1, 1] (up to eps);
    # domain 1 rows [0, 10], [4, 10]: mean [2, 10], variance [4, 0] -> [-1, 0], [1, 0].
    x = np.array([[1, 2], [0, 10], [3, 6], [4, 10]], np.float32)
    domain = np.array([0, 1, 0, 1])
    emb = np.array([[1.0], [-1.0], [1.0], [-1.0]], np.float32)
    normed([x, domain, emb])
    plain([x, domain, emb])
    plain.set_weights([w.numpy() for w in normed.weights if "input_bn" not in w.name])
    by_hand = np.array([[-1 / np.sqrt(1 + EPS), -2 / np.sqrt(4 + EPS)], [-2 / np.sqrt(4 + EPS), 0],
                        [1 / np.sqrt(1 + EPS), 2 / np.sqrt(4 + EPS)], [2 / np.sqrt(4 + EPS), 0]], np.float32)
    np.testing.assert_allclose(normed([x, domain, emb], training=True), plain([by_hand, domain, emb]),
                               rtol=1e-5, atol=1e-6)
    # The adaptation weights (Fig. 5) read the input normalised with the inference statistics.
    normed._input_bn.moving_mean.assign(np.zeros((2, 2)))
    normed._input_bn.moving_variance.assign(np.ones((2, 2)))
    np.testing.assert_allclose(normed.domain_attention_weights([x, domain, emb])["dial"],
                               plain.domain_attention_weights([x / np.sqrt(1 + EPS), domain, emb])["dial"], rtol=1e-5)


def test_dropout_drops_fused_units_in_training_only():
    kwargs = dict(shared_units=[8], forward_units=[1], fusion="concat", attention=None, dsbn=False)
    dropped = ADIBackbone(2, dropout=0.5, **kwargs)
    plain = ADIBackbone(2, **kwargs)
    x, domain, emb = inputs_for(64, 4, 3, 2)
    dropped([x, domain, emb])
    plain([x, domain, emb])
    plain.set_weights(dropped.get_weights())  # dropout has no weights: the same layer without it
    np.testing.assert_allclose(dropped([x, domain, emb]), plain([x, domain, emb]), rtol=1e-6)
    # The forward layer is linear: with the forward kernel set to ones, each row's output is the sum of its
    # 24 fused units (3 x 8, concat), and in training each kept unit counts twice (1 / (1 - 0.5)).
    for layer in (dropped, plain):
        layer.forward_kernels[0].assign(np.ones_like(layer.forward_kernels[0].numpy()))
    fused_sum = plain([x, domain, emb]).numpy()
    tf.random.set_seed(0)
    trained = dropped([x, domain, emb], training=True).numpy()
    assert not np.allclose(trained, fused_sum)  # some units dropped
    assert abs(trained.mean() / fused_sum.mean() - 1) < 0.3  # the kept units rescaled: the mean holds


def test_star_specific_factors_start_at_the_shared_network():
    layer = ADIBackbone(3, shared_units=[4, 2], forward_units=[2], fusion="star", attention=None)
    layer(list(inputs_for(3, 5, 2, 3)))
    for var in layer.weights:
        if "star_specific_kernel" in var.name:
            np.testing.assert_array_equal(var.numpy(), 1.0)


# ------------------------------------------------------------------ NumPy reference of the whole backbone
def reference(layer, x, domain, emb, bn_scale=1.0):
    """Eq. 8-18 in NumPy with the layer's weights; the adaptation layers via their multiplicative weights
    (exact for "se"); DSBN at its initial inference state is a factor bn_scale = 1/sqrt(1 + eps)."""
    w = {k: v.numpy().astype(np.float64) for k, v in layer.domain_attention_weights([x, domain, emb]).items()}
    x, emb = x.astype(np.float64), emb.astype(np.float64)
    d = domain
    np_ = lambda v: v.numpy().astype(np.float64)  # noqa: E731

    def per_domain_mlp(h, kernels, biases, linear_last):
        for i, (k, b) in enumerate(zip(kernels, biases)):
            h = np.einsum("bi,bio->bo", h, np_(k)[d]) + np_(b)[d]
            if not (linear_last and i == len(kernels) - 1):
                h = relu(bn_scale * h)
        return h

    if layer.fusion == "star":
        h = x * w.get("dial", w.get("dial_global", 1.0))
        for ks, bs, kd, bd in zip(layer.star_shared_kernels, layer.star_shared_biases,
                                  layer.star_specific_kernels, layer.star_specific_biases):
            kernel = np_(ks)[None] * np_(kd)
            h = relu(bn_scale * (np.einsum("bi,bio->bo", h, kernel[d]) + np_(bs) + np_(bd)[d]))
        fused = h
    else:
        if "dial_specific" in w:
            x_shared = [x * w[f"dial_shared_{k}"] for k in range(layer.num_shared)]
            x_spec = x * w["dial_specific"]
        else:
            x_spec = x * w.get("dial", w.get("dial_global", 1.0))
            x_shared = [x_spec] * layer.num_shared
        logits = emb @ np_(layer.gate_kernel) + np_(layer.gate_bias)
        alpha = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        e_shared = 0.0
        for k in range(layer.num_shared):
            h = x_shared[k]
            for kernel, bias in zip(layer.shared_kernels, layer.shared_biases):
                h = relu(bn_scale * (h @ np_(kernel)[k] + np_(bias)[k]))
            e_shared = e_shared + alpha[:, k:k + 1] * h
        e_spec = per_domain_mlp(x_spec, layer.specific_kernels, layer.specific_biases, linear_last=False)
        if layer.fusion == "concat":
            b1 = sigmoid((np_(layer.fusion_spec_kernel)[d] * emb).sum(-1, keepdims=True))
            b2 = sigmoid((np_(layer.fusion_shared_kernel)[d] * emb).sum(-1, keepdims=True))
            fused = np.concatenate([b1 * e_spec, b1 * e_spec * b2 * e_shared, b2 * e_shared], axis=-1)
        else:
            a = sigmoid((np_(layer.fusion_gate_kernel)[d] * emb).sum(-1, keepdims=True)
                        + np_(layer.fusion_gate_bias))
            fused = a * e_spec + (1 - a) * e_shared
    if layer.forward_sharing == "star":
        h = fused
        for i, (ks, bs, kd, bd) in enumerate(zip(layer.forward_shared_kernels, layer.forward_shared_biases,
                                                 layer.forward_kernels, layer.forward_biases)):
            h = np.einsum("bi,bio->bo", h, (np_(ks)[None] * np_(kd))[d]) + np_(bs) + np_(bd)[d]
            if i < len(layer.forward_units) - 1:
                h = relu(bn_scale * h)
        return h
    return per_domain_mlp(fused, layer.forward_kernels, layer.forward_biases, linear_last=True)


@pytest.mark.parametrize("fusion,attention,placement", [
    ("concat", None, "per_network"), ("concat", "se", "per_network"), ("concat", "se", "global"),
    ("concat", "se", "per_expert"), ("sum", "se", "per_network"), ("sum", "se", "per_expert"),
    ("star", None, "per_network"), ("star", "se", "per_network"), ("star", "se", "global"),
])
@pytest.mark.parametrize("dsbn", [False, True])
@pytest.mark.parametrize("forward_sharing", ["specific", "star"])
def test_matches_numpy_reference(fusion, attention, placement, dsbn, forward_sharing):
    num_domains, features = 3, 6
    layer = ADIBackbone(num_domains, num_shared=1 if fusion == "star" else 2, shared_units=[5, 4],
                        specific_units=None if fusion == "star" else [3, 4], forward_units=[4, 3],
                        fusion=fusion, attention=attention, attention_placement=placement, num_fields=3,
                        attention_reduction=1, dsbn=dsbn, forward_sharing=forward_sharing)
    x, domain, emb = inputs_for(7, features, 2, num_domains)
    layer([x, domain, emb])
    randomize(layer, seed=1)
    out = layer([x, domain, emb], training=False).numpy()
    expected = reference(layer, x, domain, emb, bn_scale=1 / np.sqrt(1 + EPS) if dsbn else 1.0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(out).max() > 1e-2  # not trivially zero


def test_placements_own_the_expected_adaptation_layers():
    x, domain, emb = inputs_for(4, 6, 2, 3)

    def weights(placement, **kwargs):
        layer = ADIBackbone(3, num_shared=2, shared_units=[4], forward_units=[2], attention="se",
                            attention_placement=placement, num_fields=3, **kwargs)
        layer([x, domain, emb])
        return layer, layer.domain_attention_weights([x, domain, emb])

    layer, w = weights("per_network")  # 3-SE: D blocks, selected by the domain
    assert list(w) == ["dial"] and w["dial"].shape == (4, 6)
    assert layer._dials["dial"].squeeze_kernel.shape[0] == 3
    layer, w = weights("global")  # 1-SE: one block for all domains
    assert list(w) == ["dial_global"] and layer._dials["dial_global"].squeeze_kernel.shape[0] == 1
    layer, w = weights("per_expert")  # 4-SE: one block per shared expert + one per specific network
    assert sorted(w) == ["dial_shared_0", "dial_shared_1", "dial_specific"]
    assert [layer._dials[k].squeeze_kernel.shape[0] for k in sorted(w)] == [1, 1, 3]
    assert all(v.shape == (4, 6) for v in w.values())
    # the domain embedding is not needed for the adaptation weights
    np.testing.assert_allclose(layer.domain_attention_weights([x, domain])["dial_specific"], w["dial_specific"])
    layer = ADIBackbone(3, shared_units=[4], forward_units=[2], attention=None)
    layer([x, domain, emb])
    assert layer.domain_attention_weights([x, domain, emb]) == {}


# ------------------------------------------------------------------ 2. the gate
def test_gate_is_a_softmax_of_the_domain_embedding_only():
    num_domains, k = 3, 4
    layer = ADIBackbone(num_domains, num_shared=k, shared_units=[4], forward_units=[2], attention=None)
    x, domain, emb = inputs_for(6, 5, 3, num_domains)
    layer([x, domain, emb])
    randomize(layer)
    alpha = layer.gate_weights(emb).numpy()
    assert alpha.shape == (6, k)
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-6)
    assert (alpha > 0).all()
    # rows with the same domain embedding get the same alpha whatever their x; different domains differ
    np.testing.assert_allclose(alpha[:3], alpha[3:], rtol=1e-6)
    assert np.abs(alpha[0] - alpha[1]).max() > 1e-3
    # eq. 8 with a softmax over the K logits (test_matches_numpy_reference checks call uses it)
    logits = emb @ layer.gate_kernel.numpy() + layer.gate_bias.numpy()
    np.testing.assert_allclose(alpha, np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), rtol=1e-5)
    # K = 1: alpha = 1
    single = ADIBackbone(num_domains, shared_units=[4], forward_units=[2], attention=None)
    single([x, domain, emb])
    randomize(single)
    np.testing.assert_allclose(single.gate_weights(emb), np.ones((6, 1)), rtol=1e-6)


def test_gate_weights_needs_a_built_layer():
    with pytest.raises(ValueError, match="Received:"):
        ADIBackbone(2).gate_weights(np.ones((2, 3), np.float32))


# ------------------------------------------------------------------ 3. rows use their own domain's networks
@pytest.mark.parametrize("fusion", ["concat", "sum", "star"])
def test_rows_reach_only_their_domains_networks(fusion):
    num_domains = 3
    layer = ADIBackbone(num_domains, num_shared=1 if fusion == "star" else 2, shared_units=[4, 3],
                        forward_units=[3, 2], fusion=fusion, attention="se", num_fields=3)
    x, domain, emb = inputs_for(9, 6, 2, num_domains)  # domains 0, 1, 2, 0, 1, 2, ...
    layer([x, domain, emb])
    randomize(layer, seed=2)
    x = tf.constant(x)
    rows = domain == 1
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = layer([x, domain, emb], training=True)  # DSBN batch statistics per domain
        loss = tf.reduce_sum(tf.boolean_mask(out, rows) ** 2)  # domain-1 rows only
    per_domain = [v for v in layer.trainable_weights  # every weight with a leading domain axis
                  if any(s in v.name for s in ("specific", "forward", "fusion_", "dial/", "_bn_"))
                  and "fusion_gate_bias" not in v.name]  # (eq. 14's b_gate is shared by the domains)
    assert len(per_domain) >= 8
    for var, grad in zip(per_domain, tape.gradient(loss, per_domain)):
        g = tf.convert_to_tensor(grad).numpy()
        assert g.shape[0] == num_domains, var.name
        assert np.abs(g[[0, 2]]).max() == 0.0, var.name  # no gradient to domain 0 / 2 weights
        assert np.abs(g[1]).max() > 0.0, var.name
    # the domain-1 outputs do not depend on other domains' rows (per-domain DSBN statistics too)
    gx = tape.gradient(loss, x).numpy()
    assert np.abs(gx[~rows]).max() == 0.0 and np.abs(gx[rows]).max() > 0.0
    # and each domain has its own networks: the same row in another domain gives another output
    same = np.repeat(x.numpy()[:1], num_domains, axis=0)
    out = layer([same, np.arange(num_domains), np.repeat(emb[:1], num_domains, axis=0)], training=False).numpy()
    assert np.abs(out[0] - out[1]).max() > 1e-4 and np.abs(out[1] - out[2]).max() > 1e-4


# ------------------------------------------------------------------ 4. shapes
@pytest.mark.parametrize("fusion,attention,placement", [
    (fusion, attention, placement) for fusion in ("concat", "sum", "star")
    for attention, placement in ((None, "per_network"), ("se", "per_network"), ("attention", "global"),
                                 ("linear", "per_expert"))
    if not (fusion == "star" and placement == "per_expert")])  # STAR has no separate experts: ValueError
@pytest.mark.parametrize("dsbn", [True, False])
@pytest.mark.parametrize("num_domains,batch", [(1, 1), (3, 5)])
def test_shapes(fusion, attention, placement, dsbn, num_domains, batch):
    features, emb_dim = 8, 3
    num_shared = 1 if fusion == "star" else 2
    layer = ADIBackbone(num_domains, num_shared=num_shared, shared_units=[6, 4], forward_units=[5, 3],
                        fusion=fusion, attention=attention, attention_placement=placement, num_fields=4,
                        dsbn=dsbn)
    x, domain, emb = inputs_for(batch, features, emb_dim, num_domains)
    for training in (True, False):
        out = layer([x, domain[:, None], emb], training=training)  # [B, 1] domain
        assert out.shape == (batch, 3) and out.dtype == tf.float32
        assert np.isfinite(out.numpy()).all()
    assert layer.compute_output_shape([(None, features), (None,), (None, emb_dim)]) == [None, 3]
    assert layer.gate_weights(emb).shape == (batch, num_shared if fusion != "star" else 1)
    weights = layer.domain_attention_weights([x, domain, emb])
    assert len(weights) == (0 if attention is None else num_shared + 1 if placement == "per_expert" else 1)
    assert all(v.shape == (batch, features) for v in weights.values())
    shapes = {short_name(v): tuple(v.shape) for v in layer.weights if v.name.count("/") == 1}
    assert shapes["forward_kernel_0"] == (num_domains, {"concat": 12, "sum": 4, "star": 4}[fusion], 5)
    assert shapes["forward_kernel_1"] == (num_domains, 5, 3)
    if fusion == "star":
        assert shapes["star_shared_kernel_0"] == (features, 6) and shapes["star_specific_kernel_1"] == (
            num_domains, 6, 4)
    else:
        assert shapes["gate_kernel"] == (emb_dim, num_shared)
        assert shapes["shared_kernel_1"] == (num_shared, 6, 4)
        assert shapes["specific_kernel_0"] == (num_domains, features, 6)
    bns = {v.name.split("/")[-2] for v in layer.weights if "_bn_" in v.name}
    expected_bns = ({"star_bn_0", "star_bn_1"} if fusion == "star" else
                    {"shared_bn_0", "shared_bn_1", "specific_bn_0", "specific_bn_1"}) | {"forward_bn_0"}
    assert bns == (expected_bns if dsbn else set())


@pytest.mark.parametrize("fusion,placement", [("concat", "per_expert"), ("sum", "global"), ("star", "per_network")])
def test_mixed_precision(fusion, placement):
    layer = ADIBackbone(3, shared_units=[4], forward_units=[3, 2], fusion=fusion, attention_placement=placement,
                        num_fields=2, dropout=0.3, dtype="mixed_float16")
    x, domain, emb = inputs_for(5, 6, 2, 3)
    for training in (True, False):
        out = layer([x, domain, emb], training=training)
        assert out.dtype == tf.float16 and np.isfinite(out.numpy()).all()
    assert layer.gate_weights(emb).dtype == tf.float16
    assert all(v.dtype == tf.float16 for v in layer.domain_attention_weights([x, domain, emb]).values())
    assert all(v.dtype == tf.float32 for v in layer.weights)  # float32 variables


def test_trains_in_a_compiled_step():
    x_in = keras.Input((6,), name="x")
    d_in = keras.Input((), dtype="int32", name="domain")
    e_in = keras.Input((2,), name="domain_embedding")
    layer = ADIBackbone(2, num_shared=2, shared_units=[4], forward_units=[3, 1], num_fields=3)
    model = keras.Model({"x": x_in, "domain": d_in, "domain_embedding": e_in}, layer([x_in, d_in, e_in]))
    optimizer = keras.optimizers.Adam(1e-2)
    x, domain, emb = inputs_for(32, 6, 2, 2)
    data = {"x": x, "domain": domain, "domain_embedding": emb}
    target = x[:, :1] * 2.0

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(data, training=True) - target) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))
        return loss

    losses = [float(step()) for _ in range(30)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert not np.allclose(layer._shared_bns[0].moving_mean.numpy(), 0.0)  # DSBN statistics updated


# ------------------------------------------------------------------ 5. config, save / reload
@pytest.mark.parametrize("kwargs", [
    {"num_domains": 3},
    {"num_domains": 2, "num_shared": 3, "shared_units": [8, 4], "specific_units": [6, 4], "forward_units": [4],
     "fusion": "sum", "attention": "linear", "attention_placement": "per_expert", "dsbn": False, "name": "adi"},
    {"num_domains": 4, "fusion": "star", "attention": None, "bn_momentum": 0.9, "bn_epsilon": 1e-4,
     "activation": "tanh", "kernel_initializer": "he_normal", "kernel_regularizer": keras.regularizers.L2(1e-4)},
    {"num_domains": 2, "attention": "attention", "attention_placement": "global", "num_fields": 2,
     "attention_reduction": 2},
    {"num_domains": 3, "forward_sharing": "star", "input_norm": True, "dropout": 0.3},
])
def test_config_round_trip(kwargs):
    layer = ADIBackbone(**kwargs)
    clone = layer_checks.assert_config_round_trip(layer)
    for key, value in kwargs.items():
        if key not in ("kernel_initializer", "kernel_regularizer", "activation"):
            assert getattr(clone, key) == value, key
    x, domain, emb = inputs_for(4, 8, 3, kwargs["num_domains"])
    assert clone([x, domain, emb]).shape[0] == 4  # the clone builds and runs


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    num_domains, features, emb_dim = 3, 6, 2
    x_in = keras.Input((features,), name="x")
    d_in = keras.Input((), dtype="int32", name="domain")
    e_in = keras.Input((emb_dim,), name="domain_embedding")
    concat = ADIBackbone(num_domains, num_shared=2, shared_units=[5, 4], forward_units=[4, 3], num_fields=3,
                         attention_placement="per_expert", bn_momentum=0.5, name="concat_tower")
    star = ADIBackbone(num_domains, shared_units=[4], forward_units=[3, 2], fusion="star", attention="linear",
                       attention_placement="global", bn_momentum=0.5, forward_sharing="star", input_norm=True,
                       name="star_tower")
    model = keras.Model({"x": x_in, "domain": d_in, "domain_embedding": e_in},
                        {"concat": concat([x_in, d_in, e_in]), "star": star([x_in, d_in, e_in])})
    randomize(concat, seed=3)
    randomize(star, seed=4)
    rng = np.random.default_rng(5)
    for _ in range(2):  # move the DSBN moving statistics away from their initial values
        x, domain, emb = inputs_for(9, features, emb_dim, num_domains, seed=int(rng.integers(100)))
        model({"x": x * 3 + 1, "domain": domain, "domain_embedding": emb}, training=True)
    assert not np.allclose(concat._forward_bns[0].moving_variance.numpy(), 1.0)
    x, domain, emb = inputs_for(6, features, emb_dim, num_domains, seed=6)
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, {"x": x, "domain": domain, "domain_embedding": emb}, tmp_path,
        modules=["mdr_keras.layers.adi_backbone"])


# ------------------------------------------------------------------ 6. bad arguments
@pytest.mark.parametrize("kwargs", [
    {"num_domains": 0},
    {"num_domains": 2.0},
    {"num_domains": True},
    {"num_domains": 2, "num_shared": 0},
    {"num_domains": 2, "shared_units": []},
    {"num_domains": 2, "shared_units": [4, 0]},
    {"num_domains": 2, "shared_units": 4},
    {"num_domains": 2, "specific_units": [4.5]},
    {"num_domains": 2, "forward_units": None},
    {"num_domains": 2, "shared_units": [8, 4], "specific_units": [8, 6]},  # h differs (concat / sum)
    {"num_domains": 2, "fusion": "mul"},
    {"num_domains": 2, "attention": "SE"},
    {"num_domains": 2, "attention_placement": "per_domain"},
    {"num_domains": 2, "num_fields": 0},
    {"num_domains": 2, "attention_reduction": 0},
    {"num_domains": 2, "dsbn": 1},
    {"num_domains": 2, "input_norm": "yes"},
    {"num_domains": 2, "dropout": 1.0},
    {"num_domains": 2, "dropout": -0.1},
    {"num_domains": 2, "forward_sharing": "shared"},
    {"num_domains": 2, "bn_momentum": 1.5},
    {"num_domains": 2, "bn_epsilon": 0.0},
    {"num_domains": 2, "activation": "no_such_activation"},
    {"num_domains": 2, "fusion": "star", "num_shared": 2},
    {"num_domains": 2, "fusion": "star", "shared_units": [4], "specific_units": [3]},
    {"num_domains": 2, "fusion": "star", "attention_placement": "per_expert"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        ADIBackbone(**kwargs)


def test_bad_inputs():
    layer_checks.assert_backbone_rejects_bad_inputs(lambda: ADIBackbone(2))
    x, domain, emb = inputs_for(2, 4, 2, 2)
    with pytest.raises(ValueError, match="Received:"):  # 3 fields do not divide 4 features
        ADIBackbone(2, num_fields=3)([x, domain, emb])
