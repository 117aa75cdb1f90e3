"""Domain fusion (DF) gate of D3: a 2-way softmax gate fusing a generated per-sample weight with a global
one (D3 eq. 11-13)."""
from __future__ import annotations

import itertools

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domains import is_int as _is_int

FUSIONS = ("mul", "sum")


def units_list(name, value):
    """The widths as a list of positive ints; an empty list is allowed (no hidden layer)."""
    if isinstance(value, (list, tuple)) and all(_is_int(u) and u > 0 for u in value):
        return [int(u) for u in value]
    raise ValueError(f"`{name}` must be a list of positive ints. Received: {name}={value!r}")


def fresh_initializer(initializer, call):
    """A new copy of a Keras initialiser (seed + 1000 * call when seeded): an initialiser instance returns the
    same values on every call, which would start weights of the same shape from identical values."""
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer
    config = initializer.get_config()
    if config.get("seed") is not None:
        config["seed"] = config["seed"] + 1000 * call
    return type(initializer).from_config(config)


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
        gate_units = units_list("gate_units", gate_units)
        if fusion not in FUSIONS:
            raise ValueError(f"`fusion` must be one of {FUSIONS}. Received: fusion={fusion!r}")
        if not isinstance(fuse_bias, bool):
            raise ValueError(f"`fuse_bias` must be a bool. Received: fuse_bias={fuse_bias!r}")
        try:
            self.activation = keras.activations.get(activation)
        except (ValueError, TypeError) as error:
            raise ValueError(f"Unknown `activation`. Received: activation={activation!r}") from error
        self.gate_units = gate_units
        self.fusion = fusion
        self.fuse_bias = fuse_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    @staticmethod
    def _split_shapes(input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
            raise ValueError("DomainFusionGate expects inputs [gate_input, specific_kernel, specific_bias]. "
                             f"Received: input_shape={input_shape}")
        return [tf.TensorShape(s) for s in input_shape]

    def build(self, input_shape):
        gate_shape, kernel_shape, bias_shape = self._split_shapes(input_shape)
        if gate_shape.rank != 2 or gate_shape[-1] is None:
            raise ValueError(f"`gate_input` must be [batch, G] with known G. Received: shape={gate_shape}")
        if kernel_shape.rank != 3 or None in kernel_shape[1:]:
            raise ValueError("`specific_kernel` must be [batch, F, h] with known F and h. "
                             f"Received: shape={kernel_shape}")
        if bias_shape.rank != 2 or bias_shape[-1] != kernel_shape[-1]:
            raise ValueError(f"`specific_bias` must be [batch, h] with h = {kernel_shape[-1]}. "
                             f"Received: shape={bias_shape}")
        calls = itertools.count(1)

        def kernel(name, shape):
            return self.add_weight(name=name, shape=shape, regularizer=self.kernel_regularizer,
                                   initializer=fresh_initializer(self.kernel_initializer, next(calls)))

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

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 3:
            raise ValueError("DomainFusionGate expects inputs [gate_input, specific_kernel, specific_bias]. "
                             f"Received: inputs={inputs!r}")
        gate_input, kernel, bias = inputs
        kernel = tf.cast(kernel, self.compute_dtype)
        bias = tf.cast(bias, self.compute_dtype)
        gate = self.gate(gate_input)
        g = tf.cast(gate, self.compute_dtype)
        g_sp, g_sh = g[:, :1], g[:, 1:]  # [B, 1] each
        fused_kernel = self._fuse(kernel, self.global_kernel, g_sp[:, :, None], g_sh[:, :, None])
        fused_bias = self._fuse(bias, self.global_bias, g_sp, g_sh) if self.fuse_bias else bias
        return fused_kernel, fused_bias, gate

    def compute_output_shape(self, input_shape):
        gate_shape, kernel_shape, bias_shape = self._split_shapes(input_shape)
        return kernel_shape, bias_shape, tf.TensorShape([gate_shape[0], 2])

    def get_config(self):
        config = super().get_config()
        config.update({
            "gate_units": list(self.gate_units),
            "fusion": self.fusion,
            "fuse_bias": self.fuse_bias,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
            if self.kernel_regularizer is not None else None,
        })
        return config
