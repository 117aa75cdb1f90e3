"""Cross-Stitch multi-domain backbone: one MLP column per domain, mixed by cross-stitch units."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import DomainBackbone, Kernels, check_real, check_units, domain_indices


@keras.utils.register_keras_serializable(package="mdr")
class CrossStitchBackbone(DomainBackbone):
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
        dropout, output_activation, kernel_initializer, kernel_regularizer, **kwargs: as
            `DomainBackbone`'s (dropout comes before the cross-stitch unit; the kernels are the columns').

    Call arguments:
        inputs, training: as `DomainBackbone`'s (`domain_embedding` is unused: it is part of `x`).

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
        super().__init__(num_domains, dropout=dropout, output_activation=output_activation,
                         kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer, **kwargs)
        self.units = check_units("units", units)
        self.self_weight = check_real("self_weight", self_weight, 0, 1)

    @property
    def output_dim(self):
        return self.units[-1]

    def build(self, input_shape):
        D, fan_in = self.num_domains, self._features(input_shape)
        off = (1.0 - self.self_weight) / (D - 1) if D > 1 else 0.0
        stitch_init = np.full((D, D), off) + np.eye(D) * ((self.self_weight if D > 1 else 1.0) - off)
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        self.column_kernels, self.column_biases, self.cross_stitch = [], [], []
        for i, units in enumerate(self.units):
            self.column_kernels.append(kernel(f"column_kernel_{i}", (D, fan_in, units), stacked_axes=1))
            self.column_biases.append(self.add_weight(name=f"column_bias_{i}", shape=(D, units), initializer="zeros"))
            if i < len(self.units) - 1:
                self.cross_stitch.append(self.add_weight(
                    name=f"cross_stitch_{i}", shape=(D, D), initializer=keras.initializers.Constant(stitch_init)))
            fan_in = units
        super().build(input_shape)

    def call(self, inputs, training=None):
        h = tf.cast(tf.convert_to_tensor(inputs[0]), self.compute_dtype)  # [B, F], then [B, D, units] per column
        index = domain_indices(inputs[1], self.num_domains)
        for i, (kernel, bias) in enumerate(zip(self.column_kernels, self.column_biases)):
            h = tf.einsum("bi,dio->bdo" if i == 0 else "bdi,dio->bdo", h, kernel) + bias
            if i < len(self.units) - 1:
                h = tf.einsum("de,beu->bdu", self.cross_stitch[i], self._hidden(h, training))  # the cross-stitch unit
        return self._output(tf.gather(h, index, axis=1, batch_dims=1))  # the row's own domain's column

    def get_config(self):
        config = super().get_config()
        config.update({"units": list(self.units), "self_weight": self.self_weight})
        return config
