"""MultiQueryGenerator (ADS PCRG, eq. 6-7, chunked-query generation): hand-computed values, the chunk
repetition pattern, the shared-query start, a NumPy reference over a shape grid, config, save / reload,
argument checks."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.pcrg import MultiQueryGenerator
from tests.mdr_keras import layer_checks


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


def built(layer, d_d, d_q, batch=2):
    layer([np.zeros((batch, d_d), np.float32), np.zeros((batch, d_q), np.float32)])
    return layer


def reference(layer, dom, query):
    """Eq. 6-7 in NumPy (float64): chunk t // C serves position t."""
    w = {short_name(v): v.numpy().astype(np.float64) for v in layer.weights}
    hidden = np.maximum(np.concatenate([dom, query], axis=-1) @ w["hidden_kernel"] + w["hidden_bias"], 0.0)
    private = (hidden @ w["output_kernel"] + w["output_bias"]).reshape(len(dom), layer.num_chunks, -1)
    chunk_of = np.arange(layer.sequence_length) // layer.chunk_size
    return private[:, chunk_of] + query[:, None, :]


# ------------------------------------------------------------------ 1. values by hand
def test_chunked_by_hand():
    # T = 5, C = 2 items per chunk -> G = ceil(5 / 2) = 3 chunks over positions {0, 1}, {2, 3}, {4}
    layer = built(MultiQueryGenerator(5, chunk_size=2, hidden_units=1), d_d=1, d_q=1)
    assert layer.num_chunks == 3 and layer.output_kernel.shape == (1, 3)
    assign(layer, hidden_kernel=[[1], [0]], hidden_bias=[0], output_kernel=[[10, 20, 30]], output_bias=[1, 2, 3])
    out = layer([np.array([[1.0], [-1.0]], np.float32), np.array([[0.5], [2.0]], np.float32)]).numpy()[..., 0]
    # row 0: [E_D, E_Q] = [1, 0.5], hidden = relu(1*1 + 0.5*0) = 1, chunks = [10+1, 20+2, 30+3] = [11, 22, 33]
    #   repeat-interleave x2, cut to 5: [11, 11, 22, 22, 33]; + E_Q = 0.5 -> [11.5, 11.5, 22.5, 22.5, 33.5]
    #   (tiling would give [11, 22, 33, 11, 22]: chunks must cover adjacent positions)
    # row 1: hidden = relu(-1) = 0, chunks = b_q2 = [1, 2, 3] -> [1, 1, 2, 2, 3] + 2 = [3, 3, 4, 4, 5]
    np.testing.assert_allclose(out, [[11.5, 11.5, 22.5, 22.5, 33.5], [3, 3, 4, 4, 5]], rtol=1e-6)


def test_one_query_per_position_by_hand():
    layer = built(MultiQueryGenerator(2, hidden_units=2), d_d=1, d_q=2)  # chunk_size 1: G = T = 2
    assign(layer, hidden_kernel=[[1, 0], [0, 1], [0, 0]], hidden_bias=[0, 0],
           output_kernel=[[1, 0, 0, 0], [0, 0, 0, 1]], output_bias=[0, 0, 1, 0])
    out = layer([np.array([[2.0]], np.float32), np.array([[3.0, -1.0]], np.float32)]).numpy()
    # [E_D, E_Q] = [2, 3, -1]; hidden = relu([2, 3]) = [2, 3]
    # E_Q-private = [2*1, 0, 0 + 1, 3*1] = [2, 0, 1, 3] -> query 0 delta (2, 0), query 1 delta (1, 3)
    # + E_Q (3, -1): [[5, -1], [4, 2]]
    np.testing.assert_allclose(out, [[[5.0, -1.0], [4.0, 2.0]]], rtol=1e-6)


def test_starts_as_the_shared_query():
    layer = MultiQueryGenerator(4, chunk_size=3, hidden_units=8)  # zero output layer: E_Q-private = 0
    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, 5)).astype(np.float32)
    out = layer([rng.normal(size=(3, 2)).astype(np.float32), query]).numpy()
    np.testing.assert_array_equal(out, np.repeat(query[:, None], 4, axis=1))


# ------------------------------------------------------------------ 2. shapes, chunk pattern, reference
@pytest.mark.parametrize("t,chunk_size", [(1, 1), (5, 1), (5, 2), (5, 5), (10, 3), (10, 5), (10, 10)])
@pytest.mark.parametrize("d_d,d_q", [(1, 1), (3, 4)])
def test_shapes_chunks_and_reference(t, chunk_size, d_d, d_q):
    batch, hidden = 3, 6
    layer = built(MultiQueryGenerator(t, chunk_size=chunk_size, hidden_units=hidden), d_d=d_d, d_q=d_q)
    g = -(-t // chunk_size)
    assert {short_name(w): tuple(w.shape) for w in layer.weights} == {
        "hidden_kernel": (d_d + d_q, hidden), "hidden_bias": (hidden,),
        "output_kernel": (hidden, g * d_q), "output_bias": (g * d_q,)}
    randomize(layer, seed=t + chunk_size)
    rng = np.random.default_rng(t)
    dom, query = rng.normal(size=(batch, d_d)).astype(np.float32), rng.normal(size=(batch, d_q)).astype(np.float32)
    out = layer([dom, query]).numpy()
    assert out.shape == (batch, t, d_q)
    assert layer.compute_output_shape([tf.TensorShape([None, d_d]), tf.TensorShape([None, d_q])]) == [None, t, d_q]
    np.testing.assert_allclose(out, reference(layer, dom, query), rtol=1e-4, atol=1e-5)
    for pos in range(t):  # adjacent positions of a chunk share a query, different chunks do not
        np.testing.assert_array_equal(out[:, pos], out[:, pos - pos % chunk_size])
        if pos % chunk_size == 0 and pos > 0:
            assert np.abs(out[:, pos] - out[:, pos - 1]).max() > 1e-4


# ------------------------------------------------------------------ 3. config, save / reload
@pytest.mark.parametrize("kwargs", [
    {"sequence_length": 5},
    {"sequence_length": 10, "chunk_size": 5, "hidden_units": 8, "name": "pcrg"},
    {"sequence_length": 7, "chunk_size": 2, "activation": "tanh", "kernel_initializer": "he_normal",
     "output_initializer": keras.initializers.RandomNormal(stddev=0.01, seed=3),
     "kernel_regularizer": keras.regularizers.L2(1e-4)},
])
def test_config_round_trip(kwargs):
    clone = layer_checks.assert_config_round_trip(MultiQueryGenerator(**kwargs))
    for key in ("sequence_length", "chunk_size", "hidden_units"):
        if key in kwargs:
            assert getattr(clone, key) == kwargs[key]
    out = clone([np.ones((2, 3), np.float32), np.ones((2, 4), np.float32)])
    assert out.shape == (2, kwargs["sequence_length"], 4)


def test_save_reload_same_predictions_in_fresh_process(tmp_path):
    dom_in = keras.Input(shape=(3,), name="domain_features")
    query_in = keras.Input(shape=(4,), name="query")
    outputs = {"chunked": MultiQueryGenerator(7, chunk_size=3, hidden_units=5, name="chunked")([dom_in, query_in]),
               "per_position": MultiQueryGenerator(7, hidden_units=5, name="per_position")([dom_in, query_in])}
    model = keras.Model({"domain_features": dom_in, "query": query_in}, outputs)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, MultiQueryGenerator):
            randomize(layer, seed=i)
    rng = np.random.default_rng(0)
    inputs = {"domain_features": rng.normal(size=(3, 3)).astype(np.float32),
              "query": rng.normal(size=(3, 4)).astype(np.float32)}
    layer_checks.assert_same_after_reload_in_fresh_process(model, inputs, tmp_path,
                                                           modules=["mdr_keras.layers.pcrg"])


# ------------------------------------------------------------------ 4. bad arguments
@pytest.mark.parametrize("kwargs", [
    {"sequence_length": 0}, {"sequence_length": 5.0}, {"sequence_length": None}, {"sequence_length": True},
    {"sequence_length": 5, "chunk_size": 0}, {"sequence_length": 5, "chunk_size": 6},
    {"sequence_length": 5, "chunk_size": 2.0},
    {"sequence_length": 5, "hidden_units": 0}, {"sequence_length": 5, "hidden_units": "8"},
    {"sequence_length": 5, "activation": "no_such_activation"},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        MultiQueryGenerator(**kwargs)


@pytest.mark.parametrize("inputs", [
    [np.ones((2, 3), np.float32), np.ones((2, 5, 4), np.float32)],  # query not [B, d_Q]
    [np.ones((2, 1, 3), np.float32), np.ones((2, 4), np.float32)],  # domain features not [B, d_D]
    [np.ones((2, 3), np.float32)],                                   # query missing
])
def test_bad_inputs(inputs):
    with pytest.raises(ValueError, match="Received:"):
        MultiQueryGenerator(5)(inputs)
