"""MMoE multi-domain backbone: shared experts, one softmax gate and one tower per domain."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import DomainTowersBackbone, Kernels, check_int, check_units, domain_indices


@keras.utils.register_keras_serializable(package="mdr")
class MMoEBackbone(DomainTowersBackbone):
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
        tower_units: widths of each domain's tower over the gate-weighted sum of the experts; its
            last width is the output dim. Default `(32,)`.
        dropout, output_activation, kernel_initializer, kernel_regularizer, **kwargs: as
            `DomainTowersBackbone`'s (the kernels: experts, gates, towers).

    Call arguments:
        inputs, training: as `DomainTowersBackbone`'s (`domain_embedding` is unused: it is part of `x`).

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
        super().__init__(num_domains, tower_units=tower_units, dropout=dropout, output_activation=output_activation,
                         kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer, **kwargs)
        self.num_experts = check_int("num_experts", num_experts)
        self.expert_units = check_units("expert_units", expert_units)

    def build(self, input_shape):
        D, K, fan_in = self.num_domains, self.num_experts, self._features(input_shape)
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        self.gate_kernel = kernel("gate_kernel", (D, fan_in, K), stacked_axes=1)
        self.expert_kernels, self.expert_biases = [], []
        for i, units in enumerate(self.expert_units):
            self.expert_kernels.append(kernel(f"expert_kernel_{i}", (K, fan_in, units), stacked_axes=1))
            self.expert_biases.append(self.add_weight(name=f"expert_bias_{i}", shape=(K, units), initializer="zeros"))
            fan_in = units
        self._build_towers(kernel, fan_in)
        super().build(input_shape)

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
        x = tf.cast(tf.convert_to_tensor(inputs[0]), self.compute_dtype)
        index = domain_indices(inputs[1], self.num_domains)
        h = x
        for i, (kernel, bias) in enumerate(zip(self.expert_kernels, self.expert_biases)):
            h = self._hidden(tf.einsum("bi,kio->bko" if i == 0 else "bki,kio->bko", h, kernel) + bias, training)
        h = tf.einsum("bk,bku->bu", self._gate(x, index), h)  # eq. 4: the gate-weighted sum of the experts
        return self._towers(h, index, training)

    def get_config(self):
        config = super().get_config()
        config.update({"num_experts": self.num_experts, "expert_units": list(self.expert_units)})
        return config
