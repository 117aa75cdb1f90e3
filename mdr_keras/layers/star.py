"""STAR multi-domain backbone: partitioned normalization, star-topology FC layers and the auxiliary network."""
from __future__ import annotations

import numbers

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.domain_batch_norm import DomainBatchNormalization
from mdr_keras.layers.domains import domain_indices, is_int


def _units(name, value, allow_empty=False):
    if isinstance(value, (list, tuple)) and (value or allow_empty) and all(is_int(u) and u > 0 for u in value):
        return [int(u) for u in value]
    raise ValueError(f"`{name}` must be a {'' if allow_empty else 'non-empty '}list of positive ints. "
                     f"Received: {name}={value!r}")


@keras.utils.register_keras_serializable(package="mdr")
class STARBackbone(keras.layers.Layer):
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
        dropout: dropout rate in [0, 1) after every hidden (ReLU) layer. Default 0.
        output_activation: optional activation of the output (after the auxiliary output is added).
            Default None (linear).
        kernel_initializer: initialiser of the shared and auxiliary kernels. Default
            `"glorot_uniform"`.
        kernel_regularizer: optional regulariser of the shared and auxiliary kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

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
        super().__init__(**kwargs)
        if not is_int(num_domains) or num_domains < 1:
            raise ValueError(f"`num_domains` must be an int >= 1. Received: num_domains={num_domains!r}")
        self.units = _units("units", units)
        self.aux_units = _units("aux_units", aux_units, allow_empty=True)
        if not isinstance(partitioned_norm, bool):
            raise ValueError(f"`partitioned_norm` must be a bool. Received: partitioned_norm={partitioned_norm!r}")
        if isinstance(pn_momentum, bool) or not isinstance(pn_momentum, numbers.Real) or not 0 <= pn_momentum <= 1:
            raise ValueError(f"`pn_momentum` must be in [0, 1]. Received: pn_momentum={pn_momentum!r}")
        if isinstance(pn_epsilon, bool) or not isinstance(pn_epsilon, numbers.Real) or not pn_epsilon > 0:
            raise ValueError(f"`pn_epsilon` must be > 0. Received: pn_epsilon={pn_epsilon!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        try:
            self.output_activation = None if output_activation is None else keras.activations.get(output_activation)
        except ValueError as error:
            raise ValueError("`output_activation` must be None or a Keras activation. "
                             f"Received: output_activation={output_activation!r}") from error
        self.num_domains = int(num_domains)
        self.partitioned_norm = partitioned_norm
        self.pn_momentum = float(pn_momentum)
        self.pn_epsilon = float(pn_epsilon)
        self.dropout = float(dropout)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self._dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self._pn = DomainBatchNormalization(self.num_domains, momentum=self.pn_momentum, epsilon=self.pn_epsilon,
                                            center=False, scale=False, name="pn_statistics",
                                            dtype=self.dtype_policy) if partitioned_norm else None

    def _kernel(self, name, shape):
        """A shared / auxiliary kernel from a fresh copy of `kernel_initializer` (seed + 1000 n when seeded: an
        initialiser instance gives the same values on every call)."""
        init = self.kernel_initializer
        if isinstance(init, keras.initializers.Initializer):
            config = init.get_config()
            self._kernels_made = getattr(self, "_kernels_made", 0) + 1
            if config.get("seed") is not None:
                config["seed"] += 1000 * self._kernels_made
            init = type(init).from_config(config)
        return self.add_weight(name=name, shape=shape, initializer=init, regularizer=self.kernel_regularizer)

    def _weight(self, name, shape, initializer):
        return self.add_weight(name=name, shape=shape, initializer=initializer)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
            raise ValueError("STARBackbone expects inputs [x, domain, domain_embedding]. "
                             f"Received: input_shape={input_shape}")
        x_shape, emb_shape = tf.TensorShape(input_shape[0]), tf.TensorShape(input_shape[2])
        if x_shape.rank != 2 or x_shape[-1] is None:
            raise ValueError(f"`x` must be [batch, features] with known features. Received: x.shape={x_shape}")
        if emb_shape.rank != 2 or emb_shape[-1] is None:
            raise ValueError("`domain_embedding` must be [batch, e] with known e. "
                             f"Received: domain_embedding.shape={emb_shape}")
        D, fan_in = self.num_domains, int(x_shape[-1])
        if self._pn is not None:
            with tf.name_scope(self._pn.name):  # as Keras does for a sublayer built on its first call
                self._pn.build([tf.TensorShape([None, fan_in]), tf.TensorShape([None])])
            self.pn_gamma = self._weight("pn_gamma", (fan_in,), "ones")
            self.pn_beta = self._weight("pn_beta", (fan_in,), "zeros")
            self.pn_domain_gamma = self._weight("pn_domain_gamma", (D, fan_in), "ones")
            self.pn_domain_beta = self._weight("pn_domain_beta", (D, fan_in), "zeros")
        self.shared_kernels, self.shared_biases, self.domain_kernels, self.domain_biases = [], [], [], []
        for i, units in enumerate(self.units):
            self.shared_kernels.append(self._kernel(f"shared_kernel_{i}", (fan_in, units)))
            self.shared_biases.append(self._weight(f"shared_bias_{i}", (units,), "zeros"))
            self.domain_kernels.append(self._weight(f"domain_kernel_{i}", (D, fan_in, units), "ones"))
            self.domain_biases.append(self._weight(f"domain_bias_{i}", (D, units), "zeros"))
            fan_in = units
        self.aux_kernels, self.aux_biases = [], []
        fan_in = int(emb_shape[-1])
        for i, units in enumerate(self.aux_units + self.units[-1:]):
            self.aux_kernels.append(self._kernel(f"aux_kernel_{i}", (fan_in, units)))
            self.aux_biases.append(self._weight(f"aux_bias_{i}", (units,), "zeros"))
            fan_in = units
        super().build(input_shape)

    def _hidden(self, z, training):
        h = tf.nn.relu(z)
        return self._dropout(h, training=training) if self.dropout else h

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
            h = tf.einsum("bi,dio->bdo", h, kernel) + self.domain_biases[i]
            h = tf.gather(h, index, axis=1, batch_dims=1) + self.shared_biases[i]
            if i < last:
                h = self._hidden(h, training)
        a = emb  # auxiliary network over the domain embedding, added to the main output
        for i, (kernel, bias) in enumerate(zip(self.aux_kernels, self.aux_biases)):
            a = tf.matmul(a, kernel) + bias
            if i < len(self.aux_kernels) - 1:
                a = self._hidden(a, training)
        h = h + a
        return h if self.output_activation is None else self.output_activation(h)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([tf.TensorShape(input_shape[0])[0], self.units[-1]])

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains,
            "units": list(self.units),
            "aux_units": list(self.aux_units),
            "partitioned_norm": self.partitioned_norm,
            "pn_momentum": self.pn_momentum,
            "pn_epsilon": self.pn_epsilon,
            "dropout": self.dropout,
            "output_activation": None if self.output_activation is None
            else keras.activations.serialize(self.output_activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": None if self.kernel_regularizer is None
            else keras.regularizers.serialize(self.kernel_regularizer),
        })
        return config
