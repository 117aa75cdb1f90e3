"""ADI's domain interest adaptation layer: linear transform, vanilla attention or SE-block, per domain."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import Kernels, check_bool, check_choice, check_int, kernel_config, one_or_two

MODES = ("linear", "attention", "se")


@keras.utils.register_keras_serializable(package="mdr")
class DomainInterestAdaptation(keras.layers.Layer):
    """Domain interest adaptation layer (DIAL) of ADI: re-weights a network's input per domain.

    Every row is transformed with the parameters of its own domain (a leading `num_domains` axis
    on every weight, selected row-wise by the domain index). The input `x` is `[B, units]`, seen
    as `num_fields` fields of `units // num_fields` dims each (the paper's N embedded features
    F_1..F_N of dim e, concatenated as in eq. 21); by default every unit is its own field.

    Modes:
      - `"linear"` (ADI-LT, eq. 21-22): `x_hat = w_d * x + b_d`, `w_d, b_d` of shape `[units]`
        (initialised to ones / zeros: the identity).
      - `"attention"` (ADI-VA, eq. 23-24): for field i, `alpha_i = sigmoid(<q_{d,i}, x_i>)`, a scalar
        from a per-domain, per-field query vector `q_{d,i}` of the field's dims (no bias, as written);
        `x_hat_i = alpha_i * x_i`.
      - `"se"` (ADI-SE, eq. 25-26, the default): squeeze `z_i = mean(x_i)` over the field's dims,
        `alpha = sigmoid(W2_d relu(W1_d z + c1_d) + c2_d)` with `W1_d: [num_fields, r]`,
        `W2_d: [r, num_fields]`, `r = max(1, num_fields // reduction)`; `x_hat_i = alpha_i * x_i`.
        The paper writes F_se as (FC, ReLU, FC) without an output activation; the sigmoid is the
        SE-Net one (implementer notes, ambiguity 3), which keeps the scores in (0, 1).

    Placements of the SE block (ADI section 5.3.4, Table 8):
      - "3-SE" (the paper's choice): one instance in front of a network (per tower) with
        `shared_across_domains=False`, i.e. D SE blocks chosen by the domain indicator.
      - "1-SE": one instance with `shared_across_domains=True`: a single global SE block (the
        domain input is then ignored and may be left out).
      - "4-SE": one instance inside each of the D + K expert networks (per-domain or shared
        weights); the layer needs nothing more for it.

    Attention weights (ADI Fig. 5) are returned by `attention_weights([x, domain])`, or together
    with the output when the layer is called with `return_attention=True`. They are `[B, units]`:
    the per-field score repeated over the field's dims (in `"linear"` mode, the scale `w_d`).

    Args:
        num_domains: number of domains D (> 0); domain indices are in `[0, num_domains)`.
        mode: `"se"` (default), `"attention"` or `"linear"`.
        num_fields: number of fields N that `units` splits into (must divide `units`); default
            `None`: `units` fields of one dim each.
        reduction: SE reduction ratio (> 0), the hidden size is `max(1, num_fields // reduction)`;
            only used by `"se"`. Default 4.
        shared_across_domains: one set of weights for all domains (the 1-SE global variant)
            instead of one per domain. Default False.
        kernel_initializer: initialiser of the SE kernels and the attention queries, applied to
            each domain's slice on its own. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of those weights.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[x, domain]`: `x` float `[B, units]`, `domain` int `[B]` or `[B, 1]` with values in
            `[0, num_domains)` (out-of-range indices fail on CPU; on GPU they read zeros). With
            `shared_across_domains=True` a lone `x` is accepted too.
        training: unused (the layer behaves the same in training and inference).
        return_attention: if True, return `(output, weights)` with `weights` `[B, units]`.

    Returns:
        `x_hat` of the shape of `x` (and the attention weights if `return_attention=True`).

    Reference:
        Jiang et al., "Adaptive Domain Interest Network for Multi-domain Recommendation", CIKM 2022,
        section 4.2.2 "Domain Interest Adaptation Layer": eq. 21-22 (linear), eq. 23-24 (vanilla
        attention), eq. 25-26 (SE block); section 5.3.4 / Table 8 (1-SE, 3-SE, 4-SE placements).
    """

    def __init__(self, num_domains, mode="se", num_fields=None, reduction=4, shared_across_domains=False,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = check_int("num_domains", num_domains)
        self.mode = check_choice("mode", mode, MODES)
        self.num_fields = check_int("num_fields", num_fields, none_ok=True)
        self.reduction = check_int("reduction", reduction)
        self.shared_across_domains = check_bool("shared_across_domains", shared_across_domains)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    # ---------------------------------------------------------------- build
    def build(self, input_shape):
        x_shape, domain_shape = one_or_two(input_shape, "[x, domain]", shapes=True)
        if domain_shape is None and not self.shared_across_domains:
            raise ValueError("Per-domain weights need inputs [x, domain]. "
                             f"Received: input_shape={input_shape}")
        if x_shape.rank != 2 or x_shape[-1] is None:
            raise ValueError(f"`x` must be [batch, units] with known units. Received: x.shape={x_shape}")
        units = int(x_shape[-1])
        fields = self.num_fields if self.num_fields is not None else units
        if units % fields:
            raise ValueError(f"`num_fields` must divide the units of x ({units}). "
                             f"Received: num_fields={self.num_fields}")
        self.units = units
        self.fields = fields
        self.field_dim = units // fields
        self.hidden = max(1, fields // self.reduction)
        d = 1 if self.shared_across_domains else self.num_domains
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        if self.mode == "linear":
            self.domain_scale = self.add_weight(name="domain_scale", shape=(d, units), initializer="ones")
            self.domain_bias = self.add_weight(name="domain_bias", shape=(d, units), initializer="zeros")
        elif self.mode == "attention":
            self.domain_query = kernel("domain_query", (d, units), stacked_axes=1)
        else:
            self.squeeze_kernel = kernel("squeeze_kernel", (d, fields, self.hidden), stacked_axes=1)
            self.squeeze_bias = self.add_weight(name="squeeze_bias", shape=(d, self.hidden), initializer="zeros")
            self.excite_kernel = kernel("excite_kernel", (d, self.hidden, fields), stacked_axes=1)
            self.excite_bias = self.add_weight(name="excite_bias", shape=(d, fields), initializer="zeros")
        super().build(input_shape)

    # ---------------------------------------------------------------- call
    def _split_inputs(self, inputs):
        x, domain = one_or_two(inputs, "[x, domain]")
        x = tf.convert_to_tensor(x)
        if x.dtype != self.compute_dtype:
            x = tf.cast(x, self.compute_dtype)
        if self.shared_across_domains:
            index = tf.zeros(tf.shape(x)[:1], tf.int32)
        elif domain is None:
            raise ValueError("Per-domain weights need inputs [x, domain]. Received: x alone")
        else:
            index = tf.reshape(tf.cast(domain, tf.int32), [-1])
        return x, index

    def _weights_for(self, x, index):
        """[B, units] multiplicative weights (and the [B, units] bias of "linear", else None)."""
        if self.mode == "linear":
            return tf.gather(self.domain_scale, index), tf.gather(self.domain_bias, index)
        if self.mode == "attention":  # eq. 23: alpha_i = sigmoid(<q_{d,i}, x_i>) per field i
            q = tf.gather(self.domain_query, index)
            logits = tf.reduce_sum(tf.reshape(x * q, [-1, self.fields, self.field_dim]), axis=-1)
        else:  # eq. 25: squeeze (mean per field) -> FC -> ReLU -> FC -> sigmoid, with domain d's weights
            z = tf.reduce_mean(tf.reshape(x, [-1, self.fields, self.field_dim]), axis=-1)  # [B, N]
            # All D blocks on the batch, then each row keeps its domain's: [B, D, r] -> [B, r].
            # (D x the FLOPs of one block, but no [B, N, r] per-row copy of the kernels.)
            hidden = tf.einsum("bn,dnr->bdr", z, self.squeeze_kernel) + self.squeeze_bias
            hidden = tf.nn.relu(tf.gather(hidden, index, axis=1, batch_dims=1))
            logits = tf.einsum("br,drn->bdn", hidden, self.excite_kernel) + self.excite_bias
            logits = tf.gather(logits, index, axis=1, batch_dims=1)  # [B, N]
        alpha = tf.sigmoid(logits)
        return tf.repeat(alpha, self.field_dim, axis=-1), None  # each field's score over its dims

    def call(self, inputs, training=None, return_attention=False):
        x, index = self._split_inputs(inputs)
        weights, bias = self._weights_for(x, index)
        out = x * weights  # eq. 22 / 24 / 26
        if bias is not None:
            out = out + bias
        if return_attention:
            return out, weights
        return out

    def attention_weights(self, inputs):
        """The `[B, units]` weights the layer multiplies `x` by for `inputs = [x, domain]` (ADI Fig. 5):
        the sigmoid scores of "attention" / "se" repeated over each field's dims, or the scale `w_d`
        of "linear"."""
        if not self.built:
            self(inputs)
        x, index = self._split_inputs(inputs)
        return self._weights_for(x, index)[0]

    def compute_output_shape(self, input_shape):
        return one_or_two(input_shape, "[x, domain]", shapes=True)[0]

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains,
            "mode": self.mode,
            "num_fields": self.num_fields,
            "reduction": self.reduction,
            "shared_across_domains": self.shared_across_domains,
            **kernel_config(self),
        })
        return config
