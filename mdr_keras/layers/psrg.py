"""ADS personalized sequence representation generation (PSRG): a per-sample generated linear map applied to
every behaviour-sequence item (ADS eq. 2-5)."""
from __future__ import annotations

import numbers

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domains import is_int as _is_int


def fresh_initializer(initializer, n):
    """A new copy of a Keras initialiser for the n-th weight (seed + 1000 * n when seeded): an initialiser
    instance returns the same values on every call, which would start weights of one shape identically."""
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer  # a plain function: random on every call
    config = initializer.get_config()
    if config.get("seed") is not None:
        config["seed"] = config["seed"] + 1000 * n
    return type(initializer).from_config(config)


def check_positive_real(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0. Received: {name}={value!r}")
    return float(value)


@keras.utils.register_keras_serializable(package="mdr")
class PersonalizedSequenceRepresentation(keras.layers.Layer):
    """PSRG of ADS: transforms every sequence item with a linear map generated from the domain features.

    For a row with domain features `E_D` (`[d_D]`) and sequence `E_S` (`[T, d_S]`):

        W_private = sigmoid(act(E_D W_1 + b_1) W_2 + b_2)           [d_S * d_S]   (eq. 2)
        W_gen     = eta * (W_shared * W_private)                     [d_S * d_S]   (eq. 3)
        b_gen     = act(E_D W'_1 + b'_1) W'_2 + b'_2                 [d_S]         (eq. 4)
        E_S'[t]   = Reshape(W_gen) E_S[t] + b_gen,   t = 1..T                      (eq. 5)

    `W_shared` is one learned `[d_S * d_S]` vector shared by all rows; `W_private` (in (0, 1)) rescales it
    per row, `eta` widens the range to (0, eta) (it can rescale an entry of `W_shared`, never flip its
    sign). Reshape is row-major: `W[i, j] = W_gen[i * d_S + j]`, `E_S'[t, i] = sum_j W[i, j] E_S[t, j] +
    b_gen[i]`. The same map is used at every position of a row (per sample, not per item); there is no
    activation after eq. 5. The weight and bias gen-nets have their own hidden layers (W_1 vs W'_1).

    Initialisation (not stated in the paper): `W_shared` is the flattened `shared_initializer` of a
    `[d_S, d_S]` matrix, the identity by default; the output layers of both gen-nets (W_2, b_2, W'_2,
    b'_2) start at zero (`output_initializer`), so `W_private = 0.5`, and with the default `eta = 2`
    PSRG starts as exactly the identity map (the "w/o PSRG" model) and learns the personalisation.
    The hidden layers use `kernel_initializer`.

    Padding: PSRG has no mask; a padded (all-zero) item becomes `b_gen`, not zero. Padded positions
    must be masked downstream (`TargetAttention` gives them exactly zero weight).

    Args:
        hidden_units: width d_h of the hidden layer of both gen-nets (> 0). Default 64.
        eta: scale of eq. 3 (> 0). Default 2.0 (not stated in the paper; sigmoid(0) = 0.5 gives
            eta * W_private = 1 at the start).
        activation: hidden activation of both gen-nets. Default `"relu"` (eq. 2, 4).
        shared_initializer: initialiser of `W_shared`, applied to a `[d_S, d_S]` matrix and flattened.
            Default `"identity"` (`"glorot_uniform"` is the generic alternative).
        kernel_initializer: initialiser of the hidden kernels W_1, W'_1. Default `"glorot_uniform"`.
        output_initializer: initialiser of the output kernels W_2, W'_2. Default `"zeros"`.
        kernel_regularizer: optional regulariser of all kernels and of `W_shared`.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[sequence, domain_features]`: `sequence` float `[B, T, d_S]` (T may be unknown),
            `domain_features` float `[B, d_D]`, the concatenated domain-indicator and implicit-domain
            feature embeddings E_D.
        training: unused.

    Returns:
        The personalised sequence `E_S-personalized`, `[B, T, d_S]`.

    Reference:
        Chai et al., "Adaptive Domain Scaling for Personalized Sequential Modeling in Recommenders",
        SIGIR 2025, sec. 2.2.1 (PSRG): eq. 2 (private weight), eq. 3 (shared * private * eta), eq. 4
        (generated bias), eq. 5 (applied to every item).
    """

    def __init__(self, hidden_units=64, eta=2.0, activation="relu", shared_initializer="identity",
                 kernel_initializer="glorot_uniform", output_initializer="zeros", kernel_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        if not _is_int(hidden_units) or hidden_units < 1:
            raise ValueError(f"`hidden_units` must be a positive int. Received: hidden_units={hidden_units!r}")
        self.eta = check_positive_real("eta", eta)
        try:
            self.activation = keras.activations.get(activation)
        except (ValueError, TypeError) as error:
            raise ValueError(f"Unknown `activation`. Received: activation={activation!r}") from error
        self.hidden_units = int(hidden_units)
        self.shared_initializer = keras.initializers.get(shared_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    @staticmethod
    def _split_shapes(input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError("PersonalizedSequenceRepresentation expects inputs [sequence, domain_features]. "
                             f"Received: input_shape={input_shape}")
        return tf.TensorShape(input_shape[0]), tf.TensorShape(input_shape[1])

    def build(self, input_shape):
        seq_shape, dom_shape = self._split_shapes(input_shape)
        if seq_shape.rank != 3 or seq_shape[-1] is None:
            raise ValueError(f"`sequence` must be [B, T, d_S] with known d_S. Received: sequence.shape={seq_shape}")
        if dom_shape.rank != 2 or dom_shape[-1] is None:
            raise ValueError("`domain_features` must be [B, d_D] with known d_D. "
                             f"Received: domain_features.shape={dom_shape}")
        d_s, d_d, d_h = int(seq_shape[-1]), int(dom_shape[-1]), self.hidden_units
        self.seq_dim = d_s
        shared = self.shared_initializer

        def shared_init(shape, dtype=None, **kwargs):  # a [d_S, d_S] matrix, flattened row-major
            return tf.reshape(shared((d_s, d_s), dtype=dtype), shape)

        def kernel(name, shape, init, n):
            return self.add_weight(name=name, shape=shape, initializer=fresh_initializer(init, n),
                                   regularizer=self.kernel_regularizer)

        self.shared_weight = kernel("shared_weight", (d_s * d_s,), shared_init, 0)
        self.weight_hidden_kernel = kernel("weight_hidden_kernel", (d_d, d_h), self.kernel_initializer, 1)
        self.weight_hidden_bias = self.add_weight(name="weight_hidden_bias", shape=(d_h,), initializer="zeros")
        self.weight_output_kernel = kernel("weight_output_kernel", (d_h, d_s * d_s), self.output_initializer, 2)
        self.weight_output_bias = self.add_weight(name="weight_output_bias", shape=(d_s * d_s,),
                                                  initializer="zeros")
        self.bias_hidden_kernel = kernel("bias_hidden_kernel", (d_d, d_h), self.kernel_initializer, 3)
        self.bias_hidden_bias = self.add_weight(name="bias_hidden_bias", shape=(d_h,), initializer="zeros")
        self.bias_output_kernel = kernel("bias_output_kernel", (d_h, d_s), self.output_initializer, 4)
        self.bias_output_bias = self.add_weight(name="bias_output_bias", shape=(d_s,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("PersonalizedSequenceRepresentation expects inputs [sequence, domain_features]. "
                             f"Received: inputs={inputs!r}")
        seq, dom = (tf.cast(tf.convert_to_tensor(t), self.compute_dtype) for t in inputs)
        hidden = self.activation(tf.matmul(dom, self.weight_hidden_kernel) + self.weight_hidden_bias)
        private = tf.sigmoid(tf.matmul(hidden, self.weight_output_kernel) + self.weight_output_bias)  # eq. 2
        generated = self.eta * self.shared_weight * private  # eq. 3, [B, d_S * d_S]
        weight = tf.reshape(generated, [-1, self.seq_dim, self.seq_dim])  # row-major: W[b, i, j]
        hidden = self.activation(tf.matmul(dom, self.bias_hidden_kernel) + self.bias_hidden_bias)
        bias = tf.matmul(hidden, self.bias_output_kernel) + self.bias_output_bias  # eq. 4, [B, d_S]
        return tf.einsum("btj,bij->bti", seq, weight) + bias[:, None, :]  # eq. 5

    def compute_output_shape(self, input_shape):
        return self._split_shapes(input_shape)[0]

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_units": self.hidden_units,
            "eta": self.eta,
            "activation": keras.activations.serialize(self.activation),
            "shared_initializer": keras.initializers.serialize(self.shared_initializer),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_initializer": keras.initializers.serialize(self.output_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
            if self.kernel_regularizer is not None else None,
        })
        return config
