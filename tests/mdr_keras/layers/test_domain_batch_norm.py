"""DomainBatchNormalization (ADI eq. 20): per-domain batch statistics, moving statistics, serialization,
and global statistics under MirroredStrategy."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domain_batch_norm import DomainBatchNormalization
from tests.mdr_keras import layer_checks

EPS = 1e-3


def built_layer(num_domains, units, **kwargs):
    layer = DomainBatchNormalization(num_domains, **kwargs)
    layer.build([tf.TensorShape([None, units]), tf.TensorShape([None])])
    return layer


def test_training_step_computed_by_hand():
    layer = built_layer(3, 2, momentum=0.5, epsilon=EPS)
    gamma = np.array([[1, 2], [3, 1], [1, 1]], np.float32)
    beta = np.array([[0, 1], [-1, 0], [0, 0]], np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    layer.moving_mean.assign([[0, 0], [1, 1], [5, 5]])
    layer.moving_variance.assign([[1, 1], [1, 1], [2, 2]])
    x = np.array([[1, 0], [4, 10], [3, 4], [8, 10]], np.float32)
    domain = np.array([0, 1, 0, 1], np.int32)  # domains interleaved; domain 2 absent
    y = layer([x, domain], training=True).numpy()
    # domain 0 rows [1, 0], [3, 4]:  mean [2, 2],  biased variance [1, 4]
    # domain 1 rows [4, 10], [8, 10]: mean [6, 10], biased variance [4, 0]
    s = np.sqrt
    expected = np.array([
        [1 * (1 - 2) / s(1 + EPS) + 0, 2 * (0 - 2) / s(4 + EPS) + 1],     # d0: gamma [1, 2], beta [0, 1]
        [3 * (4 - 6) / s(4 + EPS) - 1, 1 * (10 - 10) / s(0 + EPS) + 0],  # d1: gamma [3, 1], beta [-1, 0]
        [1 * (3 - 2) / s(1 + EPS) + 0, 2 * (4 - 2) / s(4 + EPS) + 1],
        [3 * (8 - 6) / s(4 + EPS) - 1, 1 * (10 - 10) / s(0 + EPS) + 0],
    ])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    # momentum 0.5: moving = 0.5 * moving + 0.5 * batch
    #   d0 mean 0.5*[0, 0] + 0.5*[2, 2]  = [1, 1];     var 0.5*[1, 1] + 0.5*[1, 4] = [1, 2.5]
    #   d1 mean 0.5*[1, 1] + 0.5*[6, 10] = [3.5, 5.5]; var 0.5*[1, 1] + 0.5*[4, 0] = [2.5, 0.5]
    #   d2 absent: unchanged ([5, 5] and [2, 2])
    np.testing.assert_allclose(layer.moving_mean.numpy(), [[1, 1], [3.5, 5.5], [5, 5]], rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [[1, 2.5], [2.5, 0.5], [2, 2]], rtol=1e-6)
    # the trainable variables are exactly gamma and beta
    assert {v.name.split("/")[-1].split(":")[0] for v in layer.trainable_weights} == {"gamma", "beta"}
    assert {v.name.split("/")[-1].split(":")[0] for v in layer.non_trainable_weights} == {
        "moving_mean", "moving_variance"}


def test_inference_uses_each_domains_moving_statistics():
    layer = built_layer(3, 2, epsilon=EPS, center=False)  # no beta
    layer.gamma.assign([[1, 1], [2, 2], [1, 3]])
    mean = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    var = np.array([[4, 1], [1, 9], [16, 4]], np.float32)
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(var)
    x = np.array([[3, 3], [5, 5], [5, 6], [1, 1]], np.float32)
    domain = np.array([[2], [1], [0], [2]], np.int64)  # [B, 1] int64 also accepted
    s = np.sqrt
    expected = np.array([
        [1 * (3 - 5) / s(16 + EPS), 3 * (3 - 6) / s(4 + EPS)],  # d2
        [2 * (5 - 3) / s(1 + EPS), 2 * (5 - 4) / s(9 + EPS)],   # d1
        [1 * (5 - 1) / s(4 + EPS), 1 * (6 - 2) / s(1 + EPS)],   # d0
        [1 * (1 - 5) / s(16 + EPS), 3 * (1 - 6) / s(4 + EPS)],  # d2
    ])
    np.testing.assert_allclose(layer([x, domain], training=False).numpy(), expected, rtol=1e-5)
    # training=None outside fit -> the learning phase (inference)
    np.testing.assert_allclose(layer([x, domain]).numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)  # inference updates nothing
    np.testing.assert_array_equal(layer.moving_variance.numpy(), var)


def test_sequence_input_uses_all_positions_of_a_domains_rows():
    layer = DomainBatchNormalization(2, momentum=0.0, epsilon=EPS, center=False, scale=False)
    x = np.array([[[1], [3]], [[2], [6]]], np.float32)  # [B=2, T=2, units=1]
    y = layer([x, np.array([0, 1])], training=True).numpy()
    # domain 0 positions 1, 3: mean 2, var 1; domain 1 positions 2, 6: mean 4, var 4
    expected = [[[-1 / np.sqrt(1 + EPS)], [1 / np.sqrt(1 + EPS)]], [[-2 / np.sqrt(4 + EPS)], [2 / np.sqrt(4 + EPS)]]]
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), [[2], [4]])  # momentum 0: the batch statistics
    np.testing.assert_allclose(layer.moving_variance.numpy(), [[1], [4]])


def test_training_as_a_tensor_inside_tf_function():
    layer = built_layer(2, 3, momentum=0.0)
    x = tf.constant(np.random.default_rng(0).normal(size=(6, 3)), tf.float32)
    d = tf.constant([0, 1, 0, 1, 1, 0])

    @tf.function
    def run(training):
        return layer([x, d], training=training)

    infer = run(tf.constant(False)).numpy()
    np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros((2, 3)))
    np.testing.assert_allclose(infer, x.numpy() / np.sqrt(1 + EPS), rtol=1e-5)
    train = run(tf.constant(True)).numpy()
    for k in range(2):  # each domain's output rows have mean 0 and variance ~1 (gamma 1, beta 0)
        rows = train[d.numpy() == k]
        np.testing.assert_allclose(rows.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(layer.moving_mean.numpy()[k], x.numpy()[d.numpy() == k].mean(0), rtol=1e-5)


@pytest.mark.parametrize("num_domains", [1, 3])
@pytest.mark.parametrize("units", [1, 4])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("x_rank,domain_rank", [(2, 1), (2, 2), (3, 1)])
def test_shapes(num_domains, units, batch, x_rank, domain_rank):
    rng = np.random.default_rng(batch)
    x_shape = (batch, units) if x_rank == 2 else (batch, 2, units)
    x = rng.normal(size=x_shape).astype(np.float32)
    domain = rng.integers(0, num_domains, size=(batch,) if domain_rank == 1 else (batch, 1))
    layer = DomainBatchNormalization(num_domains)
    for training in (True, False):
        y = layer([x, domain], training=training)
        assert y.shape == x_shape and y.dtype == tf.float32
        assert np.all(np.isfinite(y.numpy()))
    for v in layer.weights:
        assert v.shape == (num_domains, units)
    assert layer.compute_output_shape([x_shape, domain.shape]) == x_shape


def test_fit_updates_only_the_domains_seen():
    x_in = keras.Input((4,), name="x")
    d_in = keras.Input((), dtype="int32", name="domain")
    layer = DomainBatchNormalization(3, momentum=0.5, name="dsbn")
    model = keras.Model({"x": x_in, "domain": d_in}, keras.layers.Dense(1)(layer([x_in, d_in])))
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(1)
    data = {"x": rng.normal(3.0, 2.0, size=(16, 4)).astype(np.float32), "domain": np.array([0, 1] * 8, np.int32)}
    model.fit(data, rng.normal(size=(16, 1)), batch_size=8, epochs=1, verbose=0)
    mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    assert np.all(mean[:2] != 0) and np.all(var[:2] != 1)
    np.testing.assert_array_equal(mean[2], 0)  # domain 2 never seen: initial moving statistics
    np.testing.assert_array_equal(var[2], 1)
    gamma = layer.gamma.numpy()
    assert np.all(gamma[:2] != 1)
    np.testing.assert_array_equal(gamma[2], 1)  # no gradient reaches an absent domain's gamma


def test_config_round_trip_and_reload_in_a_fresh_process(tmp_path):
    layer = DomainBatchNormalization(3, momentum=0.9, epsilon=1e-4, center=False, name="dsbn")
    clone = layer_checks.assert_config_round_trip(layer)
    assert (clone.num_domains, clone.momentum, clone.epsilon, clone.center, clone.scale) == (3, 0.9, 1e-4, False, True)

    units = 4
    x_in = keras.Input((units,), name="x")
    d_in = keras.Input((), dtype="int32", name="domain")
    bn = DomainBatchNormalization(3, momentum=0.5, name="dsbn")
    model = keras.Model({"x": x_in, "domain": d_in}, bn([x_in, d_in]))
    rng = np.random.default_rng(2)
    bn.gamma.assign(rng.uniform(0.5, 2.0, size=(3, units)))
    bn.beta.assign(rng.normal(size=(3, units)))
    for _ in range(2):  # move the moving statistics away from their initial values
        model({"x": rng.normal(1.0, 3.0, size=(9, units)).astype(np.float32),
               "domain": np.array([0, 1, 2] * 3, np.int32)}, training=True)
    inputs = {"x": rng.normal(size=(6, units)).astype(np.float32), "domain": np.array([2, 0, 1, 1, 0, 2], np.int32)}
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, inputs, tmp_path, modules=["mdr_keras.layers.domain_batch_norm"])


_MIRRORED = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import mdr_contract  # Keras 2 before TensorFlow
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mdr_keras.layers.domain_batch_norm import DomainBatchNormalization

    rng = np.random.default_rng(3)
    units, domains = 3, 4
    x = rng.normal(2.0, 3.0, size=(8, units)).astype(np.float32)
    d = np.array([0, 0, 1, 1, 1, 2, 2, 0], np.int32)  # replica 0: rows 0-3, replica 1: rows 4-7; domain 3 absent
    w = rng.normal(size=(8, units)).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, size=(domains, units)).astype(np.float32)
    beta = rng.normal(size=(domains, units)).astype(np.float32)

    def make():
        layer = DomainBatchNormalization(domains, momentum=0.5)
        layer.build([tf.TensorShape([None, units]), tf.TensorShape([None])])
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        return layer

    def step(layer, x, d, w):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer([x, d], training=True)
            loss = tf.reduce_sum(y * w)
        gx, gg = tape.gradient(loss, [x, layer.gamma])
        return y, gx, gg

    reference = make()  # one device, whole batch
    ref_y, ref_gx, ref_gg = tf.function(lambda: step(reference, tf.constant(x), tf.constant(d), tf.constant(w)))()

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        layer = make()
    part = lambda a: strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(a[4 * ctx.replica_id_in_sync_group: 4 * (ctx.replica_id_in_sync_group + 1)]))
    y, gx, gg = tf.function(lambda a, b, c: strategy.run(step, args=(layer, a, b, c)))(part(x), part(d), part(w))
    local = lambda v: [np.asarray(t).tolist() for t in strategy.experimental_local_results(v)]
    print(json.dumps({
        "y": np.concatenate([np.asarray(t) for t in strategy.experimental_local_results(y)]).tolist(),
        "gx": np.concatenate([np.asarray(t) for t in strategy.experimental_local_results(gx)]).tolist(),
        "gg": np.sum([np.asarray(t) for t in strategy.experimental_local_results(gg)], axis=0).tolist(),
        "moving_mean": layer.moving_mean.numpy().tolist(),
        "moving_variance": layer.moving_variance.numpy().tolist(),
        "local_moving_mean": local(layer.moving_mean),
        "local_moving_variance": local(layer.moving_variance),
        "ref_y": ref_y.numpy().tolist(), "ref_gx": ref_gx.numpy().tolist(), "ref_gg": ref_gg.numpy().tolist(),
        "ref_moving_mean": reference.moving_mean.numpy().tolist(),
        "ref_moving_variance": reference.moving_variance.numpy().tolist(),
        "x": x.tolist(), "d": d.tolist(),
    }))
""")


def test_mirrored_strategy_uses_global_batch_statistics():
    done = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = {k: np.asarray(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    x, d = r["x"], r["d"]
    # Global per-domain statistics of the whole batch; momentum 0.5 from mean 0, variance 1.
    mean = np.array([x[d == k].mean(0) if np.any(d == k) else np.zeros(3) for k in range(4)])
    var = np.array([x[d == k].var(0) if np.any(d == k) else np.ones(3) for k in range(4)])
    expected_mean, expected_var = 0.5 * mean, 0.5 + 0.5 * var
    expected_mean[3], expected_var[3] = 0.0, 1.0  # domain 3 absent from the batch: unchanged
    # The replicas' own statistics differ from the global ones (domain 0 and 1 are on both replicas),
    # so the check below can tell global from per-replica statistics.
    assert not np.allclose(x[:4][d[:4] == 0].mean(0), mean[0], atol=1e-3)
    for key, expected in (("moving_mean", expected_mean), ("moving_variance", expected_var)):
        np.testing.assert_allclose(r["ref_" + key], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r[key], expected, rtol=1e-5, atol=1e-6)
        for replica in r["local_" + key]:  # every replica holds the same (global) values
            np.testing.assert_allclose(replica, expected, rtol=1e-5, atol=1e-6)
    # Outputs and gradients (through the all-reduce) equal those on the whole batch on one device.
    np.testing.assert_allclose(r["y"], r["ref_y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r["gx"], r["ref_gx"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r["gg"], r["ref_gg"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_domains": 0}, "Received: num_domains=0"),
    ({"num_domains": 2.5}, "Received: num_domains=2.5"),
    ({"num_domains": 2, "momentum": 1.5}, "Received: momentum=1.5"),
    ({"num_domains": 2, "momentum": -0.1}, "Received: momentum=-0.1"),
    ({"num_domains": 2, "epsilon": 0.0}, "Received: epsilon=0.0"),
    ({"num_domains": 2, "epsilon": -1e-3}, "Received: epsilon=-0.001"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DomainBatchNormalization(**kwargs)


def test_bad_inputs():
    layer = DomainBatchNormalization(2)
    with pytest.raises(ValueError, match="Received:"):
        layer(np.zeros((2, 3), np.float32))  # no domain
    with pytest.raises(tf.errors.InvalidArgumentError):
        layer([np.zeros((2, 3), np.float32), np.array([0, 2])], training=True)  # domain 2 of 2
