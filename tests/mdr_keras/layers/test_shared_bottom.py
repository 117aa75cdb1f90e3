"""SharedBottomBackbone: value by hand, shapes, per-domain towers, config, save / reload, argument checks."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.shared_bottom import SharedBottomBackbone
from tests.mdr_keras import layer_checks


def test_value_by_hand():
    layer = SharedBottomBackbone(2, bottom_units=[2], tower_units=[1])
    x = np.array([[1.0, 2.0], [1.0, 2.0], [-1.0, 1.0]], np.float32)
    inputs = [x, np.array([0, 1, 0]), np.zeros((3, 1), np.float32)]
    layer(inputs)
    layer_checks.set_weights_by_name(layer, {
        "bottom_kernel_0": [[1.0, -1.0], [1.0, 1.0]], "bottom_bias_0": [0.0, -1.0],
        "tower_kernel_0": [[[2.0], [1.0]], [[-1.0], [3.0]]], "tower_bias_0": [[0.5], [0.0]]})
    # bottom: [1, 2] -> relu([1 + 2 + 0, -1 + 2 - 1]) = [3, 0];  [-1, 1] -> relu([-1 + 1, 1 + 1 - 1]) = [0, 1]
    # towers (linear): row 0, d0: 2*3 + 1*0 + 0.5 = 6.5;  row 1, d1: -1*3 + 3*0 = -3;  row 2, d0: 2*0 + 1*1 + 0.5 = 1.5
    np.testing.assert_allclose(layer(inputs), [[6.5], [-3.0], [1.5]], rtol=1e-6)
    relu_out = SharedBottomBackbone(2, bottom_units=[2], tower_units=[1], output_activation="relu")
    relu_out(inputs)
    relu_out.set_weights(layer.get_weights())
    np.testing.assert_allclose(relu_out(inputs), [[6.5], [0.0], [1.5]], rtol=1e-6)


def test_rows_reach_only_their_domains_tower():
    layer = SharedBottomBackbone(3, bottom_units=[6], tower_units=[5, 4])
    inputs = layer_checks.backbone_inputs(9, 7, 2, 3)
    layer(inputs)
    layer_checks.randomize_weights(layer, seed=1)
    towers = [v for v in layer.trainable_weights if "tower_" in v.name]
    assert len(towers) == 4
    for domain in range(3):
        layer_checks.assert_domain_routing(layer, inputs, towers, domain=domain)


@pytest.mark.parametrize("num_domains", [1, 3])
@pytest.mark.parametrize("bottom_units,tower_units", [([4], [3]), ([8, 6], [5, 2])])
@pytest.mark.parametrize("domain_rank", [1, 2])
def test_shapes(num_domains, bottom_units, tower_units, domain_rank):
    layer = SharedBottomBackbone(num_domains, bottom_units=bottom_units, tower_units=tower_units, dropout=0.5)
    x, domain, emb = layer_checks.backbone_inputs(5, 6, 2, num_domains)
    inputs = [x, domain if domain_rank == 1 else domain[:, None], emb]
    out = layer(inputs, training=False)
    assert out.shape == (5, tower_units[-1]) and out.dtype == tf.float32
    np.testing.assert_array_equal(out, layer(inputs, training=False))  # dropout only in training
    assert not np.allclose(layer(inputs, training=True), out)
    assert layer.compute_output_shape([(None, 6), (None,), (None, 2)]) == [None, tower_units[-1]]
    shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in layer.weights}
    assert shapes["bottom_kernel_0"] == (6, bottom_units[0])
    assert shapes[f"tower_kernel_{len(tower_units) - 1}"] == (num_domains, (bottom_units + tower_units)[-2],
                                                              tower_units[-1])


def test_mixed_precision():
    layer = SharedBottomBackbone(3, dtype="mixed_float16")
    out = layer(layer_checks.backbone_inputs(4, 6, 2, 3))
    assert out.dtype == tf.float16 and np.isfinite(out.numpy()).all()
    assert all(v.dtype == tf.float32 for v in layer.weights)


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 3},
    {"num_domains": 2, "bottom_units": [8, 4], "tower_units": [4, 2], "dropout": 0.1, "output_activation": "tanh",
     "kernel_initializer": keras.initializers.HeNormal(seed=1), "kernel_regularizer": keras.regularizers.L2(1e-4),
     "name": "sb"},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(SharedBottomBackbone(**kwargs))
    assert clone(layer_checks.backbone_inputs(4, 5, 2, kwargs["num_domains"])).shape == (
        4, kwargs.get("tower_units", [32])[-1])


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    layer = SharedBottomBackbone(3, bottom_units=[6], tower_units=[4, 3], dropout=0.2, name="shared_bottom")
    model = layer_checks.backbone_model(layer, 5, 2)
    layer_checks.randomize_weights(layer)
    x, domain, emb = layer_checks.backbone_inputs(6, 5, 2, 3, seed=1)
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, {"x": x, "domain": domain, "domain_embedding": emb}, tmp_path,
        modules=["mdr_keras.layers.shared_bottom"])


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 0}, {"num_domains": 2.0}, {"num_domains": True},
    {"num_domains": 2, "bottom_units": []}, {"num_domains": 2, "bottom_units": [4, 0]},
    {"num_domains": 2, "tower_units": 4}, {"num_domains": 2, "tower_units": [2.5]},
    {"num_domains": 2, "dropout": 1.0}, {"num_domains": 2, "dropout": -0.1},
    {"num_domains": 2, "output_activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        SharedBottomBackbone(**kwargs)


def test_bad_inputs():
    layer_checks.assert_backbone_rejects_bad_inputs(lambda: SharedBottomBackbone(2))
