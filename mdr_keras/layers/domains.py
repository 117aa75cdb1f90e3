"""Helpers of the per-domain layers: domain index checking and per-domain weight initialisation."""
from __future__ import annotations

import numbers

import tensorflow as tf
import tf_keras as keras


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def per_domain(initializer):
    """Initialises each domain's slice `shape[1:]` on its own, so the leading domain axis does not
    count in the fan-in / fan-out of variance-scaling initialisers. Each slice gets a fresh copy of
    the initialiser (seed + i when seeded): a Keras initialiser instance returns the same values on
    every call, which would start all domains (and both SE kernels) from the same weights."""

    def fresh(i):
        if not isinstance(initializer, keras.initializers.Initializer):
            return initializer  # a plain function: random on every call
        config = initializer.get_config()
        if config.get("seed") is not None:
            config["seed"] = config["seed"] + i
        return type(initializer).from_config(config)

    def init(shape, dtype=None, **kwargs):
        return tf.stack([fresh(i)(shape[1:], dtype=dtype) for i in range(shape[0])])

    return init


def domain_indices(domain, num_domains: int):
    """int32 [B] domain indices from a [B] or [B, 1] tensor, asserted to lie in [0, num_domains)."""
    domain = tf.convert_to_tensor(domain)
    if domain.shape.rank == 2:
        domain = tf.squeeze(domain, axis=-1)
    elif domain.shape.rank != 1:
        raise ValueError(f"`domain` must have shape [B] or [B, 1]. Received: domain.shape={domain.shape}")
    domain = tf.cast(domain, tf.int32)
    checks = [tf.debugging.assert_non_negative(domain, message="domain index < 0"),
              tf.debugging.assert_less(domain, num_domains, message="domain index >= num_domains")]
    with tf.control_dependencies(checks):
        return tf.identity(domain)
