"""Domain fusion (DF) gate of D3: a 2-way softmax gate fusing a generated per-sample weight with a global
one (D3 eq. 11-13)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import (Kernels, check_activation, check_bool, check_choice, check_units, input_list,
                                       input_shapes, kernel_config)

WEIGHT_FUSIONS = ("mul", "sum")  # how the gate combines the specific and the global weight (eq. 13)
INPUTS = ("gate_input", "specific_kernel", "specific_bias")


@keras.utils.register_keras_serializable(package="mdr")
class DomainFusionGate(keras.layers.Layer):
    """D3's domain fusion module: fuses a per-sample (specific) weight and bias with global ones.

    For a row with gate input `x'` (the flattened DSFS attention output), specific kernel `W_spec`
    `[F, h]` and specific bias `b_spec` `[h]` (both generated per row, e.g. by
    `DomainSensitiveFeatureSelection`):

        v = MLP(x')                                  (eq. 11; hidden layers `gate_units`, then 2 logits)
        g = softmax(v) = [g_sp, g_sh]                (eq. 12; g_sp + g_sh = 1)
        "mul": W = (g_sp W_spec) * (g_sh W_glob)     (eq. 13 as printed, `*` element-wise)
        "sum": W = g_sp W_spec + g_sh W_glob         (convex mix, what the text describes)

    `W_glob` `[F, h]` is a learned global weight ("randomly initialised": `kernel_initializer`).

    Ambiguities and their resolution:
      - Eq. 13 multiplies the two gated terms, so `W = g_sp g_sh (W_spec * W_glob)`: with
        `g_sp + g_sh = 1` the gate only contributes the scalar `g_sp (1 - g_sp) <= 1/4` and cannot trade
        shared against specific proportions as the prose says. `fusion="mul"` (default) implements the
        equation as printed (as the public reference code does, so the published numbers most likely
        used it); `fusion="sum"` is the convex mix the prose describes.
      - The paper fuses "the weight W and bias b" but writes eq. 13 for W only. With `fuse_bias=True`
        (default) the bias is fused the same way with a learned global bias `b_glob` `[h]`
        (initialised to zeros, the Keras bias convention); `fuse_bias=False` passes `b_spec` through
        unfused (the reference code does that).
      - The gate MLP's sizes are not stated: `gate_units` hidden layers with `activation` (the paper
        uses ReLU throughout; default `(64, 16)` as in the reference code, without its batch norm).

    The gate logits and the softmax are computed in float32; the fusion in the layer's compute dtype.

    Args:
        gate_units: widths of the gate MLP's hidden layers (may be empty: one linear layer to the
            2 logits). Default `(64, 16)`.
        fusion: `"mul"` (eq. 13 as printed, default) or `"sum"` (convex mix).
        fuse_bias: fuse the bias with a global bias like the weight (default True) or return
            `b_spec` unchanged.
        activation: activation of the gate MLP's hidden layers. Default `"relu"`.
        kernel_initializer: initialiser of the gate kernels and of `W_glob`. Default `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of those kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list `[gate_input, specific_kernel, specific_bias]`: `gate_input` float `[B, G]`
            (D3: the flattened `x'`), `specific_kernel` float `[B, F, h]`, `specific_bias` float `[B, h]`.
        training: unused (the layer behaves the same in training and inference).

    Returns:
        Tuple `(kernel, bias, gate)`: the fused `W` `[B, F, h]` and `b` `[B, h]` (compute dtype) and the
        gate `g = [g_sp, g_sh]` `[B, 2]` (float32); `gate[:, 0]` is the specificity that DBO's eq. 18 uses.

    Reference:
        Jia et al., "D3: A Methodological Exploration of Domain Division, Modeling, and Balance in
        Multi-Domain Recommendations", AAAI 2024, section "Domain Fusion Module", eq. 11-13 (and 14).
    """

    def __init__(self, gate_units=(64, 16), fusion="mul", fuse_bias=True, activation="relu",
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.gate_units = check_units("gate_units", gate_units, allow_empty=True)
        self.fusion = check_choice("fusion", fusion, WEIGHT_FUSIONS)
        self.fuse_bias = check_bool("fuse_bias", fuse_bias)
        self.activation = check_activation("activation", activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        gate_shape, kernel_shape, bias_shape = input_shapes(self, input_shape, INPUTS)
        if gate_shape.rank != 2 or gate_shape[-1] is None:
            raise ValueError(f"`gate_input` must be [batch, G] with known G. Received: shape={gate_shape}")
        if kernel_shape.rank != 3 or None in kernel_shape[1:]:
            raise ValueError("`specific_kernel` must be [batch, F, h] with known F and h. "
                             f"Received: shape={kernel_shape}")
        if bias_shape.rank != 2 or bias_shape[-1] != kernel_shape[-1]:
            raise ValueError(f"`specific_bias` must be [batch, h] with h = {kernel_shape[-1]}. "
                             f"Received: shape={bias_shape}")
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        self.gate_kernels, self.gate_biases = [], []
        fan_in = int(gate_shape[-1])
        for i, units in enumerate(self.gate_units + [2]):  # hidden layers, then the 2 logits [v_sp, v_sh]
            self.gate_kernels.append(kernel(f"gate_kernel_{i}", (fan_in, units)))
            self.gate_biases.append(self.add_weight(name=f"gate_bias_{i}", shape=(units,), initializer="zeros"))
            fan_in = units
        self.global_kernel = kernel("global_kernel", tuple(kernel_shape[1:]))
        self.global_bias = self.add_weight(name="global_bias", shape=(int(bias_shape[-1]),),
                                           initializer="zeros") if self.fuse_bias else None
        super().build(input_shape)

    def gate(self, gate_input):
        """The float32 gate `g = softmax(MLP(gate_input)) = [g_sp, g_sh]`, `[B, 2]` (eq. 11-12)."""
        h = tf.cast(gate_input, self.compute_dtype)
        last = len(self.gate_kernels) - 1
        for i, (kernel, bias) in enumerate(zip(self.gate_kernels, self.gate_biases)):
            h = tf.matmul(h, kernel) + bias
            if i < last:
                h = self.activation(h)
        return tf.nn.softmax(tf.cast(h, tf.float32), axis=-1)

    def _fuse(self, specific, shared, g_sp, g_sh):
        if self.fusion == "mul":  # eq. 13 as printed
            return (g_sp * specific) * (g_sh * shared)
        return g_sp * specific + g_sh * shared

    def fused_transform(self, x, left, right, bias, gate):
        """`x W + b` for the fused `W` and `b` when `W_spec = left^T right` is given by its factors.

        No `[B, F, h]` tensor is made: the fusion is linear in `W_spec` (`"sum"`) or element-wise
        with `W_glob` (`"mul"`), so each rank-one term `l_j c_j^T` of `W_spec` passes through it alone:

            "sum": x W = g_sp sum_j (x . l_j) c_j + g_sh x W_glob                  (B r (F + h) + B F h)
            "mul": x W = g_sp g_sh sum_j c_j * ((x * l_j) W_glob)                  (B r F h)

        Args:
            x: float `[B, F]`, the transformation input.
            left: float `[B, r, F]`, the factors `l_j` over the input.
            right: float `[B, r, h]`, the factors `c_j` over the output.
            bias: float `[B, h]`, the specific bias `b_spec`.
            gate: float32 `[B, 2]`, `self.gate(gate_input)`.

        Returns:
            `x W + b`, `[B, h]`, in the compute dtype (before the activation of eq. 14).
        """
        x, left, right, bias = (tf.cast(t, self.compute_dtype) for t in (x, left, right, bias))
        g = tf.cast(gate, self.compute_dtype)
        g_sp, g_sh = g[:, :1], g[:, 1:]
        if self.fusion == "mul":
            projected = tf.tensordot(x[:, None, :] * left, self.global_kernel, axes=1)  # [B, r, h]
            xw = g_sp * g_sh * tf.reduce_sum(right * projected, axis=1)
        else:
            specific = tf.einsum("br,brh->bh", tf.einsum("brf,bf->br", left, x), right)
            xw = g_sp * specific + g_sh * tf.matmul(x, self.global_kernel)
        return xw + (self._fuse(bias, self.global_bias, g_sp, g_sh) if self.fuse_bias else bias)

    def call(self, inputs, training=None):
        gate_input, kernel, bias = input_list(self, inputs, INPUTS)
        kernel = tf.cast(kernel, self.compute_dtype)
        bias = tf.cast(bias, self.compute_dtype)
        gate = self.gate(gate_input)
        g = tf.cast(gate, self.compute_dtype)
        g_sp, g_sh = g[:, :1], g[:, 1:]  # [B, 1] each
        fused_kernel = self._fuse(kernel, self.global_kernel, g_sp[:, :, None], g_sh[:, :, None])
        fused_bias = self._fuse(bias, self.global_bias, g_sp, g_sh) if self.fuse_bias else bias
        return fused_kernel, fused_bias, gate

    def compute_output_shape(self, input_shape):
        gate_shape, kernel_shape, bias_shape = input_shapes(self, input_shape, INPUTS)
        return kernel_shape, bias_shape, tf.TensorShape([gate_shape[0], 2])

    def get_config(self):
        config = super().get_config()
        config.update({
            "gate_units": list(self.gate_units),
            "fusion": self.fusion,
            "fuse_bias": self.fuse_bias,
            "activation": keras.activations.serialize(self.activation),
            **kernel_config(self),
        })
        return config
