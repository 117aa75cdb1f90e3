"""One embedding table per vocabulary, shared by every feature, tower and domain (ADI eq. 6-7)."""
from __future__ import annotations

from typing import Dict

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import check_int, check_real


@keras.utils.register_keras_serializable(package="mdr")
class SharedEmbedding(keras.layers.Layer):
    """Embeds index features with tables shared across towers and domains.

    Features that share a vocabulary share a table (`hist_item_id` looks up the `item_id` table), so
    an item has one embedding whether it is the candidate or in a user's history. In sequences and
    lists index 0 is padding: its embedding is zero, and lists are mean-pooled over their non-padding
    values. A scalar feature's index 0 is an ordinary row (domain 0, bucket 0).

    Args:
        tables: {table name: number of rows}.
        features: {feature name: [table name, mode]}, mode 'scalar' ([B] -> [B, dim]),
            'sequence' ([B, T] -> [B, T, dim], padding rows zero) or 'pooled' ([B, L] -> [B, dim]).
        dim: embedding dimension.
        l2: L2 regularization of the tables.

    Call arguments:
        inputs: dict {feature name: int index tensor}; features not in `features` are ignored.
        training: unused.

    Returns:
        dict {feature name: embedding tensor}.

    Reference:
        ADI (Jiang et al., 2022), eq. 6-7: F_i = EMBED(f_i), tables shared by all domains.
    """

    MODES = ("scalar", "sequence", "pooled")

    def __init__(self, tables: Dict[str, int], features: Dict[str, list], dim: int = 16, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim = check_int("dim", dim)
        self.l2 = check_real("l2", l2, 0)
        for name, rows in tables.items():
            if rows < 1:
                raise ValueError(f"table {name!r} needs >= 1 row. Received: rows={rows}")
        for name, (table, mode) in features.items():
            if table not in tables:
                raise ValueError(f"feature {name!r} uses unknown table {table!r}. Received: tables={sorted(tables)}")
            if mode not in self.MODES:
                raise ValueError(f"feature {name!r}: mode must be one of {self.MODES}. Received: mode={mode!r}")
        self.tables = dict(tables)
        self.features = {k: list(v) for k, v in features.items()}

    def build(self, input_shape):
        reg = keras.regularizers.l2(self.l2) if self.l2 else None
        self._tables = {
            name: self.add_weight(name=f"table_{name}", shape=(rows, self.dim),
                                  initializer=keras.initializers.RandomNormal(stddev=0.05), regularizer=reg)
            for name, rows in self.tables.items()}
        super().build(input_shape)

    def call(self, inputs, training=None):
        out = {}
        for name, idx in inputs.items():
            if name not in self.features:
                continue
            table, mode = self.features[name]
            idx = tf.cast(idx, tf.int32)
            emb = tf.gather(self._tables[table], idx)
            if mode == "scalar":  # index 0 is a real value here (a domain, a bucket)
                out[name] = emb
                continue
            mask = tf.cast(tf.not_equal(idx, 0), emb.dtype)[..., tf.newaxis]
            if mode == "sequence":
                out[name] = emb * mask
            else:
                total = tf.reduce_sum(emb * mask, axis=-2)
                out[name] = tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=-2))
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"tables": dict(self.tables), "features": {k: list(v) for k, v in self.features.items()},
                       "dim": self.dim, "l2": self.l2})
        return config
