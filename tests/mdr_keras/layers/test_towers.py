"""Tower and MLPBackbone: pooling by hand, config round trips."""
import numpy as np
import pytest
import tensorflow as tf

from mdr_keras.layers.towers import MLPBackbone, Tower
from tests.mdr_keras import layer_checks


def identity_backbone():
    layer = MLPBackbone([3])
    layer.build(None)
    layer([tf.zeros([1, 3]), None, None])
    layer.set_weights([np.eye(3, dtype=np.float32), np.zeros(3, np.float32)])
    return layer


def test_sequence_mean_over_real_positions_by_hand():
    tower = Tower(["a"], ["h"], identity_backbone(), normalize=False)
    out = tower({"a": tf.constant([[1.0]]), "h": tf.constant([[[2.0, 4.0], [4.0, 8.0], [0.0, 0.0]]]),
                 "domain_index": tf.constant([0]), "domain": tf.zeros([1, 2])})
    # a = 1; mean of the two real positions: [(2 + 4) / 2, (4 + 8) / 2] = [3, 6]
    np.testing.assert_allclose(out, [[1.0, 3.0, 6.0]])
    unit = Tower(["a"], ["h"], identity_backbone())({"a": tf.constant([[1.0]]),
                                                    "h": tf.constant([[[2.0, 4.0], [4.0, 8.0], [0.0, 0.0]]]),
                                                    "domain_index": tf.constant([0]), "domain": tf.zeros([1, 2])})
    np.testing.assert_allclose(unit, [[1 / np.sqrt(46), 3 / np.sqrt(46), 6 / np.sqrt(46)]], rtol=1e-6)


@pytest.mark.parametrize("units", [[4], [8, 2]])
def test_shapes_and_config(units):
    tower = Tower(["a", "b"], [], MLPBackbone(units))
    out = tower({"a": tf.ones([5, 2]), "b": tf.ones([5, 3]), "domain_index": tf.zeros([5], tf.int64),
                 "domain": tf.ones([5, 2])})
    assert out.shape == (5, units[-1])
    clone = layer_checks.assert_config_round_trip(tower)
    assert isinstance(clone.backbone, MLPBackbone)


def test_output_activation_applies_to_the_last_layer_only():
    layer = MLPBackbone([2, 2], output_activation="tanh")
    layer([tf.zeros([1, 2]), None, None])
    eye, zero = np.eye(2, dtype=np.float32), np.zeros(2, np.float32)
    layer.set_weights([eye, zero, -eye, zero])
    # hidden relu([-1, 3]) = [0, 3]; last layer tanh(-[0, 3]) = [0, tanh(-3)] (tanh on the hidden layer: -0.76, 0.995)
    np.testing.assert_allclose(layer([tf.constant([[-1.0, 3.0]]), None, None]), [[0.0, np.tanh(-3.0)]], rtol=1e-6)
    np.testing.assert_allclose(identity_backbone()([tf.constant([[-1.0, 3.0, 0.0]]), None, None]), [[-1.0, 3.0, 0.0]])
    clone = layer_checks.assert_config_round_trip(layer)
    assert clone.get_config()["output_activation"] == "tanh"


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: output_activation="):
        MLPBackbone([2], output_activation="wiggle")
    with pytest.raises(ValueError, match="Received: features="):
        Tower([], [], MLPBackbone([2]))
    with pytest.raises(ValueError, match="Received: backbone=None"):
        Tower(["a"])
    with pytest.raises(ValueError, match="Received: units="):
        MLPBackbone([])
    with pytest.raises(ValueError, match="Received: dropout="):
        MLPBackbone([2], dropout=1.0)
