"""PLE multi-domain backbone: CGC levels of shared and domain-specific experts, then one tower per domain."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import DomainTowersBackbone, Kernels, check_int, check_units, domain_indices


@keras.utils.register_keras_serializable(package="mdr")
class PLEBackbone(DomainTowersBackbone):
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
        tower_units: widths of each domain's tower over the domain path after the last level; its
            last width is the output dim. Default `(32,)`.
        dropout, output_activation, kernel_initializer, kernel_regularizer, **kwargs: as
            `DomainTowersBackbone`'s.

    Call arguments:
        inputs, training: as `DomainTowersBackbone`'s (`domain_embedding` is unused: it is part of `x`).
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
        super().__init__(num_domains, tower_units=tower_units, dropout=dropout, output_activation=output_activation,
                         kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer, **kwargs)
        self.num_levels = check_int("num_levels", num_levels)
        self.num_shared_experts = check_int("num_shared_experts", num_shared_experts, low=0)
        self.num_specific_experts = check_int("num_specific_experts", num_specific_experts, low=0)
        if num_shared_experts + num_specific_experts < 1:
            raise ValueError("`num_shared_experts + num_specific_experts` must be >= 1. Received: "
                             f"num_shared_experts={num_shared_experts}, num_specific_experts={num_specific_experts}")
        self.expert_units = check_units("expert_units", expert_units)

    def build(self, input_shape):
        D, S, P = self.num_domains, self.num_shared_experts, self.num_specific_experts
        level_in = self._features(input_shape)
        make = Kernels(self, self.kernel_initializer, self.kernel_regularizer)

        def kernel(name, shape):  # every [in, out] matrix of a stacked kernel initialised on its own
            return make(name, shape, stacked_axes=len(shape) - 2)

        def bias(name, shape):
            return self.add_weight(name=name, shape=shape, initializer="zeros")

        self.levels = []  # per level: dict of its weights
        for lv in range(self.num_levels):
            w = {"shared": [], "specific": [],
                 "gate": kernel(f"level{lv}_gate_kernel", (D, level_in, S + P)),
                 "shared_gate": kernel(f"level{lv}_shared_gate_kernel", (level_in, S + P))
                 if S and lv < self.num_levels - 1 else None}
            fan_in = level_in
            for i, units in enumerate(self.expert_units):
                if S:
                    w["shared"].append((kernel(f"level{lv}_shared_kernel_{i}", (S, fan_in, units)),
                                        bias(f"level{lv}_shared_bias_{i}", (S, units))))
                if P:
                    w["specific"].append((kernel(f"level{lv}_specific_kernel_{i}", (D, P, fan_in, units)),
                                          bias(f"level{lv}_specific_bias_{i}", (D, P, units))))
                fan_in = units
            self.levels.append(w)
            level_in = fan_in
        self._build_towers(make, level_in)
        super().build(input_shape)

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
        return self._towers(h, index, training)

    def get_config(self):
        config = super().get_config()
        config.update({"num_levels": self.num_levels, "num_shared_experts": self.num_shared_experts,
                       "num_specific_experts": self.num_specific_experts, "expert_units": list(self.expert_units)})
        return config
