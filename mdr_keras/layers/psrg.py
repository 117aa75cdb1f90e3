"""ADS personalized sequence representation generation (PSRG): a per-sample generated linear map applied to
every behaviour-sequence item (ADS eq. 2-5)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import GenNetLayer, Kernels, check_real, input_list, input_shapes, last_dim

INPUTS = ("sequence", "domain_features")


@keras.utils.register_keras_serializable(package="mdr")
class PersonalizedSequenceRepresentation(GenNetLayer):
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
        super().__init__(hidden_units=hidden_units, activation=activation, kernel_initializer=kernel_initializer,
                         output_initializer=output_initializer, kernel_regularizer=kernel_regularizer, **kwargs)
        self.eta = check_real("eta", eta, 0, low_open=True)
        self.shared_initializer = keras.initializers.get(shared_initializer)

    def build(self, input_shape):
        seq_shape, dom_shape = input_shapes(self, input_shape, INPUTS)
        d_s = last_dim("sequence", seq_shape, "[B, T, d_S]")
        d_d = last_dim("domain_features", dom_shape, "[B, d_D]")
        self.seq_dim = d_s
        shared = self.shared_initializer

        def shared_init(shape, dtype=None, **kwargs):  # a [d_S, d_S] matrix, flattened row-major
            return tf.reshape(shared((d_s, d_s), dtype=dtype), shape)

        self.shared_weight = self.add_weight(name="shared_weight", shape=(d_s * d_s,), initializer=shared_init,
                                             regularizer=self.kernel_regularizer)
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)
        self._build_gen_net(kernel, "weight_", d_d, d_s * d_s)  # eq. 2: weight_hidden_kernel, ...
        self._build_gen_net(kernel, "bias_", d_d, d_s)  # eq. 4
        super().build(input_shape)

    def call(self, inputs, training=None):
        seq, dom = (tf.cast(tf.convert_to_tensor(t), self.compute_dtype) for t in input_list(self, inputs, INPUTS))
        private = tf.sigmoid(self._gen_net("weight_", dom))  # eq. 2
        generated = self.eta * self.shared_weight * private  # eq. 3, [B, d_S * d_S]
        weight = tf.reshape(generated, [-1, self.seq_dim, self.seq_dim])  # row-major: W[b, i, j]
        bias = self._gen_net("bias_", dom)  # eq. 4, [B, d_S]
        return tf.einsum("btj,bij->bti", seq, weight) + bias[:, None, :]  # eq. 5

    def compute_output_shape(self, input_shape):
        return input_shapes(self, input_shape, INPUTS)[0]

    def get_config(self):
        config = super().get_config()
        config.update({"eta": self.eta, "shared_initializer": keras.initializers.serialize(self.shared_initializer)})
        return config
