"""STARBackbone: value by hand, a NumPy reference, initial state, per-domain routing, shapes, config, save /
reload, argument checks."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.star import STARBackbone
from tests.mdr_keras import layer_checks

EPS = 1e-3


def relu(v):
    return np.maximum(v, 0.0)


def test_value_by_hand():
    layer = STARBackbone(2, units=[1], aux_units=[], pn_epsilon=EPS)
    inputs = [np.array([[3.0, 1.0], [3.0, 1.0]], np.float32), np.array([0, 1]), np.array([[1.0], [-1.0]], np.float32)]
    layer(inputs)
    layer_checks.set_weights_by_name(layer, {
        "moving_mean": [[1.0, 0.0], [0.0, 2.0]], "moving_variance": [[4.0 - EPS, 1.0 - EPS], [1.0 - EPS, 1.0 - EPS]],
        "pn_gamma": [2.0, 1.0], "pn_beta": [0.0, 1.0],
        "pn_domain_gamma": [[1.0, 1.0], [0.5, 2.0]], "pn_domain_beta": [[0.0, 0.0], [1.0, 0.0]],
        "shared_kernel_0": [[1.0], [2.0]], "shared_bias_0": [0.5],
        "domain_kernel_0": [[[1.0], [1.0]], [[-1.0], [0.5]]], "domain_bias_0": [[0.0], [1.0]],
        "aux_kernel_0": [[2.0]], "aux_bias_0": [-1.0]})
    out = layer(inputs, training=False)
    # PN, inference (moving statistics; var + eps = 4 or 1):
    #   row 0 (d0): n = [(3 - 1)/2, (1 - 0)/1] = [1, 1];  z = [2*1*1 + 0 + 0, 1*1*1 + 1 + 0] = [2, 2]
    #   row 1 (d1): n = [(3 - 0)/1, (1 - 2)/1] = [3, -1]; z = [2*0.5*3 + 0 + 1, 1*2*(-1) + 1 + 0] = [4, -1]
    # star FC (linear), W = W_shared * W_d:  d0 W = [1, 2], d1 W = [-1, 1]
    #   row 0: 2*1 + 2*2 + 0.5 + 0 = 6.5;  row 1: 4*(-1) + (-1)*1 + 0.5 + 1 = -3.5
    # auxiliary (linear) on f: row 0 2*1 - 1 = 1;  row 1 2*(-1) - 1 = -3
    np.testing.assert_allclose(out, [[7.5], [-6.5]], rtol=1e-5)


def reference(layer, x, domain, emb):
    """The layer in NumPy, inference mode."""
    w = {v.name.split("/")[-1].split(":")[0]: v.numpy().astype(np.float64) for v in layer.weights}
    d = domain
    n = (x - w["moving_mean"][d]) / np.sqrt(w["moving_variance"][d] + EPS)
    h = n * w["pn_gamma"] * w["pn_domain_gamma"][d] + w["pn_beta"] + w["pn_domain_beta"][d]
    for i in range(len(layer.units)):
        kernel = w[f"shared_kernel_{i}"][None] * w[f"domain_kernel_{i}"]
        h = np.einsum("bi,bio->bo", h, kernel[d]) + w[f"shared_bias_{i}"] + w[f"domain_bias_{i}"][d]
        h = relu(h) if i < len(layer.units) - 1 else h
    a = emb
    for i in range(len(layer.aux_units) + 1):
        a = a @ w[f"aux_kernel_{i}"] + w[f"aux_bias_{i}"]
        a = relu(a) if i < len(layer.aux_units) else a
    return h + a


def test_matches_numpy_reference():
    layer = STARBackbone(3, units=[6, 5, 4], aux_units=[3, 5], pn_epsilon=EPS)
    x, domain, emb = inputs = layer_checks.backbone_inputs(9, 7, 2, 3)
    layer(inputs)
    layer_checks.randomize_weights(layer, seed=1)
    layer._pn.moving_mean.assign(np.random.default_rng(2).normal(size=(3, 7)))
    layer._pn.moving_variance.assign(np.random.default_rng(3).uniform(0.5, 2.0, size=(3, 7)))
    out = layer(inputs, training=False).numpy()
    np.testing.assert_allclose(out, reference(layer, x, domain, emb), rtol=1e-4, atol=1e-5)
    assert np.abs(out).max() > 1e-2


def test_domains_start_from_the_shared_network():
    layer = STARBackbone(3, units=[5, 4], partitioned_norm=False)
    x = np.repeat(np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32), 3, axis=0)
    emb = np.ones((3, 2), np.float32)  # the same row in each of the 3 domains
    out = layer([x, np.arange(3), emb]).numpy()
    for var in layer.domain_kernels:
        np.testing.assert_array_equal(var.numpy(), 1.0)
    for var in layer.domain_biases:
        np.testing.assert_array_equal(var.numpy(), 0.0)
    np.testing.assert_allclose(out[1:], out[[0, 0]], rtol=1e-6)  # identical until the factors learn
    pn = STARBackbone(3, units=[4])
    pn([x, np.arange(3), emb])
    for name, value in (("pn_gamma", 1.0), ("pn_beta", 0.0), ("pn_domain_gamma", 1.0), ("pn_domain_beta", 0.0)):
        np.testing.assert_array_equal(getattr(pn, name).numpy(), value)


def test_rows_reach_only_their_domains_factors_and_statistics():
    layer = STARBackbone(3, units=[5, 4], aux_units=[3])
    inputs = layer_checks.backbone_inputs(12, 6, 2, 3)
    layer(inputs)
    layer_checks.randomize_weights(layer, seed=1)
    per_domain = [v for v in layer.trainable_weights if "domain_" in v.name]
    assert len(per_domain) == 2 + 2 * 2
    for domain in range(3):
        layer_checks.assert_domain_routing(layer, inputs, per_domain, domain=domain, training=True)
    # with per-domain batch statistics, the domain-1 outputs do not depend on other domains' rows
    x = tf.constant(inputs[0])
    rows = inputs[1] == 1
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.boolean_mask(layer([x, inputs[1], inputs[2]], training=True), rows) ** 2)
    gx = tape.gradient(loss, x).numpy()
    assert np.abs(gx[~rows]).max() == 0.0 and np.abs(gx[rows]).max() > 0.0


@pytest.mark.parametrize("num_domains", [1, 3])
@pytest.mark.parametrize("units,aux_units,partitioned_norm", [([3], [], True), ([6, 4, 2], [4], True),
                                                              ([6, 2], [4, 3], False)])
@pytest.mark.parametrize("domain_rank", [1, 2])
def test_shapes(num_domains, units, aux_units, partitioned_norm, domain_rank):
    layer = STARBackbone(num_domains, units=units, aux_units=aux_units, partitioned_norm=partitioned_norm,
                         dropout=0.5)
    x, domain, emb = layer_checks.backbone_inputs(5, 6, 3, num_domains)
    inputs = [x, domain if domain_rank == 1 else domain[:, None], emb]
    out = layer(inputs, training=False)
    assert out.shape == (5, units[-1]) and out.dtype == tf.float32
    np.testing.assert_array_equal(out, layer(inputs, training=False))  # dropout only in training
    assert np.isfinite(layer(inputs, training=True).numpy()).all()
    assert layer.compute_output_shape([(None, 6), (None,), (None, 3)]) == [None, units[-1]]
    shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in layer.weights}
    assert shapes["shared_kernel_0"] == (6, units[0]) and shapes["domain_kernel_0"] == (num_domains, 6, units[0])
    assert shapes[f"aux_kernel_{len(aux_units)}"] == ((aux_units or [3])[-1], units[-1])
    assert ("pn_domain_gamma" in shapes) == partitioned_norm == ("moving_mean" in shapes)


def test_mixed_precision():
    layer = STARBackbone(3, dtype="mixed_float16")
    inputs = layer_checks.backbone_inputs(4, 6, 2, 3)
    for training in (True, False):
        out = layer(inputs, training=training)
        assert out.dtype == tf.float16 and np.isfinite(out.numpy()).all()
    assert all(v.dtype == tf.float32 for v in layer.weights)


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 3},
    {"num_domains": 2, "units": [8, 4], "aux_units": [], "partitioned_norm": False, "pn_momentum": 0.9,
     "pn_epsilon": 1e-4, "dropout": 0.1, "output_activation": "tanh",
     "kernel_initializer": keras.initializers.HeNormal(seed=1), "kernel_regularizer": keras.regularizers.L2(1e-4),
     "name": "star"},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(STARBackbone(**kwargs))
    assert clone(layer_checks.backbone_inputs(4, 5, 2, kwargs["num_domains"])).shape == (
        4, kwargs.get("units", [32])[-1])


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    layer = STARBackbone(3, units=[6, 3], aux_units=[4], pn_momentum=0.5, dropout=0.2, name="star")
    model = layer_checks.backbone_model(layer, 5, 2)
    layer_checks.randomize_weights(layer)
    for seed in range(2):  # move the PN moving statistics away from their initial values
        x, domain, emb = layer_checks.backbone_inputs(9, 5, 2, 3, seed=seed)
        model({"x": x * 3 + 1, "domain": domain, "domain_embedding": emb}, training=True)
    assert not np.allclose(layer._pn.moving_variance.numpy(), 1.0)
    x, domain, emb = layer_checks.backbone_inputs(6, 5, 2, 3, seed=5)
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, {"x": x, "domain": domain, "domain_embedding": emb}, tmp_path, modules=["mdr_keras.layers.star"])


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 0}, {"num_domains": 2.0}, {"num_domains": True},
    {"num_domains": 2, "units": []}, {"num_domains": 2, "units": [4, 0]},
    {"num_domains": 2, "aux_units": None}, {"num_domains": 2, "aux_units": [0]},
    {"num_domains": 2, "partitioned_norm": 1}, {"num_domains": 2, "pn_momentum": 1.5},
    {"num_domains": 2, "pn_epsilon": 0.0}, {"num_domains": 2, "dropout": 1.0},
    {"num_domains": 2, "output_activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        STARBackbone(**kwargs)


def test_bad_inputs():
    layer_checks.assert_backbone_rejects_bad_inputs(lambda: STARBackbone(2))
    x, domain, emb = layer_checks.backbone_inputs(2, 4, 2, 2)
    with pytest.raises(ValueError, match="Received:"):  # the domain embedding must be [B, E]
        STARBackbone(2)([x, domain, emb[:, 0]])
