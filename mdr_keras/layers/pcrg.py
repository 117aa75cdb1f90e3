"""ADS personalized candidate representation generation (PCRG): the Multi-Query Gen-Net, one query per
sequence position or per chunk of adjacent positions (ADS eq. 6-7)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domains import is_int as _is_int
from mdr_keras.layers.psrg import fresh_initializer


@keras.utils.register_keras_serializable(package="mdr")
class MultiQueryGenerator(keras.layers.Layer):
    """PCRG of ADS: T personalised candidate queries, query t meant for sequence position t.

    For a row with domain features `E_D` (`[d_D]`) and candidate embedding `E_Q` (`[d_Q]`):

        E_Q-private = act([E_D, E_Q] W_q1 + b_q1) W_q2 + b_q2        [G * d_Q]   (eq. 6)
        query[t]    = E_Q-private[t // C] + E_Q,   t = 0..T-1                      (eq. 7)

    with C = `chunk_size` items per chunk and G = ceil(T / C) chunks. Chunk g covers the adjacent
    positions `[g C, (g + 1) C)` (Chunked-Query Generation): the G chunk queries are repeat-interleaved
    (`tf.repeat`, not `tf.tile`) C times and cut to T, which is eq. 6-7's "T padded to a multiple of G" with
    the padding positions' queries dropped; when C does not divide T the last chunk is the short one.
    `chunk_size=1` is the unchunked Multi-Query Gen-Net (G = T, eq. 6 as written). The output layer costs
    `d_h * G * d_Q` weights. The residual adds the original query to every position (E_Q-shared, the
    tiled E_Q).

    Naming: the paper's G is the number of chunks, its Fig. 4-5 "Chunk K" the items per chunk; the layer
    takes the items per chunk (`chunk_size`, the K of "Chunk K" in {1, 2, 5, 10}) and derives G. Chunks
    index positions of the padded sequence, so keep one padding side (e.g. most recent item first) in
    training and serving.

    The sequence length T is a constructor argument (the size of the output layer depends on it, and
    the padded length is fixed by the feature spec), so the call takes only what eq. 6 reads.

    Initialisation (not stated in the paper): the output layer W_q2, b_q2 starts at zero
    (`output_initializer`), so every query starts as E_Q (the "w/o PCRG" model); the hidden layer uses
    `kernel_initializer`.

    Args:
        sequence_length: T, the padded sequence length (> 0).
        chunk_size: items per chunk C, in `[1, sequence_length]`. Default 1 (one query per position).
        hidden_units: hidden width d_h of the gen-net (> 0). Default 64.
        activation: hidden activation. Default `"relu"` (eq. 6).
        kernel_initializer: initialiser of the hidden kernel W_q1. Default `"glorot_uniform"`.
        output_initializer: initialiser of the output kernel W_q2. Default `"zeros"`.
        kernel_regularizer: optional regulariser of both kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[domain_features, query]`: `domain_features` float `[B, d_D]` (E_D), `query` float
            `[B, d_Q]` (the candidate embedding E_Q).
        training: unused.

    Returns:
        The personalised queries `E_Q-personalized`, `[B, sequence_length, d_Q]`.

    Reference:
        Chai et al., "Adaptive Domain Scaling for Personalized Sequential Modeling in Recommenders",
        SIGIR 2025, sec. 2.2.2 (PCRG): eq. 6 (Multi-Query Gen-Net), eq. 7 (residual with the shared
        query), "Chunked-Query Generation" and footnote 2; sec. 3.4 / Fig. 4-5 (items per chunk).
    """

    def __init__(self, sequence_length, chunk_size=1, hidden_units=64, activation="relu",
                 kernel_initializer="glorot_uniform", output_initializer="zeros", kernel_regularizer=None,
                 **kwargs):
        super().__init__(**kwargs)
        if not _is_int(sequence_length) or sequence_length < 1:
            raise ValueError("`sequence_length` must be a positive int. "
                             f"Received: sequence_length={sequence_length!r}")
        if not _is_int(chunk_size) or not 1 <= chunk_size <= sequence_length:
            raise ValueError(f"`chunk_size` must be an int in [1, sequence_length={sequence_length}]. "
                             f"Received: chunk_size={chunk_size!r}")
        if not _is_int(hidden_units) or hidden_units < 1:
            raise ValueError(f"`hidden_units` must be a positive int. Received: hidden_units={hidden_units!r}")
        try:
            self.activation = keras.activations.get(activation)
        except (ValueError, TypeError) as error:
            raise ValueError(f"Unknown `activation`. Received: activation={activation!r}") from error
        self.sequence_length = int(sequence_length)
        self.chunk_size = int(chunk_size)
        self.num_chunks = -(-self.sequence_length // self.chunk_size)  # G = ceil(T / C)
        self.hidden_units = int(hidden_units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    @staticmethod
    def _split_shapes(input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError("MultiQueryGenerator expects inputs [domain_features, query]. "
                             f"Received: input_shape={input_shape}")
        return tf.TensorShape(input_shape[0]), tf.TensorShape(input_shape[1])

    def build(self, input_shape):
        dom_shape, query_shape = self._split_shapes(input_shape)
        for name, shape in (("domain_features", dom_shape), ("query", query_shape)):
            if shape.rank != 2 or shape[-1] is None:
                raise ValueError(f"`{name}` must be [B, dim] with a known dim. Received: {name}.shape={shape}")
        d_in, d_q, d_h = int(dom_shape[-1]) + int(query_shape[-1]), int(query_shape[-1]), self.hidden_units
        self.query_dim = d_q
        self.hidden_kernel = self.add_weight(name="hidden_kernel", shape=(d_in, d_h),
                                             initializer=fresh_initializer(self.kernel_initializer, 1),
                                             regularizer=self.kernel_regularizer)
        self.hidden_bias = self.add_weight(name="hidden_bias", shape=(d_h,), initializer="zeros")
        self.output_kernel = self.add_weight(name="output_kernel", shape=(d_h, self.num_chunks * d_q),
                                             initializer=fresh_initializer(self.output_initializer, 2),
                                             regularizer=self.kernel_regularizer)
        self.output_bias = self.add_weight(name="output_bias", shape=(self.num_chunks * d_q,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("MultiQueryGenerator expects inputs [domain_features, query]. "
                             f"Received: inputs={inputs!r}")
        dom, query = (tf.cast(tf.convert_to_tensor(t), self.compute_dtype) for t in inputs)
        hidden = self.activation(tf.matmul(tf.concat([dom, query], axis=-1), self.hidden_kernel) + self.hidden_bias)
        private = tf.matmul(hidden, self.output_kernel) + self.output_bias  # eq. 6, [B, G * d_Q]
        private = tf.reshape(private, [-1, self.num_chunks, self.query_dim])
        if self.chunk_size > 1:  # chunk g -> positions [g C, (g + 1) C): repeat-interleave, cut the padding
            private = tf.repeat(private, self.chunk_size, axis=1)[:, :self.sequence_length]
        return private + query[:, None, :]  # eq. 7: + E_Q tiled over the T positions

    def compute_output_shape(self, input_shape):
        _, query_shape = self._split_shapes(input_shape)
        return tf.TensorShape([query_shape[0], self.sequence_length, query_shape[-1]])

    def get_config(self):
        config = super().get_config()
        config.update({
            "sequence_length": self.sequence_length,
            "chunk_size": self.chunk_size,
            "hidden_units": self.hidden_units,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "output_initializer": keras.initializers.serialize(self.output_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)
            if self.kernel_regularizer is not None else None,
        })
        return config
