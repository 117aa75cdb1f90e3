"""ADS personalized candidate representation generation (PCRG): the Multi-Query Gen-Net, one query per
sequence position or per chunk of adjacent positions (ADS eq. 6-7)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import GenNetLayer, Kernels, check_int, input_list, input_shapes, last_dim

INPUTS = ("domain_features", "query")


@keras.utils.register_keras_serializable(package="mdr")
class MultiQueryGenerator(GenNetLayer):
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
        super().__init__(hidden_units=hidden_units, activation=activation, kernel_initializer=kernel_initializer,
                         output_initializer=output_initializer, kernel_regularizer=kernel_regularizer, **kwargs)
        self.sequence_length = check_int("sequence_length", sequence_length)
        self.chunk_size = check_int("chunk_size", chunk_size, high=self.sequence_length)
        self.num_chunks = -(-self.sequence_length // self.chunk_size)  # G = ceil(T / C)

    def build(self, input_shape):
        dom_shape, query_shape = input_shapes(self, input_shape, INPUTS)
        d_d = last_dim("domain_features", dom_shape, "[B, d_D]")
        self.query_dim = d_q = last_dim("query", query_shape, "[B, d_Q]")
        # eq. 6's W_q1, b_q1, W_q2, b_q2: hidden_kernel, hidden_bias, output_kernel, output_bias
        self._build_gen_net(Kernels(self, self.kernel_initializer, self.kernel_regularizer), "", d_d + d_q,
                            self.num_chunks * d_q)
        super().build(input_shape)

    def call(self, inputs, training=None):
        dom, query = (tf.cast(tf.convert_to_tensor(t), self.compute_dtype) for t in input_list(self, inputs, INPUTS))
        private = self._gen_net("", tf.concat([dom, query], axis=-1))  # eq. 6, [B, G * d_Q]
        private = tf.reshape(private, [-1, self.num_chunks, self.query_dim])
        if self.chunk_size > 1:  # chunk g -> positions [g C, (g + 1) C): repeat-interleave, cut the padding
            private = tf.repeat(private, self.chunk_size, axis=1)[:, :self.sequence_length]
        return private + query[:, None, :]  # eq. 7: + E_Q tiled over the T positions

    def compute_output_shape(self, input_shape):
        query_shape = input_shapes(self, input_shape, INPUTS)[1]
        return tf.TensorShape([query_shape[0], self.sequence_length, query_shape[-1]])

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length, "chunk_size": self.chunk_size})
        return config
