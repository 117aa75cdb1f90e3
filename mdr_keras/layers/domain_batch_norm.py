"""Domain-specific batch normalization (DSBN) of ADI, eq. (20)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from mdr_keras.layers.plumbing import check_int, check_real, domain_indices, input_list, input_shapes


@keras.utils.register_keras_serializable(package="mdr")
class DomainBatchNormalization(keras.layers.Layer):
    """Batch normalization with its own statistics and scale/shift per domain.

    Eq. (20) of ADI: a row of domain `d` is normalized as

        y = gamma[d] * (x - mu[d]) / sqrt(var[d] + epsilon) + beta[d]

    In training, `mu[d]` and `var[d]` are the mean and (biased) variance of the rows of domain `d`
    in the batch only, so rows of other domains never enter them; in inference they are domain
    `d`'s moving mean and variance. Each present domain's moving statistics are updated like
    Keras `BatchNormalization`'s:
    `moving = moving * momentum + batch_stat * (1 - momentum)`; a domain with no row in the
    batch keeps its moving statistics unchanged. (A domain with a single row in the batch gets
    variance 0, so its row is normalized to `beta[d]`, as Keras BN does for a batch of one.)

    Under a `tf.distribute` strategy with several replicas (e.g. `MirroredStrategy`), the
    per-domain row counts, sums and sums of squares are summed across replicas (one
    `all_reduce`) before the statistics are formed, so the statistics, and the moving-statistic
    updates, are those of the global batch (as in Keras `SyncBatchNormalization`).

    Statistics are computed in float32 when `x` is float16 / bfloat16 (mixed precision) and the
    output is cast back to the dtype of `x`.

    The variables mirror Keras `BatchNormalization`'s with a leading domain axis, each of shape
    `[num_domains, units]`: `gamma` and `beta` (trainable, absent when `scale` / `center` is
    False), `moving_mean` and `moving_variance` (non-trainable, on-read synchronized and averaged
    across replicas). They are the per-domain statistics to inspect.

    Args:
        num_domains: number of domains D (>= 1); domain indices are in `[0, D)`.
        momentum: momentum of the moving average, in [0, 1]. Defaults to 0.99.
        epsilon: small float (> 0) added to the variance. Defaults to 1e-3.
        center: if True, add the per-domain offset `beta`. Defaults to True.
        scale: if True, multiply by the per-domain scale `gamma`. Defaults to True.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: list or tuple `[x, domain]`: `x` float of shape `[B, units]` or
            `[B, T, ..., units]` (the statistics are taken over every axis but the last, a row's
            domain applying to all its positions); `domain` int of shape `[B]` or `[B, 1]`, values
            in `[0, num_domains)` (out-of-range values fail an assertion, outside XLA).
        training: Python bool or bool tensor. True: batch statistics per domain and moving-stat
            update; False: moving statistics. Defaults to the Keras learning phase.

    Returns:
        A tensor of the shape and dtype of `x`.

    Reference:
        Jiang et al., "Adaptive Domain Interest Network for Multi-domain Recommendation",
        CIKM 2022, Sec. 4.2.1, eq. (20); Chang et al., "Domain-Specific Batch Normalization for
        Unsupervised Domain Adaptation", CVPR 2019.
    """

    def __init__(self, num_domains: int, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = check_int("num_domains", num_domains)
        self.momentum = check_real("momentum", momentum, 0, 1)
        self.epsilon = check_real("epsilon", epsilon, 0, low_open=True)
        self.center = bool(center)
        self.scale = bool(scale)
        self.supports_masking = False

    def build(self, input_shape):
        x_shape = input_shapes(self, input_shape, ("x", "domain"))[0]
        if x_shape.rank is None or x_shape.rank < 2 or x_shape[-1] is None:
            raise ValueError("`x` must have a known rank >= 2 and a defined last axis. "
                             f"Received: x shape={x_shape}")
        self.units = int(x_shape[-1])
        shape = (self.num_domains, self.units)
        # Variables in float32 under mixed precision, like Keras BN.
        dtype = self.dtype if self.dtype not in ("float16", "bfloat16") else "float32"
        self.gamma = self.add_weight(name="gamma", shape=shape, dtype=dtype, initializer="ones",
                                     trainable=True, experimental_autocast=False) if self.scale else None
        self.beta = self.add_weight(name="beta", shape=shape, dtype=dtype, initializer="zeros",
                                    trainable=True, experimental_autocast=False) if self.center else None
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, dtype=dtype, initializer="zeros", trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.MEAN,
            experimental_autocast=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, dtype=dtype, initializer="ones", trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.MEAN,
            experimental_autocast=False)
        super().build(input_shape)

    def _domain_per_row(self, x, domain):
        """Flattens x to [N, units] and gives each of its rows its domain (int32 [N])."""
        domain = domain_indices(domain, self.num_domains)
        rank = x.shape.rank
        if rank > 2:  # [B, T, ..., units]: every position of a row belongs to the row's domain
            domain = tf.reshape(domain, [-1] + [1] * (rank - 2))
            domain = tf.broadcast_to(domain, tf.shape(x)[:-1])
        return tf.reshape(x, [-1, self.units]), tf.reshape(domain, [-1])

    def _batch_statistics(self, x, domain):
        """Per-domain count [D], mean [D, units], variance [D, units], global across replicas."""
        count = tf.math.unsorted_segment_sum(tf.ones_like(x[:, :1]), domain, self.num_domains)
        total = tf.math.unsorted_segment_sum(x, domain, self.num_domains)
        total_sq = tf.math.unsorted_segment_sum(tf.square(x), domain, self.num_domains)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            stacked = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([count, total, total_sq], axis=1))
            count, total, total_sq = tf.split(stacked, [1, self.units, self.units], axis=1)
        denom = tf.maximum(count, 1.0)
        mean = total / denom
        variance = tf.maximum(total_sq / denom - tf.square(mean), 0.0)  # biased, as Keras BN
        return tf.squeeze(count, axis=1), mean, variance

    def _update_moving(self, variable, value, present):
        decay = tf.cast(1.0 - self.momentum, variable.dtype)
        new = variable - (variable - tf.cast(value, variable.dtype)) * decay
        return variable.assign(tf.where(present[:, None], new, variable))

    def call(self, inputs, training=None):
        x, domain = input_list(self, inputs, ("x", "domain"))
        x = tf.convert_to_tensor(x)
        out_dtype = x.dtype
        stat_dtype = self.moving_mean.dtype
        flat, rows_domain = self._domain_per_row(tf.cast(x, stat_dtype), domain)
        if training is None:
            training = keras.backend.learning_phase()
        if isinstance(training, int):
            training = bool(training)

        def batch_stats():
            count, mean, variance = self._batch_statistics(flat, rows_domain)
            present = count > 0
            with tf.control_dependencies([self._update_moving(self.moving_mean, mean, present),
                                          self._update_moving(self.moving_variance, variance, present)]):
                return tf.identity(mean), tf.identity(variance)

        def moving_stats():
            return tf.identity(self.moving_mean), tf.identity(self.moving_variance)

        mean, variance = tf.__internal__.smart_cond.smart_cond(training, batch_stats, moving_stats)
        # Per-domain affine map y = x * a[d] + b[d], a = gamma / sqrt(var + eps), b = beta - mean * a.
        multiplier = tf.math.rsqrt(variance + self.epsilon)
        if self.gamma is not None:
            multiplier = multiplier * self.gamma
        offset = -mean * multiplier
        if self.beta is not None:
            offset = offset + self.beta
        y = flat * tf.gather(multiplier, rows_domain) + tf.gather(offset, rows_domain)
        if x.shape.rank > 2:
            y = tf.reshape(y, tf.shape(x))
            y.set_shape(x.shape)
        return tf.cast(y, out_dtype)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[0])

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_domains": self.num_domains,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        })
        return config
