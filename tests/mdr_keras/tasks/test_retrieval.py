"""SampledSoftmaxRetrieval against values computed by hand."""
import math

import numpy as np
import pytest
import tensorflow as tf

from mdr_keras.tasks.retrieval import SampledSoftmaxRetrieval
from tests.mdr_keras import layer_checks

Q = tf.constant([[1.0, 0.0], [0.0, 1.0]])
V = tf.constant([[1.0, 0.0], [1.0, 1.0]])


def ce(logits, i):
    return -logits[i] + math.log(sum(math.exp(x) for x in logits))


def test_in_batch_softmax_by_hand():
    # logits = Q V^T = [[1, 1], [0, 1]]; row 0: -1 + log(e + e); row 1: -1 + log(1 + e)
    loss = SampledSoftmaxRetrieval(same_domain_negatives=False)({"query": Q, "candidate": V})
    expected = (ce([1, 1], 0) + ce([0, 1], 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_log_q_correction_and_temperature_by_hand():
    log_q = tf.constant([math.log(0.5), math.log(0.25)])
    loss = SampledSoftmaxRetrieval(temperature=0.5, same_domain_negatives=False)(
        {"query": Q, "candidate": V, "candidate_log_q": log_q})
    # logits / 0.5 = [[2, 2], [0, 2]], minus log Q per column: + [0.693, 1.386]
    r0 = [2 - math.log(0.5), 2 - math.log(0.25)]
    r1 = [0 - math.log(0.5), 2 - math.log(0.25)]
    assert float(loss) == pytest.approx((ce(r0, 0) + ce(r1, 1)) / 2, rel=1e-6)


def test_accidental_hits_and_other_domains_are_masked():
    task = SampledSoftmaxRetrieval()
    # Both rows have the same item: each row's other column is an accidental hit -> only the positive.
    loss = task({"query": Q, "candidate": V, "candidate_ids": tf.constant([7, 7])})
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    # Different domains: no in-batch negative survives either.
    loss = task({"query": Q, "candidate": V, "domain": tf.constant([0, 1])})
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    logits = task.logits({"query": Q, "candidate": V, "domain": tf.constant([0, 0])}).numpy()
    np.testing.assert_allclose(logits, [[1, 1], [0, 1]])


def test_extra_negatives_by_hand():
    neg = tf.constant([[2.0, 0.0]])
    loss = SampledSoftmaxRetrieval()(
        {"query": Q, "candidate": V, "domain": tf.constant([0, 0]), "negatives": neg,
         "negative_domain": tf.constant([1])})
    # The negative is in domain 1: masked for both rows, so the loss is the in-batch one.
    assert float(loss) == pytest.approx((ce([1, 1], 0) + ce([0, 1], 1)) / 2, rel=1e-6)
    loss = SampledSoftmaxRetrieval()(
        {"query": Q, "candidate": V, "domain": tf.constant([0, 0]), "negatives": neg,
         "negative_domain": tf.constant([0])})
    # row 0 logits [1, 1, 2]; row 1 logits [0, 1, 0]
    assert float(loss) == pytest.approx((ce([1, 1, 2], 0) + ce([0, 1, 0], 1)) / 2, rel=1e-6)


def test_sample_weight():
    loss = SampledSoftmaxRetrieval(same_domain_negatives=False)(
        {"query": Q, "candidate": V, "sample_weight": tf.constant([0.0, 2.0])})
    assert float(loss) == pytest.approx(ce([0, 1], 1), rel=1e-6)


@pytest.mark.parametrize("negatives", [0, 3])
def test_a_batch_without_rows_has_loss_zero(negatives):
    # A replica's share of a last partial batch, or a batch without positives: TF 2.16's softmax
    # cross-entropy kills the process on empty logits, so the task must not call it (and not return NaN).
    inputs = {"query": tf.zeros([0, 2]), "candidate": tf.zeros([0, 2]), "candidate_ids": tf.zeros([0], tf.int64),
              "domain": tf.zeros([0], tf.int64)}
    if negatives:
        inputs.update(negatives=tf.ones([negatives, 2]), negative_domain=tf.zeros([negatives], tf.int64))
    task = SampledSoftmaxRetrieval()
    assert float(task(inputs)) == 0.0
    assert float(tf.function(task)(inputs)) == 0.0
    assert float(task({**inputs, "sample_weight": tf.zeros([0])})) == 0.0


@pytest.mark.parametrize("batch, dim, negatives", [(1, 4, 0), (8, 3, 5), (16, 16, 0)])
def test_shapes(batch, dim, negatives):
    rng = np.random.default_rng(0)
    inputs = {"query": tf.constant(rng.normal(size=(batch, dim)), tf.float32),
              "candidate": tf.constant(rng.normal(size=(batch, dim)), tf.float32)}
    if negatives:
        inputs["negatives"] = tf.constant(rng.normal(size=(negatives, dim)), tf.float32)
    task = SampledSoftmaxRetrieval()
    assert task.logits(inputs).shape == (batch, batch + negatives)
    assert task(inputs).shape == ()


def test_config_and_bad_arguments():
    layer_checks.assert_config_round_trip(SampledSoftmaxRetrieval(temperature=0.1, remove_accidental_hits=False))
    with pytest.raises(ValueError, match="Received: temperature=0"):
        SampledSoftmaxRetrieval(temperature=0)
