"""Sampled softmax with logQ correction: the retrieval loss of ADI (eq. 4-5)."""
from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

# Logit of a masked candidate: far below any real logit, finite so that 0 * it stays 0.
MASKED_LOGIT = -1e9


@keras.utils.register_keras_serializable(package="mdr")
class SampledSoftmaxRetrieval(keras.layers.Layer):
    """Sampled softmax loss over in-batch (and optional extra) negatives, with logQ correction.

    For a row i with user embedding u_i and positive item embedding v_i, the candidates are the
    positives of the other rows of the batch and, optionally, S extra negatives drawn from the item
    frequency distribution Q. Every logit is corrected by the log of its candidate's sampling
    probability, `s(u, v) / temperature - log Q(v)` (eq. 4), and the loss is the softmax cross-entropy
    of the positive among them (eq. 5). Candidates that are the row's own item (accidental hits) and,
    because ADI's item tower is domain-conditioned, candidates embedded under another domain than
    the row's, are masked out.

    Args:
        temperature: divides the dot products (> 0).
        remove_accidental_hits: mask candidates whose item id equals the row's positive item id.
        same_domain_negatives: mask candidates embedded in another domain than the row's.

    Call arguments:
        inputs: dict with
            `query` [B, o] user embeddings, `candidate` [B, o] positive item embeddings,
            optional `candidate_ids` [B] (int or string) for accidental-hit removal,
            optional `candidate_log_q` [B] log sampling probability of each row's item (in-batch
                items are sampled with their frequency, so Q is the item's frequency),
            optional `domain` [B] int, the domain each row (and its item embedding) belongs to,
            optional `negatives` [S, o], `negative_ids` [S], `negative_log_q` [S], `negative_domain` [S],
            optional `sample_weight` [B].
        training: unused.

    Returns:
        The weighted mean loss, a scalar.

    Reference:
        ADI (Jiang et al., 2022), eq. 4-5; Yi et al., "Sampling-bias-corrected neural modeling for
        large corpus item recommendations", RecSys 2019 (logQ correction of in-batch negatives).
    """

    def __init__(self, temperature: float = 1.0, remove_accidental_hits: bool = True,
                 same_domain_negatives: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
        self.temperature = float(temperature)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.same_domain_negatives = bool(same_domain_negatives)

    def logits(self, inputs):
        """The corrected, masked logits [B, B + S]; column i of row i is the positive."""
        query, candidate = inputs["query"], inputs["candidate"]
        batch = tf.shape(query)[0]
        cands = [candidate]
        ids = [inputs.get("candidate_ids")]
        log_q = [inputs.get("candidate_log_q")]
        domains = [inputs.get("domain")]
        if inputs.get("negatives") is not None:
            cands.append(inputs["negatives"])
            ids.append(inputs.get("negative_ids"))
            log_q.append(inputs.get("negative_log_q"))
            domains.append(inputs.get("negative_domain"))
        all_cands = tf.concat(cands, axis=0)
        logits = tf.matmul(query, all_cands, transpose_b=True) / self.temperature
        if all(q is not None for q in log_q):
            logits -= tf.cast(tf.concat(log_q, axis=0), logits.dtype)[tf.newaxis, :]
        positive = tf.eye(batch, tf.shape(all_cands)[0], dtype=tf.bool)
        mask = tf.zeros_like(positive)
        if self.remove_accidental_hits and all(i is not None for i in ids):
            all_ids = tf.concat([tf.reshape(i, [-1]) for i in ids], axis=0)
            row_ids = tf.reshape(ids[0], [-1])
            mask |= tf.equal(row_ids[:, tf.newaxis], all_ids[tf.newaxis, :]) & ~positive
        if self.same_domain_negatives and all(d is not None for d in domains):
            all_dom = tf.concat([tf.reshape(tf.cast(d, tf.int64), [-1]) for d in domains], axis=0)
            row_dom = tf.reshape(tf.cast(domains[0], tf.int64), [-1])
            mask |= tf.not_equal(row_dom[:, tf.newaxis], all_dom[tf.newaxis, :])
        return tf.where(mask, tf.cast(MASKED_LOGIT, logits.dtype), logits)

    def call(self, inputs, training=None):
        logits = self.logits(inputs)
        labels = tf.eye(tf.shape(logits)[0], tf.shape(logits)[1], dtype=logits.dtype)
        # A batch without rows is real (a replica's share of a last partial batch, a batch without positives)
        # and TensorFlow 2.16's softmax cross-entropy crashes the process (SIGSEGV) on empty logits: its loss
        # is 0 instead, without calling it.
        loss = tf.cond(tf.size(logits) > 0,
                       lambda: tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits),
                       lambda: tf.zeros([0], logits.dtype))
        weight = inputs.get("sample_weight")
        if weight is None:
            return tf.math.divide_no_nan(tf.reduce_sum(loss), tf.cast(tf.size(loss), loss.dtype))
        weight = tf.cast(tf.reshape(weight, [-1]), loss.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(loss * weight), tf.reduce_sum(weight))

    def get_config(self):
        config = super().get_config()
        config.update({"temperature": self.temperature, "remove_accidental_hits": self.remove_accidental_hits,
                       "same_domain_negatives": self.same_domain_negatives})
        return config
