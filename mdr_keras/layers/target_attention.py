"""Target attention of a (multi-)query over a padded behaviour sequence, in the MHA form (ADS eq. 8-12) and the
DIN form (activation unit)."""
from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import (Kernels, check_activation, check_bool, check_choice, check_int, check_units,
                                       input_list, input_shapes, kernel_config, last_dim)

MODES = ("mha", "din")
NORMALIZATIONS = (None, "softmax", "none")
INPUTS = ("queries", "sequence", "mask")  # the mask may be left out


@keras.utils.register_keras_serializable(package="mdr")
class TargetAttention(keras.layers.Layer):
    """Pools a padded sequence `E_S` (`[T, d_S]`) with weights given by a candidate query.

    The query is one vector `q` (`[d_Q]`, the usual DIN / MHA target attention: the same query for every
    position) or one query per position `q_t` (`[T, d_Q]`, ADS's personalised queries from
    `MultiQueryGenerator`). Position t is scored with its own query and key only (ADS eq. 11: one logit
    per position, not a T x T matrix); a single query is broadcast to all positions.

    Modes:
      - `"mha"` (ADS eq. 8-12): per head h, `Q = q W_Q^h`, `K = E_S W_K^h`, `V = E_S W_V^h` (`d_A` dims,
        no biases unless `use_bias`), `z'_t = <Q_t, K_t> / sqrt(d_A)`, `z = softmax(z')` over the real
        positions, `s^h = sum_t z_t V_t`; the heads are concatenated to `[H * d_A]`. The paper gives no
        head count, `d_A` or output projection: `num_heads` / `head_dim` are arguments, the output
        projection is optional (`output_units`, off by default as in the paper).
      - `"din"` (DIN's local activation unit): `a_t = MLP([q_t, k_t, q_t - k_t, q_t * k_t])` (hidden
        layers `hidden_units` with `activation`, a linear 1-unit output), `s = sum_t a_t k_t` with
        `k_t = E_S[t]` (DIN pools the item embeddings themselves). DIN drops the softmax ("normalization
        with softmax is abandoned"), so `normalization` defaults to `"none"` here; `"softmax"` is offered.
        Needs `d_Q == d_S`.

    Masking (not in the paper): padded positions (`mask` False) get exactly zero weight, and their
    embeddings are replaced by zeros before anything reads them, so the output does not depend on what
    they hold. The masked softmax exponentiates only real positions; a row with no real position gets
    all-zero weights and a zero pooled vector (not NaN). Normalisation runs in float32.

    Args:
        mode: `"mha"` (default) or `"din"`.
        num_heads: number of heads H (> 0), `"mha"` only. Default 2.
        head_dim: per-head dim d_A (> 0), `"mha"` only. Default None: `d_S // num_heads` (then
            `num_heads` must divide d_S).
        output_units: if set (> 0), a final linear projection of the pooled vector to this width.
            Default None (no projection).
        use_bias: biases in the Q / K / V and output projections. Default False (eq. 8-10 have none).
        hidden_units: widths of the hidden layers of the DIN activation unit. Default `(80, 40)` (DIN).
        activation: hidden activation of the DIN activation unit. Default `"sigmoid"` (the DIN reference
            code; the DIN paper's PReLU / Dice are not Keras built-ins).
        normalization: `"softmax"`, `"none"` (raw scores as weights), or None (default): `"softmax"`
            for `"mha"`, `"none"` for `"din"`.
        kernel_initializer: initialiser of all kernels. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of all kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[queries, sequence, mask]` or `[queries, sequence]` (no padding): `queries` float
            `[B, d_Q]` (one query) or `[B, T, d_Q]` (one per position); `sequence` float `[B, T, d_S]`;
            `mask` bool `[B, T]`, True for real items (numbers are read as `!= 0`).
        training: unused.
        return_attention_scores: if True, also return the weights: `[B, num_heads, T]` for `"mha"`,
            `[B, T]` for `"din"`.

    Returns:
        The pooled sequence `s`, `[B, output_units]` if set, else `[B, num_heads * head_dim]` (`"mha"`)
        or `[B, d_S]` (`"din"`); with `return_attention_scores`, the tuple `(s, weights)`.

    Reference:
        Chai et al., "Adaptive Domain Scaling for Personalized Sequential Modeling in Recommenders",
        SIGIR 2025, sec. 2.2.3, eq. 8-10 (projections), eq. 11 (position-wise logits), eq. 12 (softmax and
        pooling); Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, sec. 4.3
        (local activation unit).
    """

    def __init__(self, mode="mha", num_heads=2, head_dim=None, output_units=None, use_bias=False,
                 hidden_units=(80, 40), activation="sigmoid", normalization=None,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, MODES)
        self.num_heads = check_int("num_heads", num_heads)
        self.head_dim = check_int("head_dim", head_dim, none_ok=True)
        self.output_units = check_int("output_units", output_units, none_ok=True)
        self.use_bias = check_bool("use_bias", use_bias)
        self.hidden_units = check_units("hidden_units", hidden_units)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.activation = check_activation("activation", activation)
        self._softmax = normalization == "softmax" or (normalization is None and mode == "mha")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    # ---------------------------------------------------------------- build
    def _bias(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer="zeros")

    def build(self, input_shape):
        q_shape, seq_shape = input_shapes(self, input_shape, INPUTS, optional=1)[:2]
        d_s = last_dim("sequence", seq_shape, "[B, T, d_S]")
        if q_shape.rank not in (2, 3) or q_shape[-1] is None:
            raise ValueError("`queries` must be [B, d_Q] or [B, T, d_Q] with known d_Q. "
                             f"Received: queries.shape={q_shape}")
        d_q = int(q_shape[-1])
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        if self.mode == "mha":
            if self.head_dim is None and d_s % self.num_heads:
                raise ValueError(f"With `head_dim=None`, `num_heads` must divide d_S={d_s}. "
                                 f"Received: num_heads={self.num_heads}")
            heads, dim = self.num_heads, self.head_dim or d_s // self.num_heads
            self._head_dim = dim
            self.query_kernel = kernel("query_kernel", (d_q, heads, dim))
            self.key_kernel = kernel("key_kernel", (d_s, heads, dim))
            self.value_kernel = kernel("value_kernel", (d_s, heads, dim))
            if self.use_bias:
                self.query_bias, self.key_bias, self.value_bias = (
                    self._bias(f"{n}_bias", (heads, dim)) for n in ("query", "key", "value"))
            pooled = heads * dim
        else:
            if d_q != d_s:
                raise ValueError(f"`mode='din'` compares queries and items element-wise: d_Q must equal d_S={d_s}. "
                                 f"Received: queries.shape={q_shape}")
            self.unit_kernels, self.unit_biases = [], []
            fan_in = 4 * d_s
            for i, units in enumerate(self.hidden_units + [1]):
                self.unit_kernels.append(kernel(f"unit_kernel_{i}", (fan_in, units)))
                self.unit_biases.append(self._bias(f"unit_bias_{i}", (units,)))
                fan_in = units
            pooled = d_s
        self._pooled_dim = pooled
        if self.output_units is not None:
            self.output_kernel = kernel("output_kernel", (pooled, self.output_units))
            self.output_bias = self._bias("output_bias", (self.output_units,)) if self.use_bias else None
        super().build(input_shape)

    # ---------------------------------------------------------------- call
    def _weights(self, logits, mask):
        """Exactly-zero weights where `mask` is False; masked softmax (float32) or raw scores."""
        if not self._softmax:
            return tf.where(mask, logits, tf.zeros_like(logits))
        logits = tf.where(mask, tf.cast(logits, tf.float32), tf.float32.min)
        e = tf.exp(logits - tf.reduce_max(logits, axis=1, keepdims=True))  # max over the real positions
        e = tf.where(mask, e, 0.0)
        # A row with a real position sums to >= 1 (its max gives exp(0)); an all-padding row sums to 0
        # and keeps zero weights instead of 0 / 0.
        weights = e / tf.maximum(tf.reduce_sum(e, axis=1, keepdims=True), 1.0)
        return tf.cast(weights, self.compute_dtype)

    def call(self, inputs, training=None, return_attention_scores=False):
        inputs = input_list(self, inputs, INPUTS, optional=1)
        queries = tf.cast(tf.convert_to_tensor(inputs[0]), self.compute_dtype)
        seq = tf.cast(tf.convert_to_tensor(inputs[1]), self.compute_dtype)
        if len(inputs) == 3 and inputs[2] is not None:
            mask = tf.convert_to_tensor(inputs[2])
            mask = mask if mask.dtype == tf.bool else tf.not_equal(mask, 0)
        else:
            mask = tf.ones(tf.shape(seq)[:2], tf.bool)
        seq = tf.where(mask[..., None], seq, tf.zeros_like(seq))  # padded items never reach the output
        if self.mode == "mha":
            # eq. 8. tensordot, not einsum("...d,dha->...ha"): for [B, T, d] queries TF lowers that einsum to a
            # broadcasting batch matmul whose gradient took 450 ms per 1024-row batch on CPU (tensordot: 35 ms).
            q = tf.tensordot(queries, self.query_kernel, axes=[[queries.shape.rank - 1], [0]])
            k = tf.einsum("btd,dha->btha", seq, self.key_kernel)  # eq. 9
            v = tf.einsum("btd,dha->btha", seq, self.value_kernel)  # eq. 10
            if self.use_bias:
                q, k, v = q + self.query_bias, k + self.key_bias, v + self.value_bias
            if queries.shape.rank == 2:
                q = q[:, None]  # one query for every position
            logits = tf.reduce_sum(q * k, axis=-1) / math.sqrt(self._head_dim)  # eq. 11, [B, T, H]
            weights = self._weights(logits, mask[..., None])  # eq. 12
            pooled = tf.reshape(tf.einsum("bth,btha->bha", weights, v), [-1, self._pooled_dim])
            scores = tf.transpose(weights, [0, 2, 1])  # [B, H, T]
        else:
            q = queries[:, None] if queries.shape.rank == 2 else queries
            q = tf.broadcast_to(q, tf.shape(seq))
            h = tf.concat([q, seq, q - seq, q * seq], axis=-1)  # DIN activation unit input
            last = len(self.unit_kernels) - 1
            for i, (kernel, bias) in enumerate(zip(self.unit_kernels, self.unit_biases)):
                h = tf.einsum("bti,io->bto", h, kernel) + bias
                h = self.activation(h) if i < last else h
            scores = self._weights(h[..., 0], mask)  # [B, T]
            pooled = tf.einsum("bt,btd->bd", scores, seq)
        if self.output_units is not None:
            pooled = tf.matmul(pooled, self.output_kernel)
            if self.output_bias is not None:
                pooled = pooled + self.output_bias
        if return_attention_scores:
            return pooled, scores
        return pooled

    def compute_output_shape(self, input_shape):
        seq_shape = input_shapes(self, input_shape, INPUTS, optional=1)[1]
        if self.output_units is not None:
            width = self.output_units
        elif self.mode == "din":
            width = seq_shape[-1]
        else:
            width = self.num_heads * (self.head_dim or seq_shape[-1] // self.num_heads)
        return tf.TensorShape([seq_shape[0], width])

    def get_config(self):
        config = super().get_config()
        config.update({
            "mode": self.mode,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "output_units": self.output_units,
            "use_bias": self.use_bias,
            "hidden_units": list(self.hidden_units),
            "activation": keras.activations.serialize(self.activation),
            "normalization": self.normalization,
            **kernel_config(self),
        })
        return config
