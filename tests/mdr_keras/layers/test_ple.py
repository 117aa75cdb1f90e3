"""PLEBackbone: value by hand over two levels, MMoE as its special case, gates, per-domain experts / gates /
towers, shapes, config, save / reload, argument checks."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.mmoe import MMoEBackbone
from mdr_keras.layers.ple import PLEBackbone
from tests.mdr_keras import layer_checks

LN3 = math.log(3.0)  # softmax([ln 3, 0]) = [3/4, 1/4]


def test_two_levels_by_hand():
    layer = PLEBackbone(2, num_levels=2, num_shared_experts=1, num_specific_experts=1, expert_units=[1],
                        tower_units=[1])
    inputs = [np.array([[2.0], [2.0]], np.float32), np.array([0, 1]), np.zeros((2, 1), np.float32)]
    layer(inputs)
    layer_checks.set_weights_by_name(layer, {
        "level0_shared_kernel_0": [[[1.0]]], "level0_shared_bias_0": [[0.0]],
        "level0_specific_kernel_0": [[[[0.5]]], [[[2.0]]]], "level0_specific_bias_0": [[[0.0]], [[0.0]]],
        "level0_gate_kernel": [[[LN3 / 2, 0.0]], [[0.0, 0.0]]], "level0_shared_gate_kernel": [[0.0, LN3 / 2]],
        "level1_shared_kernel_0": [[[2.0]]], "level1_shared_bias_0": [[-1.0]],
        "level1_specific_kernel_0": [[[[1.0]]], [[[-1.0]]]], "level1_specific_bias_0": [[[0.0]], [[0.0]]],
        "level1_gate_kernel": [[[0.0, 0.0]], [[0.0, 0.0]]],
        "tower_kernel_0": [[[2.0]], [[1.0]]], "tower_bias_0": [[0.0], [0.5]]})
    # x = 2 in domain 0 (row 0) and domain 1 (row 1); paths start at h = s = x.
    # level 0: shared expert relu(1*2) = 2; specific: d0 relu(0.5*2) = 1, d1 relu(2*2) = 4
    #   domain gates: d0 logits [ln3/2 * 2, 0] -> [3/4, 1/4];  d1 logits [0, 0] -> [1/2, 1/2]
    #     h: row 0 3/4*2 + 1/4*1 = 1.75;  row 1 1/2*2 + 1/2*4 = 3
    #   shared gate (mixes the shared and the row's own domain's experts): logits [0, ln3] -> [1/4, 3/4]
    #     s: row 0 1/4*2 + 3/4*1 = 1.25;  row 1 1/4*2 + 3/4*4 = 3.5
    # level 1 (last, no shared gate): shared expert on s relu(2 s - 1): row 0 1.5, row 1 6
    #   specific on h: d0 relu(1*1.75) = 1.75, d1 relu(-1*3) = 0;  gates [1/2, 1/2]
    #     h: row 0 (1.5 + 1.75)/2 = 1.625;  row 1 (6 + 0)/2 = 3
    # towers (linear): row 0 2*1.625 = 3.25;  row 1 1*3 + 0.5 = 3.5
    np.testing.assert_allclose(layer(inputs), [[3.25], [3.5]], rtol=1e-5)
    gates = layer.gate_weights(inputs)
    np.testing.assert_allclose(gates[0], [[0.75, 0.25], [0.5, 0.5]], rtol=1e-5)
    np.testing.assert_allclose(gates[1], [[0.5, 0.5], [0.5, 0.5]], rtol=1e-5)


def test_one_level_without_specific_experts_is_mmoe():
    ple = PLEBackbone(3, num_shared_experts=4, num_specific_experts=0, expert_units=[6, 5], tower_units=[4, 2])
    mmoe = MMoEBackbone(3, num_experts=4, expert_units=[6, 5], tower_units=[4, 2])
    inputs = layer_checks.backbone_inputs(9, 7, 2, 3)
    ple(inputs)
    mmoe(inputs)
    names = {"level0_gate_kernel": "gate_kernel"}
    for i in range(2):
        names.update({f"level0_shared_kernel_{i}": f"expert_kernel_{i}", f"level0_shared_bias_{i}": f"expert_bias_{i}"})
    values = {}
    for w in mmoe.weights:
        values[w.name.split("/")[-1].split(":")[0]] = np.random.default_rng(len(values)).normal(size=w.shape)
    mmoe.set_weights([values[w.name.split("/")[-1].split(":")[0]] for w in mmoe.weights])
    layer_checks.set_weights_by_name(ple, {k: values[names.get(k, k)] for k in
                                           (w.name.split("/")[-1].split(":")[0] for w in ple.weights)})
    np.testing.assert_allclose(ple(inputs), mmoe(inputs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ple.gate_weights(inputs)[0], mmoe.gate_weights(inputs), rtol=1e-5)


def test_gates_sum_to_one():
    layer = PLEBackbone(3, num_levels=3, num_shared_experts=2, num_specific_experts=3, expert_units=[4])
    inputs = layer_checks.backbone_inputs(6, 5, 2, 3)
    layer(inputs)
    gates = layer.gate_weights(inputs)
    assert len(gates) == 3
    for g in gates:
        assert g.shape == (6, 5) and (g.numpy() > 0).all()
        np.testing.assert_allclose(g.numpy().sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="Received:"):
        PLEBackbone(2).gate_weights(inputs)


def test_rows_reach_only_their_domains_experts_gates_and_tower():
    layer = PLEBackbone(3, num_levels=2, num_shared_experts=1, num_specific_experts=2, expert_units=[5, 4],
                        tower_units=[4, 3])
    inputs = layer_checks.backbone_inputs(12, 6, 2, 3)
    layer(inputs)
    layer_checks.randomize_weights(layer, seed=1)
    per_domain = [v for v in layer.trainable_weights
                  if "specific" in v.name or "tower_" in v.name or ("gate" in v.name and "shared_gate" not in v.name)]
    assert len(per_domain) == 2 * (4 + 1) + 4  # per level 2 layers x (kernel, bias) + gate; tower
    for domain in range(3):
        layer_checks.assert_domain_routing(layer, inputs, per_domain, domain=domain)


@pytest.mark.parametrize("num_domains", [1, 3])
@pytest.mark.parametrize("num_levels,shared,specific,expert_units,tower_units", [
    (1, 1, 1, [4], [3]), (2, 0, 2, [6, 5], [4, 2]), (3, 2, 0, [4], [3])])
@pytest.mark.parametrize("domain_rank", [1, 2])
def test_shapes(num_domains, num_levels, shared, specific, expert_units, tower_units, domain_rank):
    layer = PLEBackbone(num_domains, num_levels=num_levels, num_shared_experts=shared, num_specific_experts=specific,
                        expert_units=expert_units, tower_units=tower_units, dropout=0.5)
    x, domain, emb = layer_checks.backbone_inputs(5, 6, 2, num_domains)
    inputs = [x, domain if domain_rank == 1 else domain[:, None], emb]
    out = layer(inputs, training=False)
    assert out.shape == (5, tower_units[-1]) and out.dtype == tf.float32
    np.testing.assert_array_equal(out, layer(inputs, training=False))  # dropout only in training
    assert not np.allclose(layer(inputs, training=True), out)
    assert [g.shape for g in layer.gate_weights(inputs)] == [(5, shared + specific)] * num_levels
    assert layer.compute_output_shape([(None, 6), (None,), (None, 2)]) == [None, tower_units[-1]]
    shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in layer.weights}
    u = expert_units[-1]
    assert shapes["level0_gate_kernel"] == (num_domains, 6, shared + specific)
    assert shapes[f"level{num_levels - 1}_gate_kernel"] == (num_domains, 6 if num_levels == 1 else u, shared + specific)
    if specific:
        assert shapes["level0_specific_kernel_0"] == (num_domains, specific, 6, expert_units[0])
    if shared:
        assert shapes["level0_shared_kernel_0"] == (shared, 6, expert_units[0])
    assert sum("shared_gate" in k for k in shapes) == (num_levels - 1 if shared else 0)
    assert shapes["tower_kernel_0"] == (num_domains, u, tower_units[0])


def test_mixed_precision():
    layer = PLEBackbone(3, num_levels=2, dtype="mixed_float16")
    inputs = layer_checks.backbone_inputs(4, 6, 2, 3)
    out = layer(inputs)
    assert out.dtype == tf.float16 and np.isfinite(out.numpy()).all()
    assert all(g.dtype == tf.float16 for g in layer.gate_weights(inputs))
    assert all(v.dtype == tf.float32 for v in layer.weights)


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 3},
    {"num_domains": 2, "num_levels": 2, "num_shared_experts": 0, "num_specific_experts": 2, "expert_units": [8, 4],
     "tower_units": [4, 2], "dropout": 0.1, "output_activation": "tanh",
     "kernel_initializer": keras.initializers.HeNormal(seed=1), "kernel_regularizer": keras.regularizers.L2(1e-4),
     "name": "ple"},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(PLEBackbone(**kwargs))
    assert clone(layer_checks.backbone_inputs(4, 5, 2, kwargs["num_domains"])).shape == (
        4, kwargs.get("tower_units", [32])[-1])


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    layer = PLEBackbone(3, num_levels=2, num_shared_experts=1, num_specific_experts=2, expert_units=[6],
                        tower_units=[4, 3], dropout=0.2, name="ple")
    model = layer_checks.backbone_model(layer, 5, 2)
    layer_checks.randomize_weights(layer)
    x, domain, emb = layer_checks.backbone_inputs(6, 5, 2, 3, seed=1)
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, {"x": x, "domain": domain, "domain_embedding": emb}, tmp_path, modules=["mdr_keras.layers.ple"])


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 0}, {"num_domains": 2.0}, {"num_domains": True},
    {"num_domains": 2, "num_levels": 0}, {"num_domains": 2, "num_shared_experts": -1},
    {"num_domains": 2, "num_specific_experts": 1.0},
    {"num_domains": 2, "num_shared_experts": 0, "num_specific_experts": 0},
    {"num_domains": 2, "expert_units": []}, {"num_domains": 2, "tower_units": [0]},
    {"num_domains": 2, "dropout": 1.0}, {"num_domains": 2, "output_activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        PLEBackbone(**kwargs)


def test_bad_inputs():
    layer_checks.assert_backbone_rejects_bad_inputs(lambda: PLEBackbone(2))
