"""Domain balance optimization (DBO) of D3: per-sample BCE weights from domain complexity (attention entropy)
and domain specificity (the fusion gate), switched on after a fraction of training (D3 eq. 15-19)."""
from __future__ import annotations

import dataclasses
import math
import numbers

import tensorflow as tf
import tf_keras as keras


def attention_entropy(attention):
    """Domain complexity `c` `[B]` of eq. 15: the mean entropy of the rows of each sample's attention.

    `c_i = -(1/n) sum_m sum_k A_imk log A_imk` for `attention` `[B, n, n]` (rows summing to 1), in
    `[0, log n]`. Eq. 15 is printed without the minus sign (a non-positive "entropy"), contradicting
    "higher entropy -> more complex -> larger weight"; the sign is fixed. `0 log 0 = 0` (`xlogy`).
    """
    attention = tf.cast(attention, tf.float32)
    if attention.shape.rank != 3:
        raise ValueError(f"`attention` must be [B, n, n]. Received: attention.shape={attention.shape}")
    return -tf.reduce_mean(tf.reduce_sum(tf.math.xlogy(attention, attention), axis=-1), axis=-1)


def normalized_complexity(complexity, lower=0.1, upper=1.0, epsilon=1e-6):
    """`c' = clip((c - mean(c)) / (2 (std(c) + epsilon)) + 1/2, lower, upper)` over the batch (eq. 16).

    `std` is the population standard deviation of the batch (the reference code's numpy default);
    `epsilon` keeps a batch of equal complexities (or of one row) at `c' = 1/2`.
    """
    c = tf.cast(complexity, tf.float32)
    mean, variance = tf.nn.moments(c, axes=[0])
    return tf.clip_by_value((c - mean) / (2.0 * (tf.sqrt(variance) + epsilon)) + 0.5, lower, upper)


def _number(name, value, low=None, high=None, low_open=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"
        raise ValueError(f"`{name}` must be a number in {bounds}. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class DomainBalance:
    """D3's domain balance optimization: per-sample weights of the CTR loss (eq. 15-19).

        c_i    = mean row entropy of sample i's DSFS attention A_i           (eq. 15, sign fixed)
        c'     = clip((c - mean(c)) / (2 std(c)) + 1/2, lower, upper)         (eq. 16, batch statistics)
        w^cpl  = lambda_1 + alpha_1 c'                                        (eq. 17, domain complexity)
        w^spf  = lambda_2 + alpha_2 g_sp                                      (eq. 18, domain specificity)
        loss   = mean_i  w^cpl_i w^spf_i BCE(y_i, p_i)                        (eq. 19)

    The mean and std of eq. 16 are those of the batch given (per replica under a `tf.distribute`
    strategy). The weights are constants for the optimiser (`tf.stop_gradient`; not stated in the paper, but
    otherwise the model lowers its loss by shrinking `g_sp` and the attention entropy; the reference
    code detaches them too). They apply only from `start_fraction` of the training steps on (the
    paper's "ratio of introducing loss adaptation", tuned in {0, 0.25, 0.5, 0.75}, best at 0.5-0.75);
    before that every weight is 1. `start_fraction=1` never applies them. Evaluation metrics use the
    unweighted loss.

    Either factor can be left out by passing None for its input (the STAR / SAR-Net "w*" variant uses
    only `w^spf`). The paper tunes lambda / alpha in {0, 0.1, ..., 1} without giving the final values;
    the defaults are the reference code's (`w^cpl` in [0.6, 1.5], `w^spf` in (0.5, 1.5)).

    A `train_step` uses it as

        out = dsfs(fields, return_attention=True)      # DomainSensitiveFeatureSelection
        probs = head(out["output"])
        loss = balance.loss(labels, probs, out["attention"], out["specific_gate"],
                            step=self.optimizer.iterations, total_steps=total_steps)

    Attributes:
        lower: lower bound `l` of `c'` (>= 0). Default 0.1 (the paper's).
        upper: upper bound `u` of `c'` (> lower). Default 1 (the paper's).
        lambda_1: shift of `w^cpl` (>= 0). Default 0.5.
        alpha_1: scale of `w^cpl` (>= 0). Default 1.
        lambda_2: shift of `w^spf` (>= 0). Default 0.5.
        alpha_2: scale of `w^spf` (>= 0). Default 1.
        start_fraction: fraction of the training steps after which the weights apply, in [0, 1].
            Default 0.5.
        epsilon: added to the batch standard deviation in eq. 16 (> 0). Default 1e-6.

    `dataclasses.asdict(balance)` and `DomainBalance(**config)` (de)serialise it, e.g. inside a model's
    `get_config`.

    Reference:
        Jia et al., "D3: A Methodological Exploration of Domain Division, Modeling, and Balance in
        Multi-Domain Recommendations", AAAI 2024, section "Domain Balance Optimization Module" (eq. 15-18),
        "Optimization" (eq. 19), "Implementation Details" (l, u, the start ratio) and Fig. 3.
    """

    lower: float = 0.1
    upper: float = 1.0
    lambda_1: float = 0.5
    alpha_1: float = 1.0
    lambda_2: float = 0.5
    alpha_2: float = 1.0
    start_fraction: float = 0.5
    epsilon: float = 1e-6

    def __post_init__(self):
        _number("lower", self.lower, low=0.0)
        _number("upper", self.upper, low=self.lower, low_open=True)
        for name in ("lambda_1", "alpha_1", "lambda_2", "alpha_2"):
            _number(name, getattr(self, name), low=0.0)
        _number("start_fraction", self.start_fraction, low=0.0, high=1.0)
        _number("epsilon", self.epsilon, low=0.0, low_open=True)
        # A zero weight would silently drop rows from the loss.
        if self.lambda_1 + self.alpha_1 * self.lower <= 0.0:
            raise ValueError("`lambda_1 + alpha_1 * lower` must be > 0 (else w^cpl can be 0). "
                             f"Received: lambda_1={self.lambda_1!r}, alpha_1={self.alpha_1!r}, lower={self.lower!r}")
        if self.lambda_2 + self.alpha_2 <= 0.0:
            raise ValueError("`lambda_2` and `alpha_2` must not both be 0 (else w^spf is 0). "
                             f"Received: lambda_2={self.lambda_2!r}, alpha_2={self.alpha_2!r}")

    def weights(self, attention=None, specific_gate=None):
        """The per-sample weights `w^cpl * w^spf` `[B]` (float32, no gradient), always applied.

        `attention` `[B, n, n]` gives `w^cpl` (eq. 15-17), `specific_gate` `g_sp` `[B]` or `[B, 1]` gives
        `w^spf` (eq. 18); a factor whose input is None is 1. At least one must be given.
        """
        if attention is None and specific_gate is None:
            raise ValueError("DBO needs `attention` and/or `specific_gate`. Received: both None")
        weights = 1.0
        if attention is not None:
            c = normalized_complexity(attention_entropy(attention), self.lower, self.upper, self.epsilon)
            weights = self.lambda_1 + self.alpha_1 * c
        if specific_gate is not None:
            g_sp = tf.reshape(tf.cast(specific_gate, tf.float32), [-1])
            weights = weights * (self.lambda_2 + self.alpha_2 * g_sp)
        return tf.stop_gradient(weights)

    def active(self, step, total_steps):
        """Whether DBO applies at `step` (0-based) of `total_steps`: `step >= start_fraction * total_steps`."""
        return dbo_active(step, total_steps, self.start_fraction)

    def loss(self, labels, probs, attention=None, specific_gate=None, step=None, total_steps=None,
             from_logits=False):
        """Eq. 19: the mean DBO-weighted BCE; unweighted before `start_fraction` of `total_steps` when
        `step` and `total_steps` are given (else the weights always apply)."""
        weights = self.weights(attention, specific_gate)
        if step is not None or total_steps is not None:
            if step is None or total_steps is None:
                raise ValueError(f"Give both `step` and `total_steps`. Received: step={step!r}, "
                                 f"total_steps={total_steps!r}")
            weights = tf.where(self.active(step, total_steps), weights, tf.ones_like(weights))
        return weighted_bce(labels, probs, weights, from_logits=from_logits)


def domain_balance_weights(attention=None, specific_gate=None, **hyperparameters):
    """The DBO weights `w^cpl * w^spf` `[B]` (no gradient) of eq. 15-18; keyword arguments as `DomainBalance`."""
    return DomainBalance(**hyperparameters).weights(attention, specific_gate)


def dbo_active(step, total_steps, start_fraction=0.5):
    """Bool tensor: True from step `start_fraction * total_steps` on (steps counted from 0), so 0 = always
    and 1 = never. `step` may be a tensor (e.g. `optimizer.iterations`)."""
    _number("start_fraction", start_fraction, low=0.0, high=1.0)
    return tf.cast(step, tf.float64) >= start_fraction * tf.cast(total_steps, tf.float64)


def weighted_bce(labels, probs, weights=None, from_logits=False):
    """`mean_i weights_i * BCE(labels_i, probs_i)` (eq. 19; the mean over the batch, not divided by the
    sum of the weights). `labels`, `probs` (or logits) and `weights` are `[B]` or `[B, 1]`; float32 result.
    Probabilities are clipped to `[eps, 1 - eps]` like Keras' `binary_crossentropy`."""
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
    probs = tf.reshape(tf.cast(probs, tf.float32), [-1])
    if from_logits:
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=probs)
    else:
        bce = keras.backend.binary_crossentropy(labels, probs)
    if weights is not None:
        bce = tf.reshape(tf.cast(weights, tf.float32), [-1]) * bce
    # 0, not NaN, for a batch without rows (a replica's share of a last partial batch).
    return tf.math.divide_no_nan(tf.reduce_sum(bce), tf.cast(tf.size(bce), tf.float32))
