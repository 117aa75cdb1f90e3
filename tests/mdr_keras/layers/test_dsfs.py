"""DomainSensitiveFeatureSelection (D3 eq. 6-14): hand-computed values of every variant, shapes, attention and gate
outputs, gradients, mixed precision, config, save / reload, argument checks."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.dsfs import DomainSensitiveFeatureSelection
from tests.mdr_keras import layer_checks

LN3 = math.log(3.0)
# N = 2 fields, e = 2, field_units h1 = 1, units h = 1, gate_units = () (one linear layer to the 2 logits).
FIELDS = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)  # x = I, x_flat = [1, 0, 0, 1]
HAND_WEIGHTS = {
    "query_kernel": np.eye(2), "key_kernel": LN3 * np.eye(2),  # Q K^T = ln3 I -> A = [[3/4, 1/4], [1/4, 3/4]]
    "field_kernel": [[[1.0], [0.0]], [[1.0], [1.0]]],          # FC_1(z) = z_1, FC_2(z) = z_1 + z_2 - 1
    "field_bias": [[0.0], [-1.0]],
    "residual_kernel": [[1.0, 0.0], [0.0, -1.0]], "residual_bias": [0.0, 0.0],
    "weight_generator_kernel": [[1, 0, 0, 0], [0, 1, 0, 0]],    # W_spec = [T_1, T_2, 0, 1]^T
    "weight_generator_bias": [0, 0, 0, 1],
    # weight_rank=1: l = [T_1, T_2, 0, 1], c = [0 T_1 + 0 T_2 + 1] -> W_spec = l c^T, the same W_spec
    "left_generator_kernel": [[1, 0, 0, 0], [0, 1, 0, 0]], "left_generator_bias": [0, 0, 0, 1],
    "right_generator_kernel": [[0.0], [0.0]], "right_generator_bias": [1.0],
    "bias_generator_kernel": [[0.0], [1.0]], "bias_generator_bias": [0.5],  # b_spec = T_2 + 0.5
    # v = [x'_11 - x'_12 + ln3 - 1.5, 0] (reads x', not x)
    "gate_kernel_0": [[1, 0], [-1, 0], [0, 0], [0, 0]], "gate_bias_0": [LN3 - 1.5, 0.0],
    "global_kernel": [[1.0], [2.0], [3.0], [4.0]], "global_bias": [2.0],
}
# eq. 7: A = [[0.75, 0.25], [0.25, 0.75]]
# eq. 8: x' = A x + x = A + I -> x'_1 = [1.75, 0.25], x'_2 = [0.25, 1.75]
# eq. 9: H = [FC_1(x'_1), FC_2(x'_2)] = [1.75, 0.25 + 1.75 - 1] = [1.75, 1]
# eq. 10: H W1 = [1.75, -1] -> relu [1.75, 0]; T = relu(H + that) = [3.5, 1]
#   W_spec = [3.5, 1, 0, 1]^T, b_spec = 1 + 0.5 = 1.5
# eq. 11-12: v = [1.75 - 0.25 + ln3 - 1.5, 0] = [ln3, 0] -> g = [3/4, 1/4]
ATTENTION = [[[0.75, 0.25], [0.25, 0.75]]]


def hand_layer(**kwargs):
    layer = DomainSensitiveFeatureSelection(1, field_units=1, gate_units=(), **kwargs)
    layer.build(tf.TensorShape([None, 2, 2]))
    names = {w.name.split("/")[-1].split(":")[0] for w in layer.weights}
    values = {k: v for k, v in HAND_WEIGHTS.items() if k in names}
    if "value_kernel" in names:
        values["value_kernel"] = 2.0 * np.eye(2)
    layer_checks.set_weights_by_name(layer, values)
    return layer


@pytest.mark.parametrize("kwargs,expected", [
    # eq. 13 "mul": W = (0.75 W_spec) * (0.25 W_glob) = 0.1875 [3.5*1, 1*2, 0*3, 1*4] = [0.65625, 0.375, 0, 0.75]
    #   b = (0.75 * 1.5) * (0.25 * 2) = 0.5625; eq. 14: relu(1 * 0.65625 + 1 * 0.75 + 0.5625) = 1.96875
    ({"fusion": "mul"}, 1.96875),
    # "mul", b = b_spec: relu(1.40625 + 1.5) = 2.90625
    ({"fusion": "mul", "fuse_bias": False}, 2.90625),
    # "sum": W = 0.75 [3.5, 1, 0, 1] + 0.25 [1, 2, 3, 4] = [2.875, 1.25, 0.75, 1.75]; b = 0.75*1.5 + 0.25*2 = 1.625
    #   relu(2.875 + 1.75 + 1.625) = 6.25
    ({"fusion": "sum"}, 6.25),
    # no gate (D1 ablation): W = W_spec, b = b_spec: relu(3.5 + 1 + 1.5) = 6
    ({"fusion": None}, 6.0),
])
@pytest.mark.parametrize("weight_rank", [None, 1])  # the rank-1 weights above give the same W_spec
def test_values_by_hand(kwargs, expected, weight_rank):
    out = hand_layer(weight_rank=weight_rank, **kwargs)(FIELDS, return_attention=True)
    np.testing.assert_allclose(out["output"], [[expected]], rtol=1e-5)
    np.testing.assert_allclose(out["attention"], ATTENTION, rtol=1e-6)
    np.testing.assert_allclose(out["specific_gate"], [1.0 if kwargs["fusion"] is None else 0.75], rtol=1e-6)


def test_value_projection_by_hand():
    out = hand_layer(value_projection=True)(FIELDS, return_attention=True)
    # W^V = 2 I: x' = A (2 x) + x = 2 A + I -> x'_1 = [2.5, 0.5], x'_2 = [0.5, 2.5]
    # H = [2.5, 0.5 + 2.5 - 1] = [2.5, 2]; H W1 = [2.5, -2] -> [2.5, 0]; T = [5, 2]; W_spec = [5, 2, 0, 1], b_spec = 2.5
    # v = [2.5 - 0.5 + ln3 - 1.5, 0] = [ln3 + 0.5, 0] -> g_sp = 3 e^0.5 / (3 e^0.5 + 1)
    g = 3 * math.exp(0.5) / (3 * math.exp(0.5) + 1)
    # "mul": W = g (1 - g) [5, 4, 0, 4], b = g (1 - g) 2.5 * 2 -> relu(g (1 - g) (5 + 4 + 5)) = 14 g (1 - g)
    np.testing.assert_allclose(out["output"], [[14 * g * (1 - g)]], rtol=1e-5)
    np.testing.assert_allclose(out["specific_gate"], [g], rtol=1e-6)


def test_transformation_input_by_hand():
    # [fields, x_flat]: the generated weight transforms x_flat (a backbone's hidden vector) instead of the fields
    out = hand_layer(fusion=None)([FIELDS, np.array([[2.0, 0.0, 1.0, -1.0]], np.float32)])
    # relu(2 * 3.5 + 0 * 1 + 1 * 0 - 1 * 1 + 1.5) = 7.5
    np.testing.assert_allclose(out, [[7.5]], rtol=1e-6)


# ------------------------------------------------------------------ 2. shapes, attention and gate
@pytest.mark.parametrize("num_fields", [1, 3])
@pytest.mark.parametrize("units", [1, 3])
@pytest.mark.parametrize("fusion", ["mul", "sum", None])
@pytest.mark.parametrize("transform_dim", [None, 5])
@pytest.mark.parametrize("weight_rank", [None, 2])
def test_shapes(num_fields, units, fusion, transform_dim, weight_rank):
    batch, e, h1 = 4, 2, 3
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(batch, num_fields, e)).astype(np.float32)
    inputs = fields if transform_dim is None else [fields, rng.normal(size=(batch, transform_dim)).astype(np.float32)]
    layer = DomainSensitiveFeatureSelection(units, field_units=h1, fusion=fusion, gate_units=(4,),
                                            weight_rank=weight_rank)
    out = layer(inputs, return_attention=True)
    assert sorted(out) == ["attention", "output", "specific_gate"]
    assert out["output"].shape == (batch, units) and out["output"].dtype == tf.float32
    assert out["attention"].shape == (batch, num_fields, num_fields)
    assert out["specific_gate"].shape == (batch,)
    np.testing.assert_allclose(tf.reduce_sum(out["attention"], -1), np.ones((batch, num_fields)), rtol=1e-5)
    assert (out["output"].numpy() >= 0).all()  # ReLU
    g = out["specific_gate"].numpy()
    assert (g == 1).all() if fusion is None else ((g > 0) & (g < 1)).all()
    np.testing.assert_allclose(layer(inputs), out["output"])  # same output without the dict
    f = num_fields * e if transform_dim is None else transform_dim
    if weight_rank is None:
        assert tuple(layer.weight_generator_kernel.shape) == (num_fields * h1, f * units)
    else:
        assert tuple(layer.left_generator_kernel.shape) == (num_fields * h1, weight_rank * f)
        assert tuple(layer.right_generator_kernel.shape) == (num_fields * h1, weight_rank * units)
    assert tuple(layer.field_kernel.shape) == (num_fields, e, h1)
    assert len(layer.weights) == 10 + (0 if weight_rank is None else 2) + (6 if fusion else 0)
    assert tuple(layer.compute_output_shape(tf.TensorShape([None, num_fields, e]))) == (None, units)


def test_rows_are_independent():
    layer = DomainSensitiveFeatureSelection(2, field_units=3, gate_units=(4,))
    fields = np.random.default_rng(0).normal(size=(5, 3, 2)).astype(np.float32)
    both = layer(fields, return_attention=True)
    for i in (0, 3):
        one = layer(fields[i:i + 1], return_attention=True)
        for key in both:
            np.testing.assert_allclose(one[key][0], both[key][i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion,weight_rank", [("sum", None), ("sum", 2), ("mul", 2)])
def test_gradients_reach_every_weight(fusion, weight_rank):
    # unlike the reference code (detached DSFS input), W^Q / W^K learn through eq. 8 -> 14
    layer = DomainSensitiveFeatureSelection(3, field_units=4, fusion=fusion, gate_units=(4,), weight_rank=weight_rank)
    fields = np.random.default_rng(0).normal(size=(8, 3, 2)).astype(np.float32)
    layer(fields)
    rng = np.random.default_rng(1)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(fields, training=True) ** 2)
    for var, grad in zip(layer.trainable_weights, tape.gradient(loss, layer.trainable_weights)):
        assert grad is not None and np.abs(tf.convert_to_tensor(grad).numpy()).max() > 0, var.name


@pytest.mark.parametrize("weight_rank", [None, 3])
def test_mixed_precision(weight_rank):
    layer = DomainSensitiveFeatureSelection(2, field_units=3, gate_units=(4,), dtype="mixed_float16",
                                            weight_rank=weight_rank)
    out = layer(np.random.default_rng(0).normal(size=(4, 3, 2)).astype(np.float32), return_attention=True)
    assert out["output"].dtype == tf.float16
    assert out["attention"].dtype == tf.float32 and out["specific_gate"].dtype == tf.float32
    assert all(w.dtype == tf.float32 for w in layer.weights)


# ------------------------------------------------------------------ 3. config, save / reload
@pytest.mark.parametrize("kwargs", [
    {"units": 4},
    {"units": 2, "field_units": 3, "value_projection": True, "fusion": "sum", "gate_units": [], "fuse_bias": False,
     "name": "d3"},
    {"units": 1, "fusion": None, "activation": "elu", "kernel_initializer": keras.initializers.HeNormal(seed=1),
     "kernel_regularizer": keras.regularizers.L2(1e-5)},
    {"units": 3, "weight_rank": 2, "fusion": "mul"},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(DomainSensitiveFeatureSelection(**kwargs))
    for key, value in kwargs.items():
        if key not in ("kernel_initializer", "kernel_regularizer", "activation", "gate_units"):
            assert getattr(clone, key) == value
    clone(np.ones((2, 3, 2), np.float32))  # the clone builds and runs


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    n, e, hidden = 3, 2, 5
    fields_in = keras.Input((n, e), name="fields")
    x_in = keras.Input((hidden,), name="x_flat")
    d3 = DomainSensitiveFeatureSelection(2, field_units=3, gate_units=(4,), name="d3")(fields_in, return_attention=True)
    outputs = {
        "output": d3["output"], "attention": d3["attention"], "specific_gate": d3["specific_gate"],
        "sum_value": DomainSensitiveFeatureSelection(2, field_units=2, fusion="sum", value_projection=True,
                                                     name="sum_value")([fields_in, x_in]),
        "no_gate": DomainSensitiveFeatureSelection(1, field_units=2, fusion=None, name="no_gate")(fields_in),
        "low_rank": DomainSensitiveFeatureSelection(2, field_units=2, weight_rank=2, name="low_rank")([fields_in, x_in]),
    }
    model = keras.Model({"fields": fields_in, "x_flat": x_in}, outputs)
    for layer in model.layers:
        if isinstance(layer, DomainSensitiveFeatureSelection):  # non-trivial weights, biases included
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([0.5 * rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    rng = np.random.default_rng(0)
    inputs = {"fields": rng.normal(size=(4, n, e)).astype(np.float32),
              "x_flat": rng.normal(size=(4, hidden)).astype(np.float32)}
    assert np.abs(model(inputs)["output"].numpy()).max() > 0
    layer_checks.assert_same_after_reload_in_fresh_process(model, inputs, tmp_path, modules=["mdr_keras.layers.dsfs"])


# ------------------------------------------------------------------ 4. bad arguments and inputs
@pytest.mark.parametrize("kwargs", [
    {"units": 0},
    {"units": 2.0},
    {"units": True},
    {"units": 2, "field_units": 0},
    {"units": 2, "field_units": "8"},
    {"units": 2, "value_projection": "yes"},
    {"units": 2, "fusion": "concat"},
    {"units": 2, "gate_units": (0,)},
    {"units": 2, "fuse_bias": None},
    {"units": 2, "weight_rank": 0},
    {"units": 2, "weight_rank": 1.5},
    {"units": 2, "activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        DomainSensitiveFeatureSelection(**kwargs)


@pytest.mark.parametrize("inputs", [
    np.ones((2, 6), np.float32),                                                 # fields must be [B, N, e]
    [np.ones((2, 3, 2), np.float32), np.ones((2, 1, 6), np.float32)],            # x_flat must be [B, F]
    [np.ones((2, 3, 2), np.float32)] * 3,                                        # too many inputs
])
def test_bad_inputs(inputs):
    with pytest.raises(ValueError, match="Received:"):
        DomainSensitiveFeatureSelection(2)(inputs)
