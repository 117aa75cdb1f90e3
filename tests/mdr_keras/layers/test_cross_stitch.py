"""CrossStitchBackbone: value by hand, initial cross-stitch units, routing through the units, shapes, config,
save / reload, argument checks."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.cross_stitch import CrossStitchBackbone
from tests.mdr_keras import layer_checks


def test_value_by_hand():
    layer = CrossStitchBackbone(2, units=[1, 1])
    inputs = [np.array([[2.0], [2.0], [-1.0]], np.float32), np.array([0, 1, 0]), np.zeros((3, 1), np.float32)]
    layer(inputs)
    layer_checks.set_weights_by_name(layer, {
        "column_kernel_0": [[[1.0]], [[-1.0]]], "column_bias_0": [[0.0], [1.0]],
        "cross_stitch_0": [[0.9, 0.1], [0.2, 0.8]],
        "column_kernel_1": [[[2.0]], [[3.0]]], "column_bias_1": [[0.0], [-1.0]]})
    # layer 0, columns [relu(1 x), relu(-x + 1)]:  x = 2 -> [2, 0];  x = -1 -> [0, 2]
    # cross-stitch h~_0 = 0.9 h_0 + 0.1 h_1, h~_1 = 0.2 h_0 + 0.8 h_1:  x = 2 -> [1.8, 0.4];  x = -1 -> [0.2, 1.6]
    # layer 1 (linear) of the row's column:  row 0 (d0) 2*1.8 = 3.6;  row 1 (d1) 3*0.4 - 1 = 0.2;
    #   row 2 (d0) 2*0.2 = 0.4
    np.testing.assert_allclose(layer(inputs), [[3.6], [0.2], [0.4]], rtol=1e-5)


@pytest.mark.parametrize("num_domains,self_weight,expected", [
    (3, 0.9, [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]),  # off-diagonal (1 - 0.9) / 2
    (2, 0.6, [[0.6, 0.4], [0.4, 0.6]]),
    (1, 0.9, [[1.0]]),
])
def test_cross_stitch_units_start_near_identity(num_domains, self_weight, expected):
    layer = CrossStitchBackbone(num_domains, units=[4, 3, 2], self_weight=self_weight)
    layer(layer_checks.backbone_inputs(3, 5, 2, num_domains))
    assert len(layer.cross_stitch) == 2  # one unit after each hidden layer
    for unit in layer.cross_stitch:
        np.testing.assert_allclose(unit.numpy(), expected, rtol=1e-6)


def test_domains_meet_only_through_the_cross_stitch_units():
    layer = CrossStitchBackbone(3, units=[5, 4, 3])
    inputs = layer_checks.backbone_inputs(9, 6, 2, 3)
    layer(inputs)
    layer_checks.randomize_weights(layer, seed=1)
    for unit in layer.cross_stitch:  # mixing units as initialised
        unit.assign([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    columns = [v for v in layer.trainable_weights if "column_" in v.name]
    # the output layer is the row's own column's
    layer_checks.assert_domain_routing(layer, inputs, columns[-2:], domain=1)
    # with the initial (mixing) units, domain-1 rows also train the other columns' hidden layers
    rows = inputs[1] == 1
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.boolean_mask(layer(inputs), rows) ** 2)
    grad = tape.gradient(loss, columns[0]).numpy()
    assert np.abs(grad[[0, 2]]).max() > 0.0
    # with identity units the columns are independent MLPs: rows reach only their domain's column
    for unit in layer.cross_stitch:
        unit.assign(np.eye(3))
    for domain in range(3):
        layer_checks.assert_domain_routing(layer, inputs, columns, domain=domain)


@pytest.mark.parametrize("num_domains", [1, 3])
@pytest.mark.parametrize("units", [[3], [6, 4, 2]])
@pytest.mark.parametrize("domain_rank", [1, 2])
def test_shapes(num_domains, units, domain_rank):
    layer = CrossStitchBackbone(num_domains, units=units, dropout=0.5)
    x, domain, emb = layer_checks.backbone_inputs(5, 6, 2, num_domains)
    inputs = [x, domain if domain_rank == 1 else domain[:, None], emb]
    out = layer(inputs, training=False)
    assert out.shape == (5, units[-1]) and out.dtype == tf.float32
    np.testing.assert_array_equal(out, layer(inputs, training=False))  # dropout only in training
    if len(units) > 1:
        assert not np.allclose(layer(inputs, training=True), out)
    assert layer.compute_output_shape([(None, 6), (None,), (None, 2)]) == [None, units[-1]]
    shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in layer.weights}
    assert shapes["column_kernel_0"] == (num_domains, 6, units[0])
    assert sum(k.startswith("cross_stitch") for k in shapes) == len(units) - 1


def test_mixed_precision():
    layer = CrossStitchBackbone(3, dtype="mixed_float16")
    out = layer(layer_checks.backbone_inputs(4, 6, 2, 3))
    assert out.dtype == tf.float16 and np.isfinite(out.numpy()).all()
    assert all(v.dtype == tf.float32 for v in layer.weights)


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 3},
    {"num_domains": 2, "units": [8, 4, 2], "self_weight": 0.7, "dropout": 0.1, "output_activation": "sigmoid",
     "kernel_initializer": keras.initializers.HeNormal(seed=1), "kernel_regularizer": keras.regularizers.L2(1e-4),
     "name": "cs"},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(CrossStitchBackbone(**kwargs))
    assert clone(layer_checks.backbone_inputs(4, 5, 2, kwargs["num_domains"])).shape == (
        4, kwargs.get("units", [32])[-1])


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    layer = CrossStitchBackbone(3, units=[6, 4, 3], dropout=0.2, name="cross_stitch")
    model = layer_checks.backbone_model(layer, 5, 2)
    layer_checks.randomize_weights(layer)
    x, domain, emb = layer_checks.backbone_inputs(6, 5, 2, 3, seed=1)
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, {"x": x, "domain": domain, "domain_embedding": emb}, tmp_path,
        modules=["mdr_keras.layers.cross_stitch"])


@pytest.mark.parametrize("kwargs", [
    {"num_domains": 0}, {"num_domains": 2.0}, {"num_domains": True},
    {"num_domains": 2, "units": []}, {"num_domains": 2, "units": [4, 0]}, {"num_domains": 2, "units": 4},
    {"num_domains": 2, "self_weight": 1.5}, {"num_domains": 2, "self_weight": -0.1},
    {"num_domains": 2, "self_weight": True},
    {"num_domains": 2, "dropout": 1.0}, {"num_domains": 2, "output_activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        CrossStitchBackbone(**kwargs)


def test_bad_inputs():
    layer_checks.assert_backbone_rejects_bad_inputs(lambda: CrossStitchBackbone(2))
