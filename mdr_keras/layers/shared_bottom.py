"""Shared-Bottom multi-domain backbone: one MLP for every domain, then one tower per domain."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import DomainTowersBackbone, Kernels, check_units, domain_indices


@keras.utils.register_keras_serializable(package="mdr")
class SharedBottomBackbone(DomainTowersBackbone):
    """Shared-Bottom backbone: a shared MLP, then the tower of the row's domain.

    For a row of domain `d` with features `x`:

        h = MLP_bottom(x)          (every layer FC -> ReLU, shared by all domains)
        E = Tower^(d)(h)           (FC -> ReLU hidden layers, linear last layer)

    Each domain has its own tower (stacked kernels `[D, in, out]`, a layer computed for all D at
    once and each row keeping its own domain's slice, as in `ADIBackbone`); rows of domain `d`
    reach only tower `d`, whose other slices get exactly zero gradient from them.

    Parameter count (F inputs, bottom widths b_1..b_n, tower widths t_1..t_m):
    `F b_1 + ... + D (b_n t_1 + ... + t_{m-1} t_m)` plus biases. E.g. F = 160, D = 3 (trainable):
    `bottom_units=(64,), tower_units=(32,)` 16.5k, about an MLP (64, 32) (12.4k);
    `bottom_units=(256,), tower_units=(64, 32)` 96.8k, about `ADIBackbone` with the retrieval
    model's defaults (96.6k).

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        bottom_units: widths of the shared bottom layers (all ReLU). Default `(64,)`.
        tower_units: widths of each domain's tower over the shared bottom's output; its last width
            is the output dim. Default `(32,)`.
        dropout, output_activation, kernel_initializer, kernel_regularizer, **kwargs: as
            `DomainTowersBackbone`'s.

    Call arguments:
        inputs, training: as `DomainTowersBackbone`'s (`domain_embedding` is unused: it is part of `x`).

    Returns:
        Float `[B, tower_units[-1]]`.

    Reference:
        Caruana, "Multitask Learning", Machine Learning 28, 1997 (hard parameter sharing), as the
        Shared-Bottom baseline of Jiang et al., "Adaptive Domain Interest Network for Multi-domain
        Recommendation", CIKM 2022, sec. 5.1.2.
    """

    def __init__(self, num_domains, bottom_units=(64,), tower_units=(32,), dropout=0.0, output_activation=None,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(num_domains, tower_units=tower_units, dropout=dropout, output_activation=output_activation,
                         kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer, **kwargs)
        self.bottom_units = check_units("bottom_units", bottom_units)

    def build(self, input_shape):
        fan_in = self._features(input_shape)
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        self.bottom_kernels, self.bottom_biases = [], []
        for i, units in enumerate(self.bottom_units):
            self.bottom_kernels.append(kernel(f"bottom_kernel_{i}", (fan_in, units)))
            self.bottom_biases.append(self.add_weight(name=f"bottom_bias_{i}", shape=(units,), initializer="zeros"))
            fan_in = units
        self._build_towers(kernel, fan_in)
        super().build(input_shape)

    def call(self, inputs, training=None):
        h = tf.cast(tf.convert_to_tensor(inputs[0]), self.compute_dtype)
        index = domain_indices(inputs[1], self.num_domains)
        for kernel, bias in zip(self.bottom_kernels, self.bottom_biases):
            h = self._hidden(tf.matmul(h, kernel) + bias, training)
        return self._towers(h, index, training)

    def get_config(self):
        config = super().get_config()
        config["bottom_units"] = list(self.bottom_units)
        return config
