"""Domain sensitive feature selection (DSFS) of D3 with its domain fusion gate: a transformation layer whose
weight and bias are generated per sample from self-attention over the feature fields (D3 eq. 6-14)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domain_fusion_gate import WEIGHT_FUSIONS, DomainFusionGate
from mdr_keras.layers.plumbing import (Kernels, check_activation, check_bool, check_choice, check_int, check_units,
                                       fresh_initializer, kernel_config, last_dim, one_or_two)

_EXPECTED_INPUTS = "`fields` or [fields, x_flat]"


@keras.utils.register_keras_serializable(package="mdr")
class DomainSensitiveFeatureSelection(keras.layers.Layer):
    """D3's transformation layer with DSFS and DF: `sigma(x W + b)` with `W`, `b` generated per sample.

    For a row with field embeddings `x` `[N, e]` (eq. 2-4; the domain indicator, and any other
    domain-sensitive feature, is one of the fields: DSFS finds them by attention) and transformation
    input `x_flat` `[F]` (default: the flattened fields, `F = N e`):

        Q, K = x W^Q, x W^K                       (eq. 6; W^Q, W^K `[e, e]` shared by the fields, no bias)
        A = softmax(Q K^T)                        (eq. 7; `[N, N]`, rows sum to 1, no 1/sqrt(e) scaling)
        x' = A x + x                              (eq. 8; `A V + x`, V = x W^V, with `value_projection`)
        H = concat_j(x'_j W^fc_j + b^fc_j)        (eq. 9; an independent linear map e -> `field_units` per field)
        T = sigma(H + sigma(H W^1 + b^1))         (eq. 10, the residual trunk)
        W_spec = reshape(T W^2 + b^2, [F, units]);  b_spec = T W^b + b^b
        W, b, g = DomainFusionGate([x', W_spec, b_spec])   (eq. 11-13; see `DomainFusionGate`)
        output = sigma(x_flat W + b)              (eq. 14 without the final `W_tr^2`, sigmoid)

    The caller adds the CTR output layer (`Dense(1)` + sigmoid, eq. 14's `W_tr^2`, `b_tr^2`).

    Ambiguities and their resolution (implementer notes sec. 2-3, 9):
      - Eq. 6 defines V but eq. 8 uses `A x`: the default is eq. 8 as printed (no `W^V`);
        `value_projection=True` gives `A V + x` (DANet style).
      - "The generation process of bias is the same as weight": the bias has its own linear head on
        the shared trunk `T`.
      - Eq. 9 shows no activation on the per-field maps: none is applied.
      - Eq. 13's multiplicative fusion, the bias fusion and the gate MLP sizes: see `DomainFusionGate`
        (`fusion="mul"` as printed by default, `"sum"` the convex mix; `fusion=None` is the D1
        ablation `W = W_spec`, `b = b_spec` without gate, whose `specific_gate` is then 1).
      - The gate reads the flattened `x'` (eq. 11), not the raw `x`.

    Plugging D3 into another backbone (Shared-Bottom, MMoE, STAR, ADI, as the paper does): pass the
    backbone's hidden vector as `x_flat` (`inputs=[fields, x_flat]`): attention and weight generation
    read the field embeddings, the generated `[F, units]` weight transforms the backbone's `F` units.

    Cost: the weight head has `N field_units x F units` parameters and every row gets its own
    `[F, units]` weight (`B F units` floats per batch, `B N field_units F units` multiply-adds). With
    `weight_rank=r` the generated weight is low-rank instead, `W_spec = sum_j l_j c_j^T` with
    `l_j = (T W^l + b^l)_j` `[F]` and `c_j = (T W^c + b^c)_j` `[units]`, `j < r`: the head has
    `N field_units r (F + units)` parameters and `x W` is computed from the factors without any
    `[B, F, units]` tensor (`DomainFusionGate.fused_transform`); `W^c` starts at zeros (LoRA's
    choice), so `W_spec` starts at 0 and the fused weight at the global one. On MovieLens-1M (N = 20 fields of
    e = 16, `field_units` 16, `units` 32) that is 3.28M -> 0.45M parameters at r = 4 (see the ranker's
    `dsfs_weight_rank` for the measured speed and AUC).

    DBO (`mdr_keras.losses.domain_balance`) needs the attention `A` (complexity, eq. 15) and `g_sp`
    (specificity, eq. 18): call with `return_attention=True` to get them with the output (in a
    functional model they are ordinary outputs, saved and reloaded with it). The attention is also
    what D3's Fig. 4 plots.

    Softmaxes are computed in float32, everything else in the layer's compute dtype.

    Args:
        units: width `h` of the transformation layer's output (> 0; not stated in the paper).
        field_units: width `h1` of each per-field map of eq. 9 (> 0; not stated). Default 64.
        value_projection: use `A (x W^V) + x` instead of eq. 8's `A x + x`. Default False.
        fusion: `"mul"` (eq. 13 as printed, default), `"sum"` or None (no gate, no global weight).
        gate_units: widths of the gate MLP's hidden layers (eq. 11). Default `(64, 16)`.
        fuse_bias: fuse the generated bias with a global bias like the weight (default True) or use
            `b_spec` as is. Ignored when `fusion=None`.
        weight_rank: None (default) for the paper's full generated `[F, units]` weight, or an int
            r > 0 for the low-rank weight described above (same output shapes and attention).
        activation: `sigma` of eq. 10 and 14 and of the gate MLP. Default `"relu"` (the paper's).
        kernel_initializer: initialiser of all kernels (each per-field map on its own). Default
            `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of all kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `fields`, float `[B, N, e]` (the stacked field embeddings), or `[fields, x_flat]` with
            `x_flat` float `[B, F]`, the transformation input (default: `fields` flattened to `N e`).
        training: unused (the layer behaves the same in training and inference).
        return_attention: if True, return a dict instead of the output alone.

    Returns:
        `sigma(x_flat W + b)`, `[B, units]`; with `return_attention=True` the dict
        `{"output": [B, units], "attention": A [B, N, N] (float32), "specific_gate": g_sp [B] (float32)}`.

    Reference:
        Jia et al., "D3: A Methodological Exploration of Domain Division, Modeling, and Balance in
        Multi-Domain Recommendations", AAAI 2024, sections "Backbone Network" (eq. 2-5), "Domain
        Sensitive Feature Selection Module" (eq. 6-10), "Domain Fusion Module" (eq. 11-14); Fu et al.,
        "Dual Attention Network for Scene Segmentation", CVPR 2019 (the attention of eq. 6-8).
    """

    def __init__(self, units, field_units=64, value_projection=False, fusion="mul", gate_units=(64, 16),
                 fuse_bias=True, activation="relu", kernel_initializer="glorot_uniform", kernel_regularizer=None,
                 weight_rank=None, **kwargs):
        super().__init__(**kwargs)
        self.units = check_int("units", units)
        self.field_units = check_int("field_units", field_units)
        self.value_projection = check_bool("value_projection", value_projection)
        self.fusion = check_choice("fusion", fusion, WEIGHT_FUSIONS + (None,))
        self.gate_units = check_units("gate_units", gate_units, allow_empty=True)
        self.fuse_bias = check_bool("fuse_bias", fuse_bias)
        self.weight_rank = check_int("weight_rank", weight_rank, none_ok=True)
        self.activation = check_activation("activation", activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.fusion_gate = None if fusion is None else DomainFusionGate(
            gate_units=gate_units, fusion=fusion, fuse_bias=fuse_bias, activation=activation,
            # its kernels count from 500, past this layer's own: a seeded initialiser does not repeat their values
            kernel_initializer=fresh_initializer(self.kernel_initializer, 500),
            kernel_regularizer=self.kernel_regularizer, name="fusion_gate",
            dtype=self.dtype_policy)

    # ------------------------------------------------------------------ build
    def build(self, input_shape):
        fields_shape, x_shape = one_or_two(input_shape, _EXPECTED_INPUTS, shapes=True)
        if fields_shape.rank != 3 or None in fields_shape[1:]:
            raise ValueError("`fields` must be [batch, N, e] with known N and e. "
                             f"Received: fields.shape={fields_shape}")
        n, e = int(fields_shape[1]), int(fields_shape[2])
        f = n * e if x_shape is None else last_dim("x_flat", x_shape, "[batch, F]")
        self.num_fields, self.embedding_dim, self.transform_dim = n, e, f
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)

        def bias(name, shape):
            return self.add_weight(name=name, shape=shape, initializer="zeros")

        hidden = n * self.field_units
        self.query_kernel = kernel("query_kernel", (e, e))
        self.key_kernel = kernel("key_kernel", (e, e))
        self.value_kernel = kernel("value_kernel", (e, e)) if self.value_projection else None
        self.field_kernel = kernel("field_kernel", (n, e, self.field_units), stacked_axes=1)
        self.field_bias = bias("field_bias", (n, self.field_units))
        self.residual_kernel = kernel("residual_kernel", (hidden, hidden))
        self.residual_bias = bias("residual_bias", (hidden,))
        if self.weight_rank is None:
            self.weight_generator_kernel = kernel("weight_generator_kernel", (hidden, f * self.units))
            self.weight_generator_bias = bias("weight_generator_bias", (f * self.units,))
        else:  # W_spec = sum_j l_j c_j^T, its factors generated from the trunk
            r = self.weight_rank
            self.left_generator_kernel = kernel("left_generator_kernel", (hidden, r * f))
            self.left_generator_bias = bias("left_generator_bias", (r * f,))
            # Zeros, as LoRA's second factor: W_spec starts at 0 and grows from the global weight's start
            # (a product of two random factors starts several times larger than the full form's W_spec).
            self.right_generator_kernel = kernel("right_generator_kernel", (hidden, r * self.units),
                                                 initializer="zeros")
            self.right_generator_bias = bias("right_generator_bias", (r * self.units,))
        self.bias_generator_kernel = kernel("bias_generator_kernel", (hidden, self.units))
        self.bias_generator_bias = bias("bias_generator_bias", (self.units,))
        if self.fusion_gate is not None:
            with tf.name_scope(self.fusion_gate.name):  # as Keras does for a sublayer built on its first call
                self.fusion_gate.build([tf.TensorShape([None, n * e]), tf.TensorShape([None, f, self.units]),
                                        tf.TensorShape([None, self.units])])
        super().build(input_shape)

    # ------------------------------------------------------------------ call
    def _split_inputs(self, inputs):
        fields, x = one_or_two(inputs, _EXPECTED_INPUTS)
        fields = tf.cast(fields, self.compute_dtype)
        x = tf.reshape(fields, [-1, self.num_fields * self.embedding_dim]) if x is None \
            else tf.cast(x, self.compute_dtype)
        return fields, x

    def call(self, inputs, training=None, return_attention=False):
        fields, x = self._split_inputs(inputs)
        query = tf.einsum("bne,ef->bnf", fields, self.query_kernel)  # eq. 6
        key = tf.einsum("bne,ef->bnf", fields, self.key_kernel)
        scores = tf.matmul(query, key, transpose_b=True)
        attention = tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)  # eq. 7, [B, N, N]
        values = fields if self.value_kernel is None else tf.einsum("bne,ef->bnf", fields, self.value_kernel)
        selected = tf.matmul(tf.cast(attention, self.compute_dtype), values) + fields  # eq. 8: x'
        h = tf.einsum("bne,neh->bnh", selected, self.field_kernel) + self.field_bias  # eq. 9, per field
        h = tf.reshape(h, [-1, self.num_fields * self.field_units])
        trunk = self.activation(h + self.activation(tf.matmul(h, self.residual_kernel) + self.residual_bias))
        bias = tf.matmul(trunk, self.bias_generator_kernel) + self.bias_generator_bias
        flat = tf.reshape(selected, [-1, self.num_fields * self.embedding_dim])
        if self.weight_rank is None:
            kernel = tf.matmul(trunk, self.weight_generator_kernel) + self.weight_generator_bias  # eq. 10
            kernel = tf.reshape(kernel, [-1, self.transform_dim, self.units])
            if self.fusion_gate is None:  # D1 ablation: W = W_spec, b = b_spec
                specific_gate = tf.ones_like(attention[:, 0, 0])
            else:  # eq. 11-13
                kernel, bias, gate = self.fusion_gate([flat, kernel, bias])
                specific_gate = gate[:, 0]
            output = self.activation(tf.einsum("bf,bfh->bh", x, kernel) + bias)  # eq. 14, per-row weight
        else:
            r = self.weight_rank
            left = tf.reshape(tf.matmul(trunk, self.left_generator_kernel) + self.left_generator_bias,
                              [-1, r, self.transform_dim])
            right = tf.reshape(tf.matmul(trunk, self.right_generator_kernel) + self.right_generator_bias,
                               [-1, r, self.units])
            if self.fusion_gate is None:
                specific_gate = tf.ones_like(attention[:, 0, 0])
                xw = tf.einsum("br,brh->bh", tf.einsum("brf,bf->br", left, x), right) + bias
            else:
                gate = self.fusion_gate.gate(flat)
                xw = self.fusion_gate.fused_transform(x, left, right, bias, gate)
                specific_gate = gate[:, 0]
            output = self.activation(xw)  # eq. 14 with the low-rank weight
        if return_attention:
            return {"output": output, "attention": attention, "specific_gate": specific_gate}
        return output

    def compute_output_shape(self, input_shape):
        fields_shape = one_or_two(input_shape, _EXPECTED_INPUTS, shapes=True)[0]
        return tf.TensorShape([fields_shape[0], self.units])

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units,
            "field_units": self.field_units,
            "value_projection": self.value_projection,
            "fusion": self.fusion,
            "gate_units": list(self.gate_units),
            "fuse_bias": self.fuse_bias,
            "activation": keras.activations.serialize(self.activation),
            "weight_rank": self.weight_rank,
            **kernel_config(self),
        })
        return config
