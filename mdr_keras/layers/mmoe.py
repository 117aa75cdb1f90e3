"""MMoE multi-domain backbone: shared experts, one softmax gate and one tower per domain."""
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
class MMoEBackbone(keras.layers.Layer):
    """Multi-gate Mixture-of-Experts backbone, one gate and one tower per domain.

    For a row of domain `d` with features `x` (MMoE eq. 3-5, the tasks being the domains):

        f_k(x)   = MLP_k(x)                          K experts shared by all domains (all layers ReLU)
        g^d(x)   = softmax(W_g^d x)                   the gate of domain d, K weights summing to 1
        E        = Tower^d(sum_k g^d(x)_k f_k(x))     (ReLU hidden layers, linear last layer)

    The gate has no bias, as eq. 5 writes it. In multi-task MMoE every sample feeds every task's
    tower; here a row belongs to one domain, so only its own domain's gate and tower are used (all
    D gates / towers are computed in one `einsum` and each row keeps its own domain's slice, as in
    `ADIBackbone`): the gate and tower of domain `j` get exactly zero gradient from other domains'
    rows, the experts learn from all rows. Experts, gates and towers are stacked kernels
    (`[K, in, out]`, `[D, F, K]`, `[D, in, out]`). The gate softmax runs in float32.

    Parameter count (F inputs, expert widths e_1..e_n, tower widths t_1..t_m):
    `K (F e_1 + ... + e_{n-1} e_n) + D F K + D (e_n t_1 + ... + t_{m-1} t_m)` plus biases. E.g.
    F = 160, D = 3 (trainable): `num_experts=4, expert_units=(16,), tower_units=(32,)` 13.9k, about
    an MLP (64, 32) (12.4k); `num_experts=4, expert_units=(96,), tower_units=(64, 32)` 88.6k, about
    `ADIBackbone` with the retrieval model's defaults (96.6k). ADI sec. 5.1.4 matches budgets by
    D + 1 experts of the size of ADI's networks: `num_experts=4, expert_units=(64,)`.

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        num_experts: number of shared experts K (>= 1). Default 4.
        expert_units: widths of each expert's layers (all ReLU). Default `(64,)`.
        tower_units: widths of each domain's tower; the last layer is linear and its width is the
            output dim. Default `(32,)`.
        dropout: dropout rate in [0, 1) after every hidden (ReLU) layer. Default 0.
        output_activation: optional activation of the output layer. Default None (linear).
        kernel_initializer: initialiser of the kernels (experts, gates, towers), applied to each
            expert's / domain's slice on its own. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of the kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[x, domain, domain_embedding]`: `x` float `[B, F]`, the concatenated feature
            embeddings (the domain embedding is one of them); `domain` int `[B]` or `[B, 1]` in
            `[0, num_domains)` (out-of-range values fail an assertion, outside XLA);
            `domain_embedding` float `[B, e]`, unused (it is already part of `x`).
        training: Python bool or bool tensor, the dropout switch.

    Returns:
        Float `[B, tower_units[-1]]`. Also: `gate_weights(inputs)` gives each row's gate `[B, K]`.

    Reference:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
        Mixture-of-Experts", KDD 2018, sec. 4.2 eq. 3-5; the MMoE baseline of Jiang et al.,
        "Adaptive Domain Interest Network for Multi-domain Recommendation", CIKM 2022, sec. 5.1.2,
        5.1.4.
    """

    def __init__(self, num_domains, num_experts=4, expert_units=(64,), tower_units=(32,), dropout=0.0,
                 output_activation=None, kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if not is_int(num_domains) or num_domains < 1:
            raise ValueError(f"`num_domains` must be an int >= 1. Received: num_domains={num_domains!r}")
        if not is_int(num_experts) or num_experts < 1:
            raise ValueError(f"`num_experts` must be an int >= 1. Received: num_experts={num_experts!r}")
        self.expert_units = _units("expert_units", expert_units)
        self.tower_units = _units("tower_units", tower_units)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        try:
            self.output_activation = None if output_activation is None else keras.activations.get(output_activation)
        except ValueError as error:
            raise ValueError("`output_activation` must be None or a Keras activation. "
                             f"Received: output_activation={output_activation!r}") from error
        self.num_domains = int(num_domains)
        self.num_experts = int(num_experts)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self._dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def _kernel(self, name, shape):
        """A stacked kernel from a fresh copy of `kernel_initializer` (seed + 1000 n when seeded: an initialiser
        instance gives the same values on every call), each slice `shape[1:]` initialised on its own."""
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
            raise ValueError("MMoEBackbone expects inputs [x, domain, domain_embedding]. "
                             f"Received: input_shape={input_shape}")
        x_shape = tf.TensorShape(input_shape[0])
        if x_shape.rank != 2 or x_shape[-1] is None:
            raise ValueError(f"`x` must be [batch, features] with known features. Received: x.shape={x_shape}")
        D, K, fan_in = self.num_domains, self.num_experts, int(x_shape[-1])
        self.gate_kernel = self._kernel("gate_kernel", (D, fan_in, K))
        self.expert_kernels, self.expert_biases = [], []
        for i, units in enumerate(self.expert_units):
            self.expert_kernels.append(self._kernel(f"expert_kernel_{i}", (K, fan_in, units)))
            self.expert_biases.append(self.add_weight(name=f"expert_bias_{i}", shape=(K, units), initializer="zeros"))
            fan_in = units
        self.tower_kernels, self.tower_biases = [], []
        for i, units in enumerate(self.tower_units):
            self.tower_kernels.append(self._kernel(f"tower_kernel_{i}", (D, fan_in, units)))
            self.tower_biases.append(self.add_weight(name=f"tower_bias_{i}", shape=(D, units), initializer="zeros"))
            fan_in = units
        super().build(input_shape)

    def _hidden(self, z, training):
        h = tf.nn.relu(z)
        return self._dropout(h, training=training) if self.dropout else h

    def _gate(self, x, index):
        """Eq. 5: softmax(W_g^d x) of each row's domain d, [B, K] (softmax in float32)."""
        logits = tf.einsum("bi,dik->bdk", x, tf.cast(self.gate_kernel, x.dtype))  # all D gates, then the row's
        logits = tf.gather(logits, index, axis=1, batch_dims=1)
        return tf.cast(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), x.dtype)

    def gate_weights(self, inputs):
        """Each row's gate `[B, K]` (rows sum to 1) for `inputs = [x, domain, ...]`."""
        if not self.built:
            raise ValueError("Call the layer on [x, domain, domain_embedding] before `gate_weights`. "
                             "Received: an unbuilt layer")
        x = tf.cast(tf.convert_to_tensor(inputs[0]), self.compute_dtype)
        return self._gate(x, domain_indices(inputs[1], self.num_domains))

    def call(self, inputs, training=None):
        x, domain = inputs[0], inputs[1]
        x = tf.cast(tf.convert_to_tensor(x), self.compute_dtype)
        index = domain_indices(domain, self.num_domains)
        h = x
        for i, (kernel, bias) in enumerate(zip(self.expert_kernels, self.expert_biases)):
            h = self._hidden(tf.einsum("bi,kio->bko" if i == 0 else "bki,kio->bko", h, kernel) + bias, training)
        h = tf.einsum("bk,bku->bu", self._gate(x, index), h)  # eq. 4: the gate-weighted sum of the experts
        last = len(self.tower_units) - 1
        for i, (kernel, bias) in enumerate(zip(self.tower_kernels, self.tower_biases)):
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
            "num_experts": self.num_experts,
            "expert_units": list(self.expert_units),
            "tower_units": list(self.tower_units),
            "dropout": self.dropout,
            "output_activation": None if self.output_activation is None
            else keras.activations.serialize(self.output_activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": None if self.kernel_regularizer is None
            else keras.regularizers.serialize(self.kernel_regularizer),
        })
        return config
