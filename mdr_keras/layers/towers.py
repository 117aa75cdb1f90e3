"""Towers: feature embeddings in, one embedding out (the backbone decides how domains matter)."""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import check_activation, check_real, check_units, serialize_activation


@keras.utils.register_keras_serializable(package="mdr")
class MLPBackbone(keras.layers.Layer):
    """A plain MLP over the concatenated features: the YouTube-DNN baseline (one network for all domains).

    Args:
        units: hidden and output sizes.
        dropout: dropout rate after hidden layers.
        output_activation: activation of the last layer. Default None (linear); a ranker with
            D3's head on this backbone ends it in a ReLU, as its hidden layers.

    Call arguments:
        inputs: `[x, domain, domain_embedding]`; only x is used (the domain embedding is already one
            of the features of x, so the baseline sees the same inputs as ADI).
        training: dropout switch.

    Reference:
        Covington et al., "Deep Neural Networks for YouTube Recommendations", RecSys 2016.
    """

    def __init__(self, units: Sequence[int] = (64, 32), dropout: float = 0.0, output_activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = check_units("units", units)
        self.dropout = check_real("dropout", dropout, 0, 1, high_open=True)
        self.output_activation = check_activation("output_activation", output_activation, none_ok=True)
        self._dense = [keras.layers.Dense(u, activation="relu" if i < len(self.units) - 1 else self.output_activation,
                                          name=f"dense_{i}") for i, u in enumerate(self.units)]
        self._dropout = keras.layers.Dropout(self.dropout)

    def call(self, inputs, training=None):
        x = inputs[0]
        for i, layer in enumerate(self._dense):
            x = layer(x)
            if i < len(self._dense) - 1 and self.dropout:
                x = self._dropout(x, training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"units": list(self.units), "dropout": self.dropout,
                       "output_activation": serialize_activation(self.output_activation)})
        return config


@keras.utils.register_keras_serializable(package="mdr")
class Tower(keras.layers.Layer):
    """One side of a two-tower model: concatenated feature embeddings -> backbone -> embedding.

    Args:
        features: names of the scalar / pooled feature embeddings to concatenate (eq. 7).
        sequence_features: names of sequence embeddings, mean-pooled over their non-padding
            positions (padding embeds to zero; `hist_len` counts the real positions).
        backbone: a layer called as `backbone([x, domain, domain_embedding], training)`.
        domain_feature: the embedding of the domain indicator (f_domain); None for a domain-blind
            tower (its backbone gets an empty domain embedding).
        normalize: L2-normalize the output (dot products become cosines).

    Call arguments:
        inputs: dict of feature embeddings (from `SharedEmbedding`) plus the index tensors
            `domain` (key `domain_index`) and `hist_len`.
        training: passed to the backbone.

    Returns:
        [B, output_dim] embeddings.
    """

    def __init__(self, features: Sequence[str], sequence_features: Sequence[str] = (), backbone=None,
                 domain_feature: Optional[str] = "domain", normalize: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not features:
            raise ValueError(f"A tower needs at least one feature. Received: features={list(features)}")
        if backbone is None:
            raise ValueError("A tower needs a backbone. Received: backbone=None")
        self.features = list(features)
        self.sequence_features = list(sequence_features)
        self.backbone = keras.layers.deserialize(backbone) if isinstance(backbone, dict) else backbone
        self.domain_feature = domain_feature
        self.normalize = bool(normalize)

    @property
    def field_names(self):
        """The features whose embeddings `x` concatenates, in order (`features`, then the pooled sequences)."""
        return self.features + self.sequence_features

    def backbone_inputs(self, inputs):
        """`[x, domain, domain_embedding]`, what the backbone reads for the embeddings `inputs` (eq. 7)."""
        parts = [inputs[n] for n in self.features]
        for n in self.sequence_features:
            seq = inputs[n]
            count = tf.reduce_sum(tf.cast(tf.reduce_any(tf.not_equal(seq, 0.0), axis=-1), seq.dtype), axis=1)
            parts.append(tf.math.divide_no_nan(tf.reduce_sum(seq, axis=1), count[:, tf.newaxis]))
        x = tf.concat(parts, axis=-1)
        # A domain-blind tower (domain_feature=None) hands an empty domain embedding to its backbone.
        domain_embedding = x[:, :0] if self.domain_feature is None else inputs[self.domain_feature]
        return [x, inputs["domain_index"], domain_embedding]

    def domain_attention_weights(self, inputs):
        """The backbone's adaptation weights `{key: [B, F]}` (`ADIBackbone.domain_attention_weights`, ADI
        Fig. 5) for the embeddings `inputs`; `F` units, `len(field_names)` equal fields. Empty for a backbone
        without adaptation layers."""
        weights = getattr(self.backbone, "domain_attention_weights", None)
        return {} if weights is None else weights(self.backbone_inputs(inputs))

    def call(self, inputs, training=None):
        out = self.backbone(self.backbone_inputs(inputs), training=training)
        out = tf.cast(out, tf.float32)  # embeddings leave in float32 under mixed precision (loss, index, serving)
        return tf.math.l2_normalize(out, axis=-1) if self.normalize else out

    def get_config(self):
        config = super().get_config()
        config.update({"features": self.features, "sequence_features": self.sequence_features,
                       "backbone": keras.layers.serialize(self.backbone), "domain_feature": self.domain_feature,
                       "normalize": self.normalize})
        return config
