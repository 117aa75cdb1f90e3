"""SharedEmbedding: shared tables, zero padding, mean pooling."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.embedding import SharedEmbedding
from tests.mdr_keras import layer_checks

TABLES = {"item": 5, "domain": 3}
FEATURES = {"item_id": ["item", "scalar"], "hist_item_id": ["item", "sequence"], "tags": ["item", "pooled"],
            "domain": ["domain", "scalar"]}


def make(dim=2):
    layer = SharedEmbedding(TABLES, FEATURES, dim=dim)
    layer.build(None)
    return layer


def test_values_by_hand():
    layer = make()
    item = np.arange(10, dtype=np.float32).reshape(5, 2)  # row r = [2r, 2r + 1]
    layer.set_weights([item, np.ones((3, 2), np.float32)])
    out = layer({"item_id": tf.constant([3]), "hist_item_id": tf.constant([[2, 0]]),
                 "tags": tf.constant([[1, 3, 0]]), "domain": tf.constant([0]), "other": tf.constant([1])})
    assert set(out) == {"item_id", "hist_item_id", "tags", "domain"}
    np.testing.assert_allclose(out["item_id"], [[6, 7]])
    np.testing.assert_allclose(out["hist_item_id"], [[[4, 5], [0, 0]]])  # padding -> zeros
    np.testing.assert_allclose(out["tags"], [[(2 + 6) / 2, (3 + 7) / 2]])  # mean of rows 1 and 3
    np.testing.assert_allclose(out["domain"], [[1, 1]])  # domain 0 is a real row


def test_tables_are_shared():
    layer = make()
    out = layer({"item_id": tf.constant([4]), "hist_item_id": tf.constant([[4]])})
    np.testing.assert_allclose(out["item_id"][0], out["hist_item_id"][0, 0])
    assert len(layer.trainable_weights) == 2


@pytest.mark.parametrize("dim", [1, 8])
@pytest.mark.parametrize("batch, T", [(1, 1), (4, 6)])
def test_shapes(dim, batch, T):
    out = make(dim)({"item_id": tf.zeros([batch], tf.int64), "hist_item_id": tf.zeros([batch, T], tf.int64),
                     "tags": tf.ones([batch, 3], tf.int64)})
    assert out["item_id"].shape == (batch, dim)
    assert out["hist_item_id"].shape == (batch, T, dim)
    assert out["tags"].shape == (batch, dim)


def test_config_round_trip_and_reload_in_fresh_process(tmp_path):
    layer_checks.assert_config_round_trip(SharedEmbedding(TABLES, FEATURES, dim=3, l2=1e-4))
    inputs = {"item_id": keras.Input([], dtype=tf.int64, name="item_id"),
              "hist_item_id": keras.Input([2], dtype=tf.int64, name="hist_item_id")}
    emb = SharedEmbedding(TABLES, FEATURES, dim=3)(inputs)
    model = keras.Model(inputs, {"item": emb["item_id"], "hist": emb["hist_item_id"]})
    layer_checks.assert_same_after_reload_in_fresh_process(
        model, {"item_id": np.array([1, 4]), "hist_item_id": np.array([[1, 0], [2, 3]])}, tmp_path,
        modules=["mdr_keras.layers.embedding"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: dim=0"):
        SharedEmbedding(TABLES, FEATURES, dim=0)
    with pytest.raises(ValueError, match="unknown table 'x'"):
        SharedEmbedding(TABLES, {"f": ["x", "scalar"]})
    with pytest.raises(ValueError, match="Received: mode='flat'"):
        SharedEmbedding(TABLES, {"f": ["item", "flat"]})
