"""Domain balance optimization (D3 eq. 15-19): hand-computed entropies, normalisation, clipping and weights, the
weighted BCE, the start-of-DBO schedule, stop-gradient, configuration and argument checks."""
import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from mdr_keras.layers.dsfs import DomainSensitiveFeatureSelection
from mdr_keras.losses.domain_balance import (DomainBalance, attention_entropy, dbo_active, domain_balance_weights,
                                             normalized_complexity, weighted_bce)

LN2 = math.log(2.0)
# B = 3 samples, n = 2 fields; rows of each [2, 2] attention sum to 1.
ATTENTION = np.array([
    [[0.5, 0.5], [0.5, 0.5]],  # both rows uniform: entropy ln2 each -> c = (ln2 + ln2) / 2 = ln2 = 0.693147
    [[1.0, 0.0], [0.0, 1.0]],  # one-hot rows: entropy 0 (0 log 0 = 0) -> c = 0
    [[1.0, 0.0], [0.5, 0.5]],  # c = (0 + ln2) / 2 = 0.346574
], np.float32)
# eq. 16: mean(c) = ln2 / 2; c - mean = [ln2/2, -ln2/2, 0]; std = (ln2/2) sqrt(2/3) = 0.282978
#   (c - mean) / (2 std) = [sqrt(3/2)/2, -sqrt(3/2)/2, 0] = [0.612372, -0.612372, 0]; + 1/2 = [1.112372, -0.112372, 0.5]
RAW = 0.5 + np.sqrt(1.5) / 2 * np.array([1.0, -1.0, 0.0])
GATE = np.array([0.2, 0.5, 0.9], np.float32)  # g_sp


def test_attention_entropy_by_hand():
    np.testing.assert_allclose(attention_entropy(ATTENTION), [LN2, 0.0, LN2 / 2], rtol=1e-6, atol=1e-7)
    # the sign of eq. 15 is fixed: entropies are >= 0 and maximal (ln n) for uniform rows
    uniform = np.full((1, 4, 4), 0.25, np.float32)
    np.testing.assert_allclose(attention_entropy(uniform), [math.log(4.0)], rtol=1e-6)


def test_normalisation_and_clipping_by_hand():
    c = attention_entropy(ATTENTION)
    # default [l, u] = [0.1, 1]: 1.112372 -> u = 1, -0.112372 -> l = 0.1, 0.5 unchanged
    np.testing.assert_allclose(normalized_complexity(c), [1.0, 0.1, 0.5], rtol=1e-6)
    # [0, 2]: only the low one is clipped
    np.testing.assert_allclose(normalized_complexity(c, lower=0.0, upper=2.0), [RAW[0], 0.0, 0.5], rtol=1e-5)
    # [0.6, 0.8]: everything is clipped, 0.5 included
    np.testing.assert_allclose(normalized_complexity(c, lower=0.6, upper=0.8), [0.8, 0.6, 0.6], rtol=1e-6)


@pytest.mark.parametrize("values", [[0.7, 0.7, 0.7], [1.3]])
def test_equal_complexities_give_one_half(values):
    # std = 0 (equal values, or a batch of one): epsilon keeps c' = 1/2 -> w^cpl = 0.5 + 1 * 0.5 = 1
    np.testing.assert_allclose(normalized_complexity(np.array(values, np.float32)), [0.5] * len(values))
    attention = np.full((len(values), 3, 3), 1 / 3, np.float32)
    np.testing.assert_allclose(DomainBalance().weights(attention), [1.0] * len(values), rtol=1e-6)


def test_weights_by_hand():
    balance = DomainBalance()  # l 0.1, u 1, lambda 0.5, alpha 1
    # eq. 17: w^cpl = 0.5 + [1, 0.1, 0.5] = [1.5, 0.6, 1.0]
    np.testing.assert_allclose(balance.weights(ATTENTION), [1.5, 0.6, 1.0], rtol=1e-6)
    # eq. 18: w^spf = 0.5 + [0.2, 0.5, 0.9] = [0.7, 1.0, 1.4]  ([B, 1] gate accepted too)
    np.testing.assert_allclose(balance.weights(specific_gate=GATE[:, None]), [0.7, 1.0, 1.4], rtol=1e-6)
    # product: [1.5 * 0.7, 0.6 * 1.0, 1.0 * 1.4] = [1.05, 0.6, 1.4]
    expected = [1.05, 0.6, 1.4]
    np.testing.assert_allclose(balance.weights(ATTENTION, GATE), expected, rtol=1e-6)
    np.testing.assert_allclose(domain_balance_weights(ATTENTION, GATE), expected, rtol=1e-6)


def test_weights_with_other_hyperparameters_by_hand():
    kwargs = {"lambda_1": 0.0, "alpha_1": 1.0, "lambda_2": 1.0, "alpha_2": 0.5, "lower": 0.2, "upper": 2.0}
    # c' = clip([1.112372, -0.112372, 0.5], 0.2, 2) = [1.112372, 0.2, 0.5] = w^cpl (lambda_1 = 0, alpha_1 = 1)
    # w^spf = 1 + 0.5 [0.2, 0.5, 0.9] = [1.1, 1.25, 1.45] -> w = [1.112372 * 1.1, 0.2 * 1.25, 0.5 * 1.45]
    np.testing.assert_allclose(domain_balance_weights(ATTENTION, GATE, **kwargs),
                               [RAW[0] * 1.1, 0.25, 0.725], rtol=1e-5)


def test_weighted_bce_by_hand():
    labels, probs, weights = np.array([1.0, 0.0]), np.array([0.8, 0.4]), np.array([2.0, 0.5])
    # BCE = [-ln 0.8, -ln 0.6] = [0.223144, 0.510826]; mean(2 * 0.223144, 0.5 * 0.510826) = 0.350850
    expected = (2 * -math.log(0.8) + 0.5 * -math.log(0.6)) / 2
    np.testing.assert_allclose(weighted_bce(labels, probs, weights), expected, rtol=1e-5)
    logits = np.log(probs / (1 - probs))
    np.testing.assert_allclose(weighted_bce(labels[:, None], logits[:, None], weights, from_logits=True),
                               expected, rtol=1e-5)
    np.testing.assert_allclose(weighted_bce(labels, probs), (-math.log(0.8) - math.log(0.6)) / 2, rtol=1e-5)
    # No rows (a replica's share of a last partial batch): 0, not the NaN of an empty mean.
    assert float(weighted_bce(np.zeros([0]), np.zeros([0]), from_logits=True)) == 0.0


def test_dbo_active_schedule():
    steps = np.arange(10)
    assert [bool(dbo_active(s, 10)) for s in steps] == [s >= 5 for s in steps]  # default: from half way
    assert [bool(dbo_active(s, 8, 0.75)) for s in steps[:8]] == [s >= 6 for s in steps[:8]]
    assert all(bool(dbo_active(s, 10, 0.0)) for s in steps)  # from the start
    assert not any(bool(dbo_active(s, 10, 1.0)) for s in steps)  # never
    step = tf.Variable(3, dtype=tf.int64)  # like optimizer.iterations, inside a tf.function
    active = tf.function(lambda: dbo_active(step, 8))
    assert not bool(active())
    step.assign(4)
    assert bool(active())


def test_loss_switches_weights_on_at_the_start_step():
    balance = DomainBalance(start_fraction=0.5)
    labels, probs = np.array([1.0, 0.0, 1.0]), np.array([0.8, 0.4, 0.6])
    unweighted = weighted_bce(labels, probs)
    weighted = weighted_bce(labels, probs, [1.05, 0.6, 1.4])
    np.testing.assert_allclose(balance.loss(labels, probs, ATTENTION, GATE, step=4, total_steps=10), unweighted)
    np.testing.assert_allclose(balance.loss(labels, probs, ATTENTION, GATE, step=5, total_steps=10), weighted,
                               rtol=1e-6)
    np.testing.assert_allclose(balance.loss(labels, probs, ATTENTION, GATE), weighted, rtol=1e-6)  # no schedule
    with pytest.raises(ValueError, match="Received:"):
        balance.loss(labels, probs, ATTENTION, GATE, step=5)


def test_no_gradient_through_the_weights():
    # the gradient of the DBO loss is exactly that of the BCE weighted by constants: nothing flows through A or g_sp
    layer = DomainSensitiveFeatureSelection(2, field_units=3, gate_units=(4,), fusion="sum")
    fields = np.random.default_rng(0).normal(size=(6, 3, 2)).astype(np.float32)
    labels = np.array([1, 0, 1, 1, 0, 0], np.float32)
    layer(fields)
    kernel = tf.Variable(np.random.default_rng(1).normal(size=(2, 1)).astype(np.float32))
    variables = layer.trainable_weights + [kernel]
    balance = DomainBalance(start_fraction=0.0)

    def forward():
        out = layer(fields, return_attention=True)
        return out, tf.sigmoid(out["output"] @ kernel)

    with tf.GradientTape(persistent=True) as tape:
        out, probs = forward()
        weights = balance.weights(out["attention"], out["specific_gate"])
        loss = balance.loss(labels, probs, out["attention"], out["specific_gate"], step=0, total_steps=1)
        constant = weighted_bce(labels, probs, weights.numpy())
    assert all(g is None for g in tape.gradient(weights, variables))
    for var, got, want in zip(variables, tape.gradient(loss, variables), tape.gradient(constant, variables)):
        np.testing.assert_allclose(tf.convert_to_tensor(got), tf.convert_to_tensor(want), rtol=1e-5, atol=1e-7,
                                   err_msg=var.name)


def test_config_round_trip():
    balance = DomainBalance(lower=0.2, upper=0.9, lambda_1=0.1, alpha_1=0.7, lambda_2=0.3, alpha_2=0.0,
                            start_fraction=0.75, epsilon=1e-5)
    config = dataclasses.asdict(balance)
    assert DomainBalance(**json.loads(json.dumps(config))) == balance
    assert dataclasses.asdict(DomainBalance()) == {"lower": 0.1, "upper": 1.0, "lambda_1": 0.5, "alpha_1": 1.0,
                                                   "lambda_2": 0.5, "alpha_2": 1.0, "start_fraction": 0.5,
                                                   "epsilon": 1e-6}


@pytest.mark.parametrize("kwargs", [
    {"lower": -0.1},
    {"upper": 0.1},                       # upper must exceed lower (0.1)
    {"lower": 0.5, "upper": 0.4},
    {"upper": float("inf")},
    {"lambda_1": -0.5},
    {"alpha_1": "1"},
    {"lambda_2": True},
    {"alpha_2": float("nan")},
    {"lambda_1": 0.0, "alpha_1": 0.0},    # w^cpl = 0
    {"lambda_1": 0.0, "lower": 0.0},      # w^cpl = 0 for the least complex rows
    {"lambda_2": 0.0, "alpha_2": 0.0},    # w^spf = 0
    {"start_fraction": 1.5},
    {"start_fraction": -0.25},
    {"epsilon": 0.0},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received:"):
        DomainBalance(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="Received:"):
        DomainBalance().weights()  # neither attention nor gate
    with pytest.raises(ValueError, match="Received:"):
        attention_entropy(np.ones((3, 2), np.float32))  # not [B, n, n]
    with pytest.raises(ValueError, match="Received:"):
        dbo_active(1, 10, start_fraction=2.0)
