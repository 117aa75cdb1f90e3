"""PLE multi-domain backbone: CGC levels of shared and domain-specific experts, then one tower per domain."""
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
class PLEBackbone(keras.layers.Layer):
    """Progressive Layered Extraction backbone: stacked CGC levels, one gate and one tower per domain.

    A row of domain `d` has two paths through the levels, both starting at `x`: its domain path
    `h` and the shared path `s`. Level `l` (a CGC) has S shared experts (MLPs on `s`)
    and P experts per domain (MLPs on `h`; the row uses its own domain's), all with widths
    `expert_units` (all layers ReLU). With `E = [shared experts(s), experts^d(h)]`, S + P outputs:

        h <- sum_k softmax(W_g^{d,l} h)_k E_k         the gate of domain d
        s <- sum_k softmax(W_g^{s,l} s)_k E_k         the shared gate, levels 1..L-1 only
        out = Tower^d(h)                              (ReLU hidden layers, linear last layer)

    Gates have no bias, as PLE writes them. With one level and P = 0 this is `MMoEBackbone`.

    Multi-domain resolution: in multi-task PLE every sample goes through every task's path and the
    shared gate mixes all tasks' specific experts. A row here belongs to one domain, so it goes
    through its own domain's path only and the shared gate mixes the S shared experts and the P
    experts of the row's domain (S + P weights, one gate for all domains). Thus domain `j`'s
    experts, gates and tower get exactly zero gradient from other domains' rows, and the cost is
    that of one task path. All D domains' experts / gates / towers of a layer are computed in one
    `einsum` and each row keeps its own domain's slice (as in `ADIBackbone`); stacked kernels
    `[S, in, out]`, `[D, P, in, out]`, `[D, in, S + P]`, `[D, in, out]`. Softmaxes run in float32.

    Parameter count of one level (in inputs, expert widths e_1..e_n):
    `(S + D P) (in e_1 + ... + e_{n-1} e_n) + D in (S + P)` (+ `in (S + P)` for the shared gate)
    plus biases, then the towers. E.g. F = 160, D = 3 (trainable), one level, S = P = 1:
    `expert_units=(16,), tower_units=(32,)` 12.9k, about an MLP (64, 32) (12.4k);
    `expert_units=(96,), tower_units=(64, 32)` 87.6k, about `ADIBackbone` with the retrieval
    model's defaults (96.6k). ADI sec. 5.1.4 matches budgets by 1 shared + D specific networks of
    the size of ADI's: `num_shared_experts=1, num_specific_experts=1, expert_units=(64,)`.

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        num_levels: number of CGC levels L (>= 1). Default 1 (CGC, as in ADI sec. 5.1.4).
        num_shared_experts: shared experts S per level (>= 0). Default 1.
        num_specific_experts: experts P per domain per level (>= 0); S + P >= 1. Default 1.
        expert_units: widths of each expert's layers (all ReLU), the same at every level.
            Default `(64,)`.
        tower_units: widths of each domain's tower; the last layer is linear and its width is the
            output dim. Default `(32,)`.
        dropout: dropout rate in [0, 1) after every hidden (ReLU) layer. Default 0.
        output_activation: optional activation of the output layer. Default None (linear).
        kernel_initializer: initialiser of the kernels, applied to each expert's / domain's slice
            on its own. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of the kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[x, domain, domain_embedding]`: `x` float `[B, F]`, the concatenated feature
            embeddings (the domain embedding is one of them); `domain` int `[B]` or `[B, 1]` in
            `[0, num_domains)` (out-of-range values fail an assertion, outside XLA);
            `domain_embedding` float `[B, e]`, unused (it is already part of `x`).
        training: Python bool or bool tensor, the dropout switch.
        return_gates: if True, return each level's domain gate `[B, S + P]` (shared experts first),
            a list of L tensors, instead of the output. Default False.

    Returns:
        Float `[B, tower_units[-1]]`. Also: `gate_weights(inputs)` gives the gates in inference mode.

    Reference:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model
        for Personalized Recommendations", RecSys 2020, sec. 4.2 (CGC), sec. 4.3 (multi-level
        extraction); the PLE baseline of Jiang et al., "Adaptive Domain Interest Network
        for Multi-domain Recommendation", CIKM 2022, sec. 5.1.2, 5.1.4.
    """

    def __init__(self, num_domains, num_levels=1, num_shared_experts=1, num_specific_experts=1,
                 expert_units=(64,), tower_units=(32,), dropout=0.0, output_activation=None,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        for name, value, low in (("num_domains", num_domains, 1), ("num_levels", num_levels, 1),
                                 ("num_shared_experts", num_shared_experts, 0),
                                 ("num_specific_experts", num_specific_experts, 0)):
            if not is_int(value) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}. Received: {name}={value!r}")
        if num_shared_experts + num_specific_experts < 1:
            raise ValueError("`num_shared_experts + num_specific_experts` must be >= 1. Received: "
                             f"num_shared_experts={num_shared_experts}, num_specific_experts={num_specific_experts}")
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
        self.num_levels = int(num_levels)
        self.num_shared_experts = int(num_shared_experts)
        self.num_specific_experts = int(num_specific_experts)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self._dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def _kernel(self, name, shape):
        """A kernel from a fresh copy of `kernel_initializer` (seed + 1000 n when seeded: an initialiser
        instance gives the same values on every call), each `[in, out]` slice initialised on its own."""
        init = self.kernel_initializer
        if isinstance(init, keras.initializers.Initializer):
            config = init.get_config()
            self._kernels_made = getattr(self, "_kernels_made", 0) + 1
            if config.get("seed") is not None:
                config["seed"] += 1000 * self._kernels_made
            init = type(init).from_config(config)
        slices = per_domain(init)

        def initializer(shape, dtype=None, **kwargs):
            shape = tuple(int(s) for s in shape)
            return tf.reshape(slices((int(np.prod(shape[:-2])),) + shape[-2:], dtype=dtype), shape)

        return self.add_weight(name=name, shape=shape, initializer=initializer, regularizer=self.kernel_regularizer)

    def _bias(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer="zeros")

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
            raise ValueError("PLEBackbone expects inputs [x, domain, domain_embedding]. "
                             f"Received: input_shape={input_shape}")
        x_shape = tf.TensorShape(input_shape[0])
        if x_shape.rank != 2 or x_shape[-1] is None:
            raise ValueError(f"`x` must be [batch, features] with known features. Received: x.shape={x_shape}")
        D, S, P = self.num_domains, self.num_shared_experts, self.num_specific_experts
        level_in = int(x_shape[-1])
        self.levels = []  # per level: dict of its weights
        for lv in range(self.num_levels):
            w = {"shared": [], "specific": [],
                 "gate": self._kernel(f"level{lv}_gate_kernel", (D, level_in, S + P)),
                 "shared_gate": self._kernel(f"level{lv}_shared_gate_kernel", (level_in, S + P))
                 if S and lv < self.num_levels - 1 else None}
            fan_in = level_in
            for i, units in enumerate(self.expert_units):
                if S:
                    w["shared"].append((self._kernel(f"level{lv}_shared_kernel_{i}", (S, fan_in, units)),
                                        self._bias(f"level{lv}_shared_bias_{i}", (S, units))))
                if P:
                    w["specific"].append((self._kernel(f"level{lv}_specific_kernel_{i}", (D, P, fan_in, units)),
                                          self._bias(f"level{lv}_specific_bias_{i}", (D, P, units))))
                fan_in = units
            self.levels.append(w)
            level_in = fan_in
        self.tower_kernels, self.tower_biases = [], []
        fan_in = level_in
        for i, units in enumerate(self.tower_units):
            self.tower_kernels.append(self._kernel(f"tower_kernel_{i}", (D, fan_in, units)))
            self.tower_biases.append(self._bias(f"tower_bias_{i}", (D, units)))
            fan_in = units
        super().build(input_shape)

    def _hidden(self, z, training):
        h = tf.nn.relu(z)
        return self._dropout(h, training=training) if self.dropout else h

    @staticmethod
    def _mix(gate_logits, experts):
        """softmax over the S + P logits (float32), then the gate-weighted sum of the experts [B, S + P, u]."""
        gate = tf.cast(tf.nn.softmax(tf.cast(gate_logits, tf.float32), axis=-1), experts.dtype)
        return tf.einsum("bk,bku->bu", gate, experts), gate

    def _levels(self, x, index, training):
        """The domain path after the last level [B, u] and each level's domain gate [B, S + P]."""
        h = s = x
        gates = []
        for w in self.levels:
            experts = []
            e = s
            for i, (kernel, bias) in enumerate(w["shared"]):  # S shared experts on the shared path
                e = self._hidden(tf.einsum("bi,kio->bko" if i == 0 else "bki,kio->bko", e, kernel) + bias, training)
            if w["shared"]:
                experts.append(e)
            e = h
            for i, (kernel, bias) in enumerate(w["specific"]):  # the P experts of the row's domain on its path
                z = tf.einsum("bi,dpio->bdpo" if i == 0 else "bpi,dpio->bdpo", e, kernel) + bias
                e = self._hidden(tf.gather(z, index, axis=1, batch_dims=1), training)
            if w["specific"]:
                experts.append(e)
            experts = tf.concat(experts, axis=1)  # [B, S + P, u]
            logits = tf.gather(tf.einsum("bi,dik->bdk", h, w["gate"]), index, axis=1, batch_dims=1)
            if w["shared_gate"] is not None:
                s = self._mix(tf.matmul(s, w["shared_gate"]), experts)[0]
            h, gate = self._mix(logits, experts)
            gates.append(gate)
        return h, gates

    def gate_weights(self, inputs):
        """Each level's domain gate `[B, S + P]` (shared experts first) for `inputs = [x, domain, ...]`
        (inference mode), a list of L tensors."""
        if not self.built:
            raise ValueError("Call the layer on [x, domain, domain_embedding] before `gate_weights`. "
                             "Received: an unbuilt layer")
        return self(inputs, training=False, return_gates=True)  # (`__call__` auto-casts the variables)

    def call(self, inputs, training=None, return_gates=False):
        x = tf.cast(tf.convert_to_tensor(inputs[0]), self.compute_dtype)
        index = domain_indices(inputs[1], self.num_domains)
        h, gates = self._levels(x, index, training)
        if return_gates:
            return gates
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
            "num_levels": self.num_levels,
            "num_shared_experts": self.num_shared_experts,
            "num_specific_experts": self.num_specific_experts,
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
