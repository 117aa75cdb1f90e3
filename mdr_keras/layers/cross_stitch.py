"""Cross-Stitch multi-domain backbone: one MLP column per domain, mixed by cross-stitch units."""
from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domains import domain_indices, is_int, per_domain


def _units(name, value):
    if isinstance(value, (list, tuple)) and value and all(is_int(u) and u > 0 for u in value):
        return [int(u) for u in value]
    raise ValueError(f"`{name}` must be a non-empty list of positive ints. Received: {name}={value!r}")


@keras.utils.register_keras_serializable(package="mdr")
class CrossStitchBackbone(keras.layers.Layer):
    """Cross-Stitch backbone: D MLP columns whose hidden activations are mixed after every layer.

    Every row goes through all D columns (one per domain). After hidden layer `l` (FC -> ReLU) the
    activations `h_1..h_D` of the columns are mixed by a cross-stitch unit, a learned `D x D`
    matrix `alpha^l` (Misra et al.'s cross-stitch unit, generalised from 2 to D tasks):

        h~_d = sum_e alpha^l[d, e] h_e

    and the mixed activations feed the next layer of each column. The output is the last (linear)
    layer of the column of the row's domain `d`. `alpha^l` is one scalar per pair of columns
    (Misra's per-layer variant, not per channel) and starts at `self_weight` on the diagonal and
    `(1 - self_weight) / (D - 1)` elsewhere (a convex combination; Misra initialises 2 tasks at
    (0.9, 0.1)); with D = 1 it starts at 1. Misra also scales the learning rate of the
    cross-stitch units (x 10^2 - 10^3); that belongs to the optimiser and is not done here.

    The columns are stacked kernels `[D, in, out]` (all columns in one `einsum`). Rows of domain `d`
    reach the other columns only through the cross-stitch units: with `alpha` the identity the
    columns are D independent MLPs (domain `j`'s column then gets zero gradient from other domains'
    rows); the output layer of column `j` never gets a gradient from rows of other domains.

    Parameter count (F inputs, widths u_1..u_n): `D (F u_1 + ... + u_{n-1} u_n) + (n - 1) D^2` plus
    biases. E.g. F = 160, D = 3 (trainable): `units=(24, 32)` 14.0k, about an MLP (64, 32) (12.4k);
    `units=(160, 32)` 92.7k, about `ADIBackbone` with the retrieval model's defaults (96.6k).

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        units: widths of each column's layers; the last layer is linear and its width is the
            output dim. Default `(64, 32)`.
        self_weight: initial diagonal of the cross-stitch matrices, in [0, 1]. Default 0.9.
        dropout: dropout rate in [0, 1) after every hidden (ReLU) layer, before the cross-stitch
            unit. Default 0.
        output_activation: optional activation of the output layer. Default None (linear).
        kernel_initializer: initialiser of the column kernels, applied to each column's slice on its
            own. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of the column kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[x, domain, domain_embedding]`: `x` float `[B, F]`, the concatenated feature
            embeddings (the domain embedding is one of them); `domain` int `[B]` or `[B, 1]` in
            `[0, num_domains)` (out-of-range values fail an assertion, outside XLA);
            `domain_embedding` float `[B, e]`, unused (it is already part of `x`).
        training: Python bool or bool tensor, the dropout switch.

    Returns:
        Float `[B, units[-1]]`.

    Reference:
        Misra et al., "Cross-stitch Networks for Multi-task Learning", CVPR 2016, sec. 3 (the
        cross-stitch unit, eq. 1; its initialisation and learning rate); the Cross-Stitch baseline of
        Jiang et al., "Adaptive Domain Interest Network for Multi-domain Recommendation", CIKM 2022,
        sec. 5.1.2.
    """

    def __init__(self, num_domains, units=(64, 32), self_weight=0.9, dropout=0.0, output_activation=None,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not is_int(num_domains) or num_domains < 1:
            raise ValueError(f"`num_domains` must be an int >= 1. Received: num_domains={num_domains!r}")
        self.units = _units("units", units)
        if isinstance(self_weight, bool) or not isinstance(self_weight, numbers.Real) or not 0 <= self_weight <= 1:
            raise ValueError(f"`self_weight` must be in [0, 1]. Received: self_weight={self_weight!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        try:
            self.output_activation = None if output_activation is None else keras.activations.get(output_activation)
        except ValueError as error:
            raise ValueError("`output_activation` must be None or a Keras activation. "
                             f"Received: output_activation={output_activation!r}") from error
        self.num_domains = int(num_domains)
        self.self_weight = float(self_weight)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self._dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def _kernel(self, name, shape):
        """A stacked kernel from a fresh copy of `kernel_initializer` (seed + 1000 n when seeded: an initialiser
        instance gives the same values on every call), each column's slice initialised on its own."""
        init = self.kernel_initializer
        if isinstance(init, keras.initializers.Initializer):
            config = init.get_config()
            self._kernels_made = getattr(self, "_kernels_made", 0) + 1
            if config.get("seed") is not None:
                config["seed"] += 1000 * self._kernels_made
            init = type(init).from_config(config)
        return self.add_weight(name=name, shape=shape, initializer=per_domain(init),
                               regularizer=self.kernel_regularizer)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
            raise ValueError("CrossStitchBackbone expects inputs [x, domain, domain_embedding]. "
                             f"Received: input_shape={input_shape}")
        x_shape = tf.TensorShape(input_shape[0])
        if x_shape.rank != 2 or x_shape[-1] is None:
            raise ValueError(f"`x` must be [batch, features] with known features. Received: x.shape={x_shape}")
        D, fan_in = self.num_domains, int(x_shape[-1])
        off = (1.0 - self.self_weight) / (D - 1) if D > 1 else 0.0
        stitch_init = np.full((D, D), off) + np.eye(D) * ((self.self_weight if D > 1 else 1.0) - off)
        self.column_kernels, self.column_biases, self.cross_stitch = [], [], []
        for i, units in enumerate(self.units):
            self.column_kernels.append(self._kernel(f"column_kernel_{i}", (D, fan_in, units)))
            self.column_biases.append(self.add_weight(name=f"column_bias_{i}", shape=(D, units), initializer="zeros"))
            if i < len(self.units) - 1:
                self.cross_stitch.append(self.add_weight(
                    name=f"cross_stitch_{i}", shape=(D, D), initializer=keras.initializers.Constant(stitch_init)))
            fan_in = units
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, domain = inputs[0], inputs[1]
        h = tf.cast(tf.convert_to_tensor(x), self.compute_dtype)  # [B, F], then [B, D, units] per column
        index = domain_indices(domain, self.num_domains)
        for i, (kernel, bias) in enumerate(zip(self.column_kernels, self.column_biases)):
            h = tf.einsum("bi,dio->bdo" if i == 0 else "bdi,dio->bdo", h, kernel) + bias
            if i < len(self.units) - 1:
                h = tf.nn.relu(h)
                if self.dropout:
                    h = self._dropout(h, training=training)
                h = tf.einsum("de,beu->bdu", self.cross_stitch[i], h)  # the cross-stitch unit
        h = tf.gather(h, index, axis=1, batch_dims=1)  # the row's own domain's column
        return h if self.output_activation is None else self.output_activation(h)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([tf.TensorShape(input_shape[0])[0], self.units[-1]])

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains,
            "units": list(self.units),
            "self_weight": self.self_weight,
            "dropout": self.dropout,
            "output_activation": None if self.output_activation is None
            else keras.activations.serialize(self.output_activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": None if self.kernel_regularizer is None
            else keras.regularizers.serialize(self.kernel_regularizer),
        })
        return config
