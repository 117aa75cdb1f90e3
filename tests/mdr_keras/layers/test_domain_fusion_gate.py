"""DomainFusionGate (D3 eq. 11-13): hand-computed gate and fusion, shapes, config, save / reload, argument checks."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domain_fusion_gate import DomainFusionGate
from tests.mdr_keras import layer_checks


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, np.float64)))


def shapes(gate_dim, f, h):
    return [tf.TensorShape([None, gate_dim]), tf.TensorShape([None, f, h]), tf.TensorShape([None, h])]


def inputs(batch, gate_dim, f, h, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, gate_dim)).astype(np.float32), rng.normal(size=(batch, f, h)).astype(np.float32),
            rng.normal(size=(batch, h)).astype(np.float32)]


# ------------------------------------------------------------------ 1. values by hand
HAND_WEIGHTS = {
    "gate_kernel_0": [[1.0], [-1.0]], "gate_bias_0": [0.0],   # hidden unit h = relu(g_in[0] - g_in[1])
    "gate_kernel_1": [[0.5, 0.0]], "gate_bias_1": [0.0, 0.0],  # logits v = [0.5 h, 0]
    "global_kernel": [[1.0], [0.5]], "global_bias": [2.0],     # W_glob (F=2, h=1), b_glob
}
# row 0: h = 2 -> v = [1, 0]; row 1: h = 0 -> v = [0, 0]
HAND_INPUTS = [np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32),
               np.array([[[2.0], [4.0]]] * 2, np.float32),         # W_spec = [2, 4]^T for both rows
               np.array([[1.0], [1.0]], np.float32)]               # b_spec = 1
G = sigmoid(1.0)  # row 0: g = softmax([1, 0]) = [sigmoid(1), 1 - sigmoid(1)] = [0.731059, 0.268941]; row 1: [0.5, 0.5]


def hand_layer(**kwargs):
    layer = DomainFusionGate(gate_units=(1,), **kwargs)
    layer.build(shapes(2, 2, 1))
    layer_checks.set_weights_by_name(layer, {k: v for k, v in HAND_WEIGHTS.items()
                                             if kwargs.get("fuse_bias", True) or k != "global_bias"})
    return layer


def test_mul_fusion_by_hand():
    kernel, bias, gate = hand_layer(fusion="mul")(HAND_INPUTS)
    np.testing.assert_allclose(gate, [[G, 1 - G], [0.5, 0.5]], rtol=1e-6)
    # eq. 13: W = (g_sp W_spec) * (g_sh W_glob) = g_sp g_sh [2 * 1, 4 * 0.5] = g_sp g_sh [2, 2]
    #   row 0: g_sp g_sh = 0.731059 * 0.268941 = 0.196612 -> [0.393224, 0.393224]; b = 0.196612 * 1 * 2 = 0.393224
    #   row 1: 0.5 * 0.5 = 0.25 -> [0.5, 0.5]; b = 0.25 * 1 * 2 = 0.5
    s = G * (1 - G)
    np.testing.assert_allclose(kernel, [[[2 * s], [2 * s]], [[0.5], [0.5]]], rtol=1e-5)
    np.testing.assert_allclose(bias, [[2 * s], [0.5]], rtol=1e-5)


def test_sum_fusion_by_hand():
    kernel, bias, gate = hand_layer(fusion="sum")(HAND_INPUTS)
    # W = g_sp W_spec + g_sh W_glob:
    #   row 0: g [2, 4] + (1 - g) [1, 0.5] = [1 + g, 0.5 + 3.5 g] = [1.731059, 3.058706]
    #          b = g * 1 + (1 - g) * 2 = 2 - g = 1.268941
    #   row 1: 0.5 [2, 4] + 0.5 [1, 0.5] = [1.5, 2.25]; b = 0.5 + 1 = 1.5
    np.testing.assert_allclose(kernel, [[[1 + G], [0.5 + 3.5 * G]], [[1.5], [2.25]]], rtol=1e-5)
    np.testing.assert_allclose(bias, [[2 - G], [1.5]], rtol=1e-5)
    np.testing.assert_allclose(gate[:, 0], [G, 0.5], rtol=1e-6)


def test_unfused_bias_is_passed_through():
    layer = hand_layer(fusion="sum", fuse_bias=False)
    assert "global_bias" not in [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
    kernel, bias, _ = layer(HAND_INPUTS)
    np.testing.assert_allclose(bias, HAND_INPUTS[2])
    np.testing.assert_allclose(kernel[1], [[1.5], [2.25]], rtol=1e-6)  # the kernel is still fused


def test_mul_gate_only_scales_by_g_sp_times_g_sh():
    # the observation behind `fusion="sum"`: "mul" gives W = g_sp (1 - g_sp) (W_spec * W_glob), g_sp (1 - g_sp) <= 1/4
    layer = DomainFusionGate(gate_units=(4,))
    x = inputs(6, 3, 5, 2)
    kernel, _, gate = layer(x)
    g = gate.numpy()[:, :1, None]
    np.testing.assert_allclose(kernel, g * (1 - g) * x[1] * layer.global_kernel.numpy(), rtol=1e-5, atol=1e-7)


def test_fused_transform_by_hand():
    # x = [1, 2], W_spec = l c^T with l = [2, 4], c = [1] (the [2, 4]^T above, as factors), b_spec = 1
    layer = hand_layer(fusion="sum")
    gate = layer.gate(HAND_INPUTS[0])
    x, left, right = np.array([[1.0, 2.0]] * 2, np.float32), np.array([[[2.0, 4.0]]] * 2, np.float32), np.ones((2, 1, 1))
    out = layer.fused_transform(x, left, right, HAND_INPUTS[2], gate)
    # "sum", row 0: x W + b = 1 (1 + g) + 2 (0.5 + 3.5 g) + 2 - g = 4 + 7 g = 9.117413
    #        row 1: 1 * 1.5 + 2 * 2.25 + 1.5 = 7.5
    np.testing.assert_allclose(out, [[4 + 7 * G], [7.5]], rtol=1e-5)


@pytest.mark.parametrize("fusion", ["mul", "sum"])
@pytest.mark.parametrize("fuse_bias", [True, False])
@pytest.mark.parametrize("rank", [1, 3])
def test_fused_transform_equals_the_materialised_kernel(fusion, fuse_bias, rank):
    batch, gate_dim, f, h = 5, 4, 6, 3
    rng = np.random.default_rng(rank)
    gate_input, _, bias = inputs(batch, gate_dim, f, h)
    x = rng.normal(size=(batch, f)).astype(np.float32)
    left = rng.normal(size=(batch, rank, f)).astype(np.float32)
    right = rng.normal(size=(batch, rank, h)).astype(np.float32)
    layer = DomainFusionGate(gate_units=(4,), fusion=fusion, fuse_bias=fuse_bias)
    kernel, fused_bias, gate = layer([gate_input, np.einsum("brf,brh->bfh", left, right), bias])
    expected = np.einsum("bf,bfh->bh", x, kernel) + fused_bias
    np.testing.assert_allclose(layer.fused_transform(x, left, right, bias, gate), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ 2. shapes
@pytest.mark.parametrize("gate_units", [(), (3,), (4, 2)])
@pytest.mark.parametrize("fusion", ["mul", "sum"])
@pytest.mark.parametrize("f,h", [(1, 1), (6, 3)])
@pytest.mark.parametrize("fuse_bias", [True, False])
def test_shapes(gate_units, fusion, f, h, fuse_bias):
    batch, gate_dim = 4, 5
    layer = DomainFusionGate(gate_units=gate_units, fusion=fusion, fuse_bias=fuse_bias)
    kernel, bias, gate = layer(inputs(batch, gate_dim, f, h))
    assert kernel.shape == (batch, f, h) and bias.shape == (batch, h) and gate.shape == (batch, 2)
    assert gate.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(gate, -1), np.ones(batch), rtol=1e-6)  # eq. 12: softmax
    expected = []  # gate MLP kernels and biases (hidden layers, then the 2 logits), W_glob, b_glob
    for fan_in, width in zip([gate_dim] + list(gate_units), list(gate_units) + [2]):
        expected += [[fan_in, width], [width]]
    expected += [[f, h]] + ([[h]] if fuse_bias else [])
    assert [list(w.shape) for w in layer.weights] == expected
    assert [tuple(s) for s in layer.compute_output_shape(shapes(gate_dim, f, h))] == [
        (None, f, h), (None, h), (None, 2)]


# ------------------------------------------------------------------ 3. config, save / reload
@pytest.mark.parametrize("kwargs", [
    {},
    {"gate_units": [], "fusion": "sum", "fuse_bias": False, "name": "df"},
    {"gate_units": (8,), "activation": "tanh", "kernel_initializer": keras.initializers.HeNormal(seed=3),
     "kernel_regularizer": keras.regularizers.L2(1e-4)},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(DomainFusionGate(**kwargs))
    clone(inputs(2, 3, 2, 2))  # the clone builds and runs


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    gate_dim, f, h = 3, 4, 2
    ins = {"gate_input": keras.Input((gate_dim,), name="gate_input"),
           "specific_kernel": keras.Input((f, h), name="specific_kernel"),
           "specific_bias": keras.Input((h,), name="specific_bias")}
    args = [ins["gate_input"], ins["specific_kernel"], ins["specific_bias"]]
    kernel, bias, gate = DomainFusionGate(gate_units=(4,), name="mul")(args)
    sum_kernel, _, _ = DomainFusionGate(fusion="sum", fuse_bias=False, name="sum")(args)
    model = keras.Model(ins, {"kernel": kernel, "bias": bias, "gate": gate, "sum_kernel": sum_kernel})
    for layer in model.layers:
        if isinstance(layer, DomainFusionGate):  # non-zero biases too
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    data = dict(zip(ins, inputs(5, gate_dim, f, h)))
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, data, tmp_path, modules=["mdr_keras.layers.domain_fusion_gate"])


# ------------------------------------------------------------------ 4. bad arguments and inputs
@pytest.mark.parametrize("kwargs", [
    {"gate_units": (0,)},
    {"gate_units": (4, -1)},
    {"gate_units": 4},
    {"gate_units": (2.5,)},
    {"fusion": "add"},
    {"fusion": None},
    {"fuse_bias": 1},
    {"activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        DomainFusionGate(**kwargs)


@pytest.mark.parametrize("input_shape", [
    [tf.TensorShape([None, 3]), tf.TensorShape([None, 2, 2])],                                # two inputs
    [tf.TensorShape([None, 3, 1]), tf.TensorShape([None, 2, 2]), tf.TensorShape([None, 2])],  # gate input rank 3
    [tf.TensorShape([None, 3]), tf.TensorShape([None, 4]), tf.TensorShape([None, 2])],        # kernel rank 2
    [tf.TensorShape([None, 3]), tf.TensorShape([None, 2, 2]), tf.TensorShape([None, 3])],     # bias width != h
])
def test_bad_input_shapes(input_shape):
    with pytest.raises(ValueError, match="Received:"):
        DomainFusionGate().build(input_shape)
