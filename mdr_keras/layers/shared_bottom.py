"""Shared-Bottom multi-domain backbone: one MLP for every domain, then one tower per domain."""
from __future__ import annotations

import numbers

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domains import domain_indices, is_int, per_domain


def _units(name, value):
    if isinstance(value, (list, tuple)) and value and all(is_int(u) and u > 0 for u in value):
        return [int(u) for u in value]
    raise ValueError(f"`{name}` must be a non-empty list of positive ints. Received: {name}={value!r}")


@keras.utils.register_keras_serializable(package="mdr")
class SharedBottomBackbone(keras.layers.Layer):
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
        tower_units: widths of each domain's tower; the last layer is linear and its width is the
            output dim. Default `(32,)`.
        dropout: dropout rate in [0, 1) after every hidden (ReLU) layer. Default 0.
        output_activation: optional activation of the output layer. Default None (linear).
        kernel_initializer: initialiser of the kernels, applied to each domain's slice on its own.
            Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of the kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[x, domain, domain_embedding]`: `x` float `[B, F]`, the concatenated feature
            embeddings (the domain embedding is one of them); `domain` int `[B]` or `[B, 1]` in
            `[0, num_domains)` (out-of-range values fail an assertion, outside XLA);
            `domain_embedding` float `[B, e]`, unused (it is already part of `x`).
        training: Python bool or bool tensor, the dropout switch.

    Returns:
        Float `[B, tower_units[-1]]`.

    Reference:
        Caruana, "Multitask Learning", Machine Learning 28, 1997 (hard parameter sharing), as the
        Shared-Bottom baseline of Jiang et al., "Adaptive Domain Interest Network for Multi-domain
        Recommendation", CIKM 2022, sec. 5.1.2.
    """

    def __init__(self, num_domains, bottom_units=(64,), tower_units=(32,), dropout=0.0, output_activation=None,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not is_int(num_domains) or num_domains < 1:
            raise ValueError(f"`num_domains` must be an int >= 1. Received: num_domains={num_domains!r}")
        self.bottom_units = _units("bottom_units", bottom_units)
        self.tower_units = _units("tower_units", tower_units)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        try:
            self.output_activation = None if output_activation is None else keras.activations.get(output_activation)
        except ValueError as error:
            raise ValueError("`output_activation` must be None or a Keras activation. "
                             f"Received: output_activation={output_activation!r}") from error
        self.num_domains = int(num_domains)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self._dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def _kernel(self, name, shape, stacked=False):
        """A kernel from a fresh copy of `kernel_initializer` (seed + 1000 n when seeded: an initialiser
        instance gives the same values on every call); a `stacked` kernel's slices are initialised on their own."""
        init = self.kernel_initializer
        if isinstance(init, keras.initializers.Initializer):
            config = init.get_config()
            self._kernels_made = getattr(self, "_kernels_made", 0) + 1
            if config.get("seed") is not None:
                config["seed"] += 1000 * self._kernels_made
            init = type(init).from_config(config)
        return self.add_weight(name=name, shape=shape, initializer=per_domain(init) if stacked else init,
                               regularizer=self.kernel_regularizer)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
            raise ValueError("SharedBottomBackbone expects inputs [x, domain, domain_embedding]. "
                             f"Received: input_shape={input_shape}")
        x_shape = tf.TensorShape(input_shape[0])
        if x_shape.rank != 2 or x_shape[-1] is None:
            raise ValueError(f"`x` must be [batch, features] with known features. Received: x.shape={x_shape}")
        D, fan_in = self.num_domains, int(x_shape[-1])
        self.bottom_kernels, self.bottom_biases = [], []
        for i, units in enumerate(self.bottom_units):
            self.bottom_kernels.append(self._kernel(f"bottom_kernel_{i}", (fan_in, units)))
            self.bottom_biases.append(self.add_weight(name=f"bottom_bias_{i}", shape=(units,), initializer="zeros"))
            fan_in = units
        self.tower_kernels, self.tower_biases = [], []
        for i, units in enumerate(self.tower_units):
            self.tower_kernels.append(self._kernel(f"tower_kernel_{i}", (D, fan_in, units), stacked=True))
            self.tower_biases.append(self.add_weight(name=f"tower_bias_{i}", shape=(D, units), initializer="zeros"))
            fan_in = units
        super().build(input_shape)

    def _hidden(self, z, training):
        h = tf.nn.relu(z)
        return self._dropout(h, training=training) if self.dropout else h

    def call(self, inputs, training=None):
        x, domain = inputs[0], inputs[1]
        h = tf.cast(tf.convert_to_tensor(x), self.compute_dtype)
        index = domain_indices(domain, self.num_domains)
        for kernel, bias in zip(self.bottom_kernels, self.bottom_biases):
            h = self._hidden(tf.matmul(h, kernel) + bias, training)
        last = len(self.tower_units) - 1
        for i, (kernel, bias) in enumerate(zip(self.tower_kernels, self.tower_biases)):
            # all D towers' layer at once ([B, D, out]), each row keeping its own domain's slice
            h = tf.gather(tf.einsum("bi,dio->bdo", h, kernel) + bias, index, axis=1, batch_dims=1)
            if i < last:
                h = self._hidden(h, training)
        return h if self.output_activation is None else self.output_activation(h)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([tf.TensorShape(input_shape[0])[0], self.tower_units[-1]])

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains,
            "bottom_units": list(self.bottom_units),
            "tower_units": list(self.tower_units),
            "dropout": self.dropout,
            "output_activation": None if self.output_activation is None
            else keras.activations.serialize(self.output_activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": None if self.kernel_regularizer is None
            else keras.regularizers.serialize(self.kernel_regularizer),
        })
        return config
