"""PersonalizedSequenceRepresentation (ADS PSRG, eq. 2-5): hand-computed values, identity start, a NumPy
reference over a shape grid, mixed precision, config, save / reload, argument checks."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.psrg import PersonalizedSequenceRepresentation as PSRG
from tests.mdr_keras import layer_checks

LN3 = math.log(3.0)  # sigmoid(ln 3) = 3/4, sigmoid(-ln 3) = 1/4


def short_name(var):
    return var.name.split("/")[-1].split(":")[0]


def assign(layer, **values):
    for var in layer.weights:
        if short_name(var) in values:
            var.assign(np.asarray(values[short_name(var)], np.float32).reshape(var.shape))


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for var in layer.weights:
        var.assign(rng.normal(scale=0.7, size=var.shape))


def built(layer, d_s, d_d, t=3, batch=2):
    layer([np.zeros((batch, t, d_s), np.float32), np.zeros((batch, d_d), np.float32)])
    return layer


def reference(layer, seq, dom):
    """Eq. 2-5 in NumPy (float64)."""
    w = {short_name(v): v.numpy().astype(np.float64) for v in layer.weights}
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    d_s = seq.shape[-1]
    private = 1 / (1 + np.exp(-(relu(dom @ w["weight_hidden_kernel"] + w["weight_hidden_bias"])
                                @ w["weight_output_kernel"] + w["weight_output_bias"])))
    weight = (layer.eta * w["shared_weight"] * private).reshape(-1, d_s, d_s)
    bias = relu(dom @ w["bias_hidden_kernel"] + w["bias_hidden_bias"]) @ w["bias_output_kernel"] + w["bias_output_bias"]
    return np.einsum("btj,bij->bti", seq, weight) + bias[:, None, :]


# ------------------------------------------------------------------ 1. values by hand
def test_by_hand():
    layer = built(PSRG(hidden_units=1), d_s=2, d_d=1)
    assert sorted(short_name(w) for w in layer.weights) == sorted([
        "shared_weight", "weight_hidden_kernel", "weight_hidden_bias", "weight_output_kernel", "weight_output_bias",
        "bias_hidden_kernel", "bias_hidden_bias", "bias_output_kernel", "bias_output_bias"])
    assign(layer, shared_weight=[1, 2, 3, 4],
           weight_hidden_kernel=[[1]], weight_hidden_bias=[0], weight_output_kernel=[[0, LN3, -LN3, 0]],
           weight_output_bias=[0, 0, 0, 0],
           bias_hidden_kernel=[[2]], bias_hidden_bias=[0], bias_output_kernel=[[1, -1]], bias_output_bias=[0.5, 0])
    seq = np.array([[[1, 2], [0, 0]], [[1, 2], [0, 0]]], np.float32)  # item (1, 2), then a padded item
    dom = np.array([[1], [-1]], np.float32)
    out = layer([seq, dom]).numpy()
    # row 0, E_D = 1: hidden = relu(1 * 1) = 1; W_private = sigmoid([0, ln3, -ln3, 0]) = [1/2, 3/4, 1/4, 1/2]
    #   W_gen = 2 * [1, 2, 3, 4] * W_private = [1, 3, 1.5, 4] -> W = [[1, 3], [1.5, 4]]
    #   b_gen = relu(2 * 1) * [1, -1] + [0.5, 0] = [2.5, -2]
    #   item (1, 2): [1*1 + 2*3 + 2.5, 1*1.5 + 2*4 - 2] = [9.5, 7.5]; padded item (0, 0): b_gen = [2.5, -2]
    # row 1, E_D = -1: both hidden layers relu(-1), relu(-2) = 0 -> W_private = 1/2 everywhere
    #   W = 2 * 1/2 * [[1, 2], [3, 4]] = [[1, 2], [3, 4]], b_gen = [0.5, 0]
    #   item (1, 2): [1 + 4 + 0.5, 3 + 8] = [5.5, 11]; padded item: [0.5, 0]
    np.testing.assert_allclose(out, [[[9.5, 7.5], [2.5, -2.0]], [[5.5, 11.0], [0.5, 0.0]]], rtol=1e-6)


def test_starts_as_the_identity():
    # W_shared = eye, zero output layers -> W_private = 1/2, eta * W_private = 1, b_gen = 0
    layer = PSRG(hidden_units=8)
    rng = np.random.default_rng(0)
    seq, dom = rng.normal(size=(4, 5, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
    np.testing.assert_array_equal(layer([seq, dom]).numpy(), seq)
    np.testing.assert_array_equal(layer.shared_weight.numpy(), np.eye(3).reshape(-1))


def test_glorot_shared_weight_and_eta():
    layer = PSRG(hidden_units=4, eta=3.0, shared_initializer=keras.initializers.GlorotUniform(seed=1))
    seq, dom = np.ones((2, 2, 3), np.float32), np.ones((2, 2), np.float32)
    out = layer([seq, dom]).numpy()
    shared = layer.shared_weight.numpy().reshape(3, 3)
    assert np.abs(shared - np.eye(3)).max() > 1e-3 and np.abs(shared).max() <= math.sqrt(6 / 6)
    np.testing.assert_allclose(out, np.einsum("btj,ij->bti", seq, 1.5 * shared), rtol=1e-6)  # eta * 1/2 = 1.5


def test_rows_get_their_own_transform_and_positions_share_it():
    layer = built(PSRG(hidden_units=4), d_s=3, d_d=2)
    randomize(layer)
    rng = np.random.default_rng(1)
    item = rng.normal(size=(3,)).astype(np.float32)
    seq = np.tile(item, (2, 4, 1))  # the same item at every position of both rows
    out = layer([seq, rng.normal(size=(2, 2)).astype(np.float32)]).numpy()
    np.testing.assert_allclose(out, np.repeat(out[:, :1], 4, axis=1), rtol=1e-6)  # per sample, not per item
    assert np.abs(out[0, 0] - out[1, 0]).max() > 1e-3  # two users, two representations of the item


# ------------------------------------------------------------------ 2. shapes, NumPy reference
@pytest.mark.parametrize("d_s", [1, 4])
@pytest.mark.parametrize("d_d", [1, 3])
@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("hidden_units", [1, 6])
def test_shapes_and_reference(d_s, d_d, t, hidden_units):
    batch = 3
    layer = built(PSRG(hidden_units=hidden_units), d_s=d_s, d_d=d_d, t=t)
    assert {short_name(w): tuple(w.shape) for w in layer.weights} == {
        "shared_weight": (d_s * d_s,), "weight_hidden_kernel": (d_d, hidden_units),
        "weight_hidden_bias": (hidden_units,), "weight_output_kernel": (hidden_units, d_s * d_s),
        "weight_output_bias": (d_s * d_s,), "bias_hidden_kernel": (d_d, hidden_units),
        "bias_hidden_bias": (hidden_units,), "bias_output_kernel": (hidden_units, d_s), "bias_output_bias": (d_s,)}
    randomize(layer, seed=d_s + t)
    rng = np.random.default_rng(t)
    seq, dom = rng.normal(size=(batch, t, d_s)).astype(np.float32), rng.normal(size=(batch, d_d)).astype(np.float32)
    out = layer([seq, dom])
    assert out.shape == (batch, t, d_s) and out.dtype == tf.float32
    np.testing.assert_allclose(out, reference(layer, seq, dom), rtol=1e-4, atol=1e-5)
    assert layer.compute_output_shape([tf.TensorShape([None, t, d_s]), tf.TensorShape([None, d_d])]) == [None, t, d_s]


def test_mixed_precision():
    layer = PSRG(hidden_units=4, dtype=keras.mixed_precision.Policy("mixed_float16"))
    rng = np.random.default_rng(0)
    seq, dom = rng.normal(size=(2, 3, 4)).astype(np.float32), rng.normal(size=(2, 2)).astype(np.float32)
    out = layer([seq, dom])
    assert out.dtype == tf.float16 and layer.shared_weight.dtype == tf.float32
    randomize(layer)
    np.testing.assert_allclose(layer([seq, dom]).numpy(), reference(layer, seq, dom), rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------ 3. config, save / reload
@pytest.mark.parametrize("kwargs", [
    {},
    {"hidden_units": 8, "eta": 1.5, "name": "psrg"},
    {"activation": "tanh", "shared_initializer": "glorot_uniform", "kernel_initializer": "he_normal",
     "output_initializer": keras.initializers.RandomNormal(stddev=0.01, seed=3),
     "kernel_regularizer": keras.regularizers.L2(1e-4)},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(PSRG(**kwargs))
    for key in ("hidden_units", "eta"):
        if key in kwargs:
            assert getattr(clone, key) == kwargs[key]
    assert clone([np.ones((2, 3, 4), np.float32), np.ones((2, 2), np.float32)]).shape == (2, 3, 4)


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    seq_in = keras.Input(shape=(None, 4), name="sequence")  # T unknown until called
    dom_in = keras.Input(shape=(3,), name="domain_features")
    layer = PSRG(hidden_units=5, eta=2.5, name="psrg")
    model = keras.Model({"sequence": seq_in, "domain_features": dom_in}, layer([seq_in, dom_in]))
    randomize(layer)
    rng = np.random.default_rng(0)
    inputs = {"sequence": rng.normal(size=(3, 6, 4)).astype(np.float32),
              "domain_features": rng.normal(size=(3, 3)).astype(np.float32)}
    layer_checks.assert_same_after_reload_in_fresh_process(model, inputs, tmp_path,
                                                           modules=["mdr_keras.layers.psrg"])


# ------------------------------------------------------------------ 4. bad arguments
@pytest.mark.parametrize("kwargs", [
    {"hidden_units": 0}, {"hidden_units": -1}, {"hidden_units": 2.5}, {"hidden_units": True},
    {"eta": 0}, {"eta": -1.0}, {"eta": "2"}, {"eta": True},
    {"activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        PSRG(**kwargs)


@pytest.mark.parametrize("inputs", [
    [np.ones((2, 4), np.float32), np.ones((2, 3), np.float32)],     # sequence not [B, T, d_S]
    [np.ones((2, 5, 4), np.float32), np.ones((2, 1, 3), np.float32)],  # domain features not [B, d_D]
    [np.ones((2, 5, 4), np.float32)],                                   # domain features missing
])
def test_bad_inputs(inputs):
    with pytest.raises(ValueError, match="Received:"):
        PSRG()(inputs)
