"""STAR multi-domain backbone: partitioned normalization, star-topology FC layers and the auxiliary network."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domain_batch_norm import DomainBatchNormalization
from mdr_keras.layers.plumbing import (DomainBackbone, Kernels, check_bool, check_real, check_units, domain_indices,
                                       last_dim, per_domain_dense)


@keras.utils.register_keras_serializable(package="mdr")
class STARBackbone(DomainBackbone):
    """Star Topology Adaptive Recommender backbone: PN, star-topology FCN and auxiliary network.

    For a row of domain `d` with features `x` and domain-indicator embedding `f`:

    1. Partitioned normalization (PN) of `x`:
       `z = (gamma * gamma_d) (x - mu_d) / sqrt(var_d + eps) + (beta + beta_d)`, with a shared
       scale / shift (`pn_gamma`, `pn_beta`, `[F]`, ones / zeros) times / plus the domain's
       (`pn_domain_gamma`, `pn_domain_beta`, `[D, F]`, ones / zeros). The statistics are those of
       the domain: in training the mean and variance of the batch's rows of domain `d` (STAR draws
       each batch from one domain; with mixed batches this is the same per domain), in inference
       domain `d`'s moving averages. They come from a `DomainBatchNormalization` without
       scale / shift (sublayer `pn_statistics`); the affine part is this layer's. STAR's figure of
       the single-domain model vs STAR puts PN on the concatenated embeddings, in place of the
       single-domain model's BN, so PN normalises `x` (once); `partitioned_norm=False` leaves `x`
       as is.
    2. Star-topology FCN: every layer is
       `(W_shared * W_d) z + b_shared + b_d` (elementwise product of the kernels), FC -> ReLU on
       hidden layers, linear last layer. The domain factors `W_d`, `b_d` start at ones / zeros, so
       every domain starts from the shared network (as `ADIBackbone`'s Network-Mul fusion).
    3. Auxiliary network over the domain embedding `f`: an MLP (ReLU hidden layers of
       widths `aux_units`, then a linear layer of width `units[-1]`) whose output is added to the
       main output: `E = FCN_d(z) + Aux(f)`. STAR's aux network reads the domain indicator and
       other domain features with a 1-wide output (a logit); here it reads the domain embedding and
       is as wide as the main output, so that in a tower it adds a learned per-domain vector.

    Per-domain weights are stacked `[D, ...]` and each row uses its own domain's slice (all D at
    once with `einsum`, then `gather`, as in `ADIBackbone`): rows of domain `d` give exactly zero
    gradient to other domains' factors and, with per-domain statistics, do not affect other
    domains' rows. `kernel_regularizer` applies to the shared and auxiliary kernels only (an L2
    pull of the domain factors would be towards 0, not towards their neutral value 1).

    Parameter count (F inputs, widths u_1..u_n, e-dim domain embedding):
    `(D + 1)(F u_1 + ... + u_{n-1} u_n) + 2 (D + 1) F` plus biases, plus the auxiliary network.
    E.g. F = 160, e = 16, D = 3 (trainable): `units=(16, 32), aux_units=(32,)` 15.4k, about an
    MLP (64, 32) (12.4k); `units=(128, 32)` 101.8k, about `ADIBackbone` with the retrieval model's
    defaults (96.6k).

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        units: widths of the star-topology FCN; the last layer is linear and its width is the output
            dim. Default `(64, 32)`.
        aux_units: widths of the auxiliary network's hidden (ReLU) layers, possibly empty (a linear
            map); its output layer has width `units[-1]`. Default `(32,)` (STAR's 2 layers).
        partitioned_norm: if True (default), PN on `x`; if False, none.
        pn_momentum: moving-statistics momentum of PN, in [0, 1]. Default 0.99.
        pn_epsilon: PN epsilon (> 0). Default 1e-3.
        dropout, output_activation, kernel_initializer, kernel_regularizer, **kwargs: as
            `DomainBackbone`'s (the output activation comes after the auxiliary output is added; the
            kernels are the shared and auxiliary ones).

    Call arguments:
        inputs: list `[x, domain, domain_embedding]`: `x` float `[B, F]`, the concatenated feature
            embeddings; `domain` int `[B]` or `[B, 1]` in `[0, num_domains)` (out-of-range values fail
            an assertion, outside XLA); `domain_embedding` float `[B, e]`, the auxiliary network's input.
        training: Python bool or bool tensor: PN batch statistics and moving-statistic updates, and
            dropout. Defaults to the Keras learning phase.

    Returns:
        Float `[B, units[-1]]`.

    Reference:
        Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for Multi-Domain
        CTR Prediction", CIKM 2021: the sections "Partitioned Normalization", "Star Topology
        Fully-Connected Network" and "Auxiliary Network"; ADI (Jiang et al., CIKM 2022) eq. 16-17.
    """

    def __init__(self, num_domains, units=(64, 32), aux_units=(32,), partitioned_norm=True, pn_momentum=0.99,
                 pn_epsilon=1e-3, dropout=0.0, output_activation=None, kernel_initializer="glorot_uniform",
                 kernel_regularizer=None, **kwargs):
        super().__init__(num_domains, dropout=dropout, output_activation=output_activation,
                         kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer, **kwargs)
        self.units = check_units("units", units)
        self.aux_units = check_units("aux_units", aux_units, allow_empty=True)
        self.partitioned_norm = check_bool("partitioned_norm", partitioned_norm)
        self.pn_momentum = check_real("pn_momentum", pn_momentum, 0, 1)
        self.pn_epsilon = check_real("pn_epsilon", pn_epsilon, 0, low_open=True)
        self._pn = DomainBatchNormalization(self.num_domains, momentum=self.pn_momentum, epsilon=self.pn_epsilon,
                                            center=False, scale=False, name="pn_statistics",
                                            dtype=self.dtype_policy) if partitioned_norm else None

    @property
    def output_dim(self):
        return self.units[-1]

    def _weight(self, name, shape, initializer):
        return self.add_weight(name=name, shape=shape, initializer=initializer)

    def build(self, input_shape):
        D, fan_in = self.num_domains, self._features(input_shape)
        emb_dim = last_dim("domain_embedding", input_shape[2], "[batch, e]")
        kernel = Kernels(self, self.kernel_initializer, self.kernel_regularizer)  # the shared and auxiliary kernels
        if self._pn is not None:
            with tf.name_scope(self._pn.name):  # as Keras does for a sublayer built on its first call
                self._pn.build([tf.TensorShape([None, fan_in]), tf.TensorShape([None])])
            self.pn_gamma = self._weight("pn_gamma", (fan_in,), "ones")
            self.pn_beta = self._weight("pn_beta", (fan_in,), "zeros")
            self.pn_domain_gamma = self._weight("pn_domain_gamma", (D, fan_in), "ones")
            self.pn_domain_beta = self._weight("pn_domain_beta", (D, fan_in), "zeros")
        self.shared_kernels, self.shared_biases, self.domain_kernels, self.domain_biases = [], [], [], []
        for i, units in enumerate(self.units):
            self.shared_kernels.append(kernel(f"shared_kernel_{i}", (fan_in, units)))
            self.shared_biases.append(self._weight(f"shared_bias_{i}", (units,), "zeros"))
            self.domain_kernels.append(self._weight(f"domain_kernel_{i}", (D, fan_in, units), "ones"))
            self.domain_biases.append(self._weight(f"domain_bias_{i}", (D, units), "zeros"))
            fan_in = units
        self.aux_kernels, self.aux_biases = [], []
        fan_in = emb_dim
        for i, units in enumerate(self.aux_units + self.units[-1:]):
            self.aux_kernels.append(kernel(f"aux_kernel_{i}", (fan_in, units)))
            self.aux_biases.append(self._weight(f"aux_bias_{i}", (units,), "zeros"))
            fan_in = units
        super().build(input_shape)

    def call(self, inputs, training=None):
        x, domain, emb = inputs
        h = tf.cast(tf.convert_to_tensor(x), self.compute_dtype)
        emb = tf.cast(tf.convert_to_tensor(emb), self.compute_dtype)
        index = domain_indices(domain, self.num_domains)
        if self._pn is not None:  # PN: per-domain statistics, (shared * domain) scale, shared + domain shift
            h = self._pn([h, index], training=training)
            h = (h * (self.pn_gamma * tf.gather(self.pn_domain_gamma, index))
                 + self.pn_beta + tf.gather(self.pn_domain_beta, index))
        last = len(self.units) - 1
        for i in range(len(self.units)):  # star FC: (W_shared * W_d) h + b_shared + b_d
            kernel = self.shared_kernels[i][None] * self.domain_kernels[i]  # [D, in, out]
            h = per_domain_dense(h, kernel, self.domain_biases[i], index) + self.shared_biases[i]
            if i < last:
                h = self._hidden(h, training)
        a = emb  # auxiliary network over the domain embedding, added to the main output
        for i, (kernel, bias) in enumerate(zip(self.aux_kernels, self.aux_biases)):
            a = tf.matmul(a, kernel) + bias
            if i < len(self.aux_kernels) - 1:
                a = self._hidden(a, training)
        return self._output(h + a)

    def get_config(self):
        config = super().get_config()
        config.update({"units": list(self.units), "aux_units": list(self.aux_units),
                       "partitioned_norm": self.partitioned_norm, "pn_momentum": self.pn_momentum,
                       "pn_epsilon": self.pn_epsilon})
        return config
