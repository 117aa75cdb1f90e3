"""The layers' plumbing: one seed scheme for kernels, domain routing by hand, the argument and input checks."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers import plumbing as pb


def glorot(seed):
    return keras.initializers.GlorotUniform(seed=seed)


# ------------------------------------------------------------------ kernels: one seed scheme
def test_fresh_initializer_moves_the_seed_by_1000_per_kernel():
    copy = pb.fresh_initializer(glorot(7), 3)
    assert copy.get_config()["seed"] == 3007  # 7 + 1000 * 3
    np.testing.assert_array_equal(copy((4, 5)), glorot(3007)((4, 5)))
    # An unseeded initialiser is copied (it draws its own seed); a plain function is kept as is.
    unseeded = keras.initializers.GlorotUniform()
    assert pb.fresh_initializer(unseeded, 1) is not unseeded
    assert pb.fresh_initializer(pb.fresh_initializer, 1) is pb.fresh_initializer


@pytest.mark.parametrize("shape, stacked_axes", [((3, 4, 5), 1), ((2, 3, 4, 5), 2), ((4, 5), 0)])
def test_per_domain_initialises_each_slice_with_seed_plus_i(shape, stacked_axes):
    values = pb.per_domain(glorot(7), stacked_axes)(shape).numpy()
    assert values.shape == shape
    slices = values.reshape((-1,) + shape[stacked_axes:])
    for i, got in enumerate(slices):  # slice i (row-major over the stacked axes): seed 7 + i
        np.testing.assert_array_equal(got, glorot(7 + i)(shape[stacked_axes:]))
    if len(slices) > 1:  # the stacked axes do not count in the fan: glorot's limit is that of a [4, 5] matrix
        assert np.abs(values).max() <= np.sqrt(6 / (4 + 5))


def test_kernels_numbers_a_layers_kernels_in_the_order_made():
    layer = keras.layers.Layer()
    kernel = pb.Kernels(layer, glorot(7), keras.regularizers.L2(0.1))
    first = kernel("first", (4, 5))
    stacked = kernel("stacked", (2, 4, 5), stacked_axes=1)
    ones = kernel("ones", (2, 3), initializer="ones")  # another initialiser still counts (3rd)
    fourth = kernel("fourth", (4, 5))
    np.testing.assert_array_equal(first, glorot(1007)((4, 5)))  # 7 + 1000 * 1
    np.testing.assert_array_equal(stacked[0], glorot(2007)((4, 5)))  # 7 + 1000 * 2 + slice 0
    np.testing.assert_array_equal(stacked[1], glorot(2008)((4, 5)))  # ... + slice 1
    np.testing.assert_array_equal(ones, np.ones((2, 3)))
    np.testing.assert_array_equal(fourth, glorot(4007)((4, 5)))
    assert [w.name.split(":")[0] for w in layer.weights] == ["first", "stacked", "ones", "fourth"]
    assert len(layer.losses) == 4  # every kernel is regularised


# ------------------------------------------------------------------ domain routing
def test_per_domain_dense_by_hand():
    h = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    kernel = np.array([np.eye(2), [[0.0, 1.0], [1.0, 0.0]]], np.float32)  # domain 0: identity, domain 1: swap
    bias = np.array([[0.0, 0.0], [10.0, 20.0]], np.float32)
    out = pb.per_domain_dense(h, kernel, bias, tf.constant([1, 0]))
    # row 0 through domain 1: [2, 1] + [10, 20] = [12, 21];  row 1 through domain 0: [3, 4]
    np.testing.assert_allclose(out, [[12.0, 21.0], [3.0, 4.0]])


def test_domain_indices():
    index = pb.domain_indices(tf.constant([[2], [0]], tf.int64), 3)
    assert index.dtype == tf.int32
    np.testing.assert_array_equal(index, [2, 0])
    with pytest.raises(tf.errors.InvalidArgumentError):
        pb.domain_indices(tf.constant([0, 3]), 3)
    with pytest.raises(tf.errors.InvalidArgumentError):
        pb.domain_indices(tf.constant([-1]), 3)
    with pytest.raises(ValueError, match="Received: domain.shape"):
        pb.domain_indices(tf.zeros([2, 1, 1], tf.int32), 3)


# ------------------------------------------------------------------ argument checks
def test_checks_return_the_normalised_value():
    assert pb.check_int("n", np.int64(3)) == 3 and type(pb.check_int("n", np.int64(3))) is int
    assert pb.check_int("n", None, none_ok=True) is None
    assert pb.check_int("n", 0, low=0) == 0
    assert pb.check_units("u", (4, np.int32(2))) == [4, 2]
    assert pb.check_units("u", (), allow_empty=True) == []
    assert pb.check_units("u", None, none_ok=True) is None
    assert pb.check_real("r", 1) == 1.0 and isinstance(pb.check_real("r", 1), float)
    assert pb.check_bool("b", False) is False
    assert pb.check_choice("c", None, (None, "a")) is None
    assert pb.check_activation("a", None, none_ok=True) is None
    assert pb.check_activation("a", "relu") is keras.activations.relu
    assert pb.is_int(3) and not pb.is_int(True) and not pb.is_int(3.0)


@pytest.mark.parametrize("check, message", [
    (lambda: pb.check_int("num_domains", 0), r"`num_domains` must be an int >= 1. Received: num_domains=0"),
    (lambda: pb.check_int("n", True), r"Received: n=True"),
    (lambda: pb.check_int("n", 2.5, none_ok=True), r"must be None or an int >= 1. Received: n=2.5"),
    (lambda: pb.check_int("chunk_size", 9, high=8), r"`chunk_size` must be an int in \[1, 8\]. Received: chunk_size=9"),
    (lambda: pb.check_units("units", []), r"`units` must be a non-empty list of positive ints. Received: units=\[\]"),
    (lambda: pb.check_units("units", [4, 0], allow_empty=True), r"must be a list of positive ints. Received"),
    (lambda: pb.check_units("units", 4, none_ok=True), r"positive ints or None. Received: units=4"),
    (lambda: pb.check_real("dropout", 1.0, 0, 1, high_open=True),
     r"`dropout` must be in \[0, 1\). Received: dropout=1.0"),
    (lambda: pb.check_real("eta", 0, 0, low_open=True), r"`eta` must be > 0. Received: eta=0"),
    (lambda: pb.check_real("l2", -1, 0), r"`l2` must be >= 0. Received: l2=-1"),
    (lambda: pb.check_real("momentum", float("nan"), 0, 1), r"`momentum` must be in \[0, 1\]. Received: momentum=nan"),
    (lambda: pb.check_real("x", True, 0), r"Received: x=True"),
    (lambda: pb.check_bool("dsbn", 1), r"`dsbn` must be a bool. Received: dsbn=1"),
    (lambda: pb.check_choice("mode", "x", ("a", "b")), r"`mode` must be one of \('a', 'b'\). Received: mode='x'"),
    (lambda: pb.check_activation("activation", "nope"), r"must be a Keras activation. Received: activation='nope'"),
])
def test_check_errors_name_the_argument(check, message):
    with pytest.raises(ValueError, match=message):
        check()


def test_input_checks_name_the_layer_and_the_inputs():
    layer = keras.layers.Dense(1)
    assert pb.input_list(layer, [1, 2], ("q", "s", "mask"), optional=1) == [1, 2]
    with pytest.raises(ValueError, match=r"Dense expects inputs \[q, s, mask\] or \[q, s\]. Received: inputs=\[1\]"):
        pb.input_list(layer, [1], ("q", "s", "mask"), optional=1)
    shapes = pb.input_shapes(layer, [(None, 3), [None]], ("x", "domain"))
    assert shapes == [tf.TensorShape([None, 3]), tf.TensorShape([None])]
    with pytest.raises(ValueError, match=r"expects inputs \[x, domain\]. Received: input_shape="):
        pb.input_shapes(layer, tf.TensorShape([None, 3]), ("x", "domain"))  # a single input
    assert pb.last_dim("x", (None, 5), "[B, F]") == 5
    with pytest.raises(ValueError, match=r"`x` must be \[B, F\] with a known last dim. Received: x.shape="):
        pb.last_dim("x", (None, 2, 5), "[B, F]")


def test_one_or_two():
    x = tf.zeros([2, 3])
    assert pb.one_or_two(x, "[x, domain]")[1] is None
    assert pb.one_or_two([x, 1], "[x, domain]") == (x, 1)
    assert pb.one_or_two((None, 3), "[x, domain]", shapes=True) == (tf.TensorShape([None, 3]), None)
    assert pb.one_or_two([(None, 3), (None,)], "[x, domain]", shapes=True)[1] == tf.TensorShape([None])
    with pytest.raises(ValueError, match=r"Expected inputs \[x, domain\]. Received: 3 inputs"):
        pb.one_or_two([x, x, x], "[x, domain]")


def test_kernel_config():
    layer = keras.layers.Layer()
    layer.kernel_initializer, layer.kernel_regularizer = glorot(3), None
    config = pb.kernel_config(layer)
    assert config["kernel_regularizer"] is None
    assert keras.initializers.deserialize(config["kernel_initializer"]).get_config()["seed"] == 3
    assert pb.serialize_activation(None) is None and pb.serialize_activation(keras.activations.relu) == "relu"
