"""MMoEBackbone: value by hand, gates, per-domain gates and towers, shapes, config, save / reload, argument
checks."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.mmoe import MMoEBackbone
from tests.mdr_keras import layer_checks

LN3 = math.log(3.0)  # softmax([ln 3, 0]) = [3/4, 1/4]


def test_value_by_hand():
    layer = MMoEBackbone(2, num_experts=2, expert_units=[1], tower_units=[1])
    inputs = [np.array([[1.0, 2.0], [1.0, 2.0]], np.float32), np.array([0, 1]), np.zeros((2, 1), np.float32)]
    layer(inputs)
    layer_checks.set_weights_by_name(layer, {
        "expert_kernel_0": [[[1.0], [1.0]], [[2.0], [-1.0]]], "expert_bias_0": [[0.0], [1.0]],
        "gate_kernel": [[[LN3, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, LN3 / 2]]],
        "tower_kernel_0": [[[2.0]], [[-1.0]]], "tower_bias_0": [[0.0], [1.0]]})
    # experts on x = [1, 2]: f_0 = relu(1 + 2) = 3, f_1 = relu(2 - 2 + 1) = 1
    # gates: domain 0 logits [ln 3, 0] -> [3/4, 1/4];  domain 1 logits [0, 2 * ln3 / 2] -> [1/4, 3/4]
    # mixtures: row 0 3/4*3 + 1/4*1 = 2.5;  row 1 1/4*3 + 3/4*1 = 1.5
    # towers (linear): row 0 2*2.5 = 5;  row 1 -1*1.5 + 1 = -0.5
    np.testing.assert_allclose(layer(inputs), [[5.0], [-0.5]], rtol=1e-5)
    np.testing.assert_allclose(layer.gate_weights(inputs), [[0.75, 0.25], [0.25, 0.75]], rtol=1e-5)


def test_gates_are_per_domain_softmaxes_of_x():
    layer = MMoEBackbone(3, num_experts=5, expert_units=[4])
    inputs = layer_checks.backbone_inputs(12, 6, 2, 3)
    layer(inputs)
    g = layer.gate_weights(inputs).numpy()
    assert g.shape == (12, 5) and (g > 0).all()
    np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
    x, d = inputs[0], inputs[1]
    expected = np.stack([x[b] @ layer.gate_kernel.numpy()[d[b]] for b in range(12)])
    expected = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
    np.testing.assert_allclose(g, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="Received:"):
        MMoEBackbone(2).gate_weights(inputs)


def test_rows_reach_only_their_domains_gate_and_tower():
    layer = MMoEBackbone(3, num_experts=3, expert_units=[6, 5], tower_units=[4, 3])
    inputs = layer_checks.backbone_inputs(9, 7, 2, 3)
    layer(inputs)
    layer_checks.randomize_weights(layer, seed=1)
    per_domain = [v for v in layer.trainable_weights if "tower_" in v.name or "gate_" in v.name]
    assert len(per_domain) == 5
    for domain in range(3):
        layer_checks.assert_domain_routing(layer, inputs, per_domain, domain=domain)


@pytest.mark.parametrize("num_domains", [1, 3])
@pytest.mark.parametrize("num_experts,expert_units,tower_units", [(1, [4], [3]), (3, [8, 6], [5, 2])])
@pytest.mark.parametrize("domain_rank", [1, 2])
def test_shapes(num_domains, num_experts, expert_units, tower_units, domain_rank):
    layer = MMoEBackbone(num_domains, num_experts=num_experts, expert_units=expert_units, tower_units=tower_units,
                         dropout=0.5)
    x, domain, emb = layer_checks.backbone_inputs(5, 6, 2, num_domains)
    inputs = [x, domain if domain_rank == 1 else domain[:, None], emb]
    out = layer(inputs, training=False)
    assert out.shape == (5, tower_units[-1]) and out.dtype == tf.float32
    np.testing.assert_array_equal(out, layer(inputs, training=False))  # dropout only in training
    assert not np.allclose(layer(inputs, training=True), out)
    assert layer.gate_weights(inputs).shape == (5, num_experts)
    assert layer.compute_output_shape([(None, 6), (None,), (None, 2)]) == [None, tower_units[-1]]
    shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in layer.weights}
    assert shapes["gate_kernel"] == (num_domains, 6, num_experts)
    assert shapes["expert_kernel_0"] == (num_experts, 6, expert_units[0])
    assert shapes["tower_kernel_0"] == (num_domains, expert_units[-1], tower_units[0])


def test_mixed_precision():
    layer = MMoEBackbone(3, dtype="mixed_float16")
    inputs = layer_checks.backbone_inputs(4, 6, 2, 3)
    out = layer(inputs)
    assert out.dtype == tf.float16 and np.isfinite(out.numpy()).all()
    assert layer.gate_weights(inputs).dtype == tf.float16
    assert all(v.dtype == tf.float32 for v in layer.weights)


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 3},
    {"num_domains": 2, "num_experts": 3, "expert_units": [8, 4], "tower_units": [4, 2], "dropout": 0.1,
     "output_activation": "tanh", "kernel_initializer": keras.initializers.HeNormal(seed=1),
     "kernel_regularizer": keras.regularizers.L2(1e-4), "name": "mmoe"},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(MMoEBackbone(**kwargs))
    assert clone(layer_checks.backbone_inputs(4, 5, 2, kwargs["num_domains"])).shape == (
        4, kwargs.get("tower_units", [32])[-1])


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    layer = MMoEBackbone(3, num_experts=2, expert_units=[6], tower_units=[4, 3], dropout=0.2, name="mmoe")
    model = layer_checks.backbone_model(layer, 5, 2)
    layer_checks.randomize_weights(layer)
    x, domain, emb = layer_checks.backbone_inputs(6, 5, 2, 3, seed=1)
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, {"x": x, "domain": domain, "domain_embedding": emb}, tmp_path, modules=["mdr_keras.layers.mmoe"])


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 0}, {"num_domains": 2.0}, {"num_domains": True},
    {"num_domains": 2, "num_experts": 0}, {"num_domains": 2, "num_experts": 2.0},
    {"num_domains": 2, "expert_units": []}, {"num_domains": 2, "expert_units": [4, -1]},
    {"num_domains": 2, "tower_units": None}, {"num_domains": 2, "dropout": 1.0},
    {"num_domains": 2, "output_activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        MMoEBackbone(**kwargs)


def test_bad_inputs():
    layer_checks.assert_backbone_rejects_bad_inputs(lambda: MMoEBackbone(2))
