"""Two-tower retrieval: encoder -> shared embeddings -> user / item towers -> sampled-softmax task.

The model only wires the parts: the encoder maps raw values to indices (from the feature spec),
`SharedEmbedding` holds the tables both towers use, the towers return embeddings, and
`SampledSoftmaxRetrieval` computes the loss over the positive rows of a batch.

In-batch negatives under `MirroredStrategy`: each replica uses the positives of its own slice of
the global batch as negatives (no cross-replica gather); the global batch is scaled by the number of
replicas so every replica keeps the per-replica batch, and so the number of negatives, of a single
device. The loss is divided by the number of replicas so summed gradients equal the mean.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mdr_keras import feature_spec as fs
from mdr_keras.layers.embedding import SharedEmbedding
from mdr_keras.layers.feature_encoder import FeatureEncoder
from mdr_keras.models.towers import MLPBackbone, Tower
from mdr_keras.tasks.retrieval import SampledSoftmaxRetrieval

RETRIEVAL_MODELS = ("adi", "dnn")


@dataclasses.dataclass
class RetrievalConfig:
    """Sizes and training knobs of a two-tower model.

    Args:
        embedding_dim: feature embedding size.
        tower_units: hidden/output sizes of a tower (the last is the retrieval embedding size).
        temperature: softmax temperature over cosine similarities.
        l2: L2 regularization of the embedding tables.
        dropout: dropout in the MLP baseline.
        shared_units, specific_units, num_shared, fusion, dsbn, attention: the ADI backbone.
    """

    embedding_dim: int = 16
    tower_units: Sequence[int] = (64, 32)
    temperature: float = 0.05
    l2: float = 0.0
    dropout: float = 0.0
    num_shared: int = 2
    shared_units: Sequence[int] = (64,)
    specific_units: Sequence[int] = (64,)
    fusion: str = "concat"
    dsbn: bool = True
    attention: str = "se"


def tower_features(spec: fs.FeatureSpec) -> Tuple[List[str], List[str], List[str]]:
    """(user scalar features, user sequence features, item features) the towers read."""
    user = [f.name for f in spec.by_role(fs.ROLE_USER, fs.ROLE_USER_DOMAIN_STAT)] + [fs.DOMAIN]
    seq = [n for n in (fs.HIST_ITEM_ID, fs.HIST_CATEGORY) if n in spec]
    item = [f.name for f in spec.by_role(fs.ROLE_ITEM, fs.ROLE_ITEM_DOMAIN_STAT)] + [fs.DOMAIN]
    return user, seq, item


def embedding_for(encoder: FeatureEncoder, names: Sequence[str], dim: int, l2: float) -> SharedEmbedding:
    """A SharedEmbedding with one table per vocabulary (and per numeric feature) of `names`."""
    tables, features = {}, {}
    for name in names:
        f = encoder.feature(name)
        if f.vocab_from == fs.DOMAIN:
            table = name
        elif f.kind in (fs.KIND_CATEGORICAL, fs.KIND_CATEGORICAL_LIST):
            table = f.vocab_from or f.name
        else:
            table = f.name
        tables[table] = encoder.input_dim(name)
        mode = "sequence" if f.role == fs.ROLE_SEQUENCE else "pooled" if f.is_list else "scalar"
        features[name] = [table, mode]
    return SharedEmbedding(tables, features, dim=dim, l2=l2, name="shared_embedding")


def make_backbone(model: str, num_domains: int, config: RetrievalConfig, name: str):
    if model == "dnn":
        return MLPBackbone(config.tower_units, dropout=config.dropout, name=name)
    if model == "adi":
        from mdr_keras.layers.adi_backbone import ADIBackbone

        return ADIBackbone(num_domains=num_domains, num_shared=config.num_shared,
                           shared_units=list(config.shared_units), specific_units=list(config.specific_units),
                           forward_units=list(config.tower_units), fusion=config.fusion, dsbn=config.dsbn,
                           attention=config.attention, name=name)
    raise ValueError(f"Unknown retrieval model. Received: model={model!r}; expected one of {RETRIEVAL_MODELS}")


class RetrievalModel(keras.Model):
    """Encoder, shared embedding, user and item towers and the retrieval task, wired together.

    Args:
        encoder: `FeatureEncoder` of the spec.
        embedding: `SharedEmbedding` over the features both towers read.
        user_tower, item_tower: `Tower`s.
        task: `SampledSoftmaxRetrieval`.

    Call arguments:
        inputs: dict of raw feature tensors (as `mdr_keras.data.make_dataset` yields them).
        training: training switch for the towers.

    Returns:
        {'user': [B, o], 'item': [B, o]} embeddings of each row's user and item, in the row's domain.
    """

    def __init__(self, encoder, embedding, user_tower, item_tower, task, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.embedding = embedding
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.task = task
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def _embed(self, raw):
        idx = self.encoder(raw)
        emb = self.embedding(idx)
        emb["domain_index"] = idx[fs.DOMAIN]
        return emb

    def user_embedding(self, raw, training=False):
        return self.user_tower(self._embed(raw), training=training)

    def item_embedding(self, raw, training=False):
        return self.item_tower(self._embed(raw), training=training)

    def call(self, inputs, training=None):
        emb = self._embed(inputs)
        return {"user": self.user_tower(emb, training=training), "item": self.item_tower(emb, training=training)}

    def compute_task_loss(self, raw, training):
        positive = tf.equal(raw[fs.LABEL], 1)
        raw = {k: tf.boolean_mask(v, positive) for k, v in raw.items()}
        emb = self._embed(raw)
        task_inputs = {"query": self.user_tower(emb, training=training),
                       "candidate": self.item_tower(emb, training=training),
                       "candidate_ids": raw[fs.ITEM_ID], "domain": emb["domain_index"]}
        if "item_domain_clicks" in raw:
            # In-batch positives are drawn with their click frequency: log Q = log(clicks) + a per-domain
            # constant, which cancels because negatives come from the row's own domain only.
            task_inputs["candidate_log_q"] = tf.math.log(raw["item_domain_clicks"] + 1.0)
        return self.task(task_inputs)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self.compute_task_loss(data, training=True)
            total = loss + tf.add_n(self.losses) if self.losses else loss
            scaled = total / tf.distribute.get_strategy().num_replicas_in_sync
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        self.loss_tracker.update_state(self.compute_task_loss(data, training=False))
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


def build_retrieval_model(spec: fs.FeatureSpec, model: str = "adi", config: RetrievalConfig = RetrievalConfig()
                          ) -> RetrievalModel:
    """A two-tower model of `model` ('adi' or 'dnn') for the records described by `spec`."""
    user, seq, item = tower_features(spec)
    names = sorted(set(user + seq + item))
    encoder = FeatureEncoder.from_spec(spec, names=names, name="encoder")
    embedding = embedding_for(encoder, names, config.embedding_dim, config.l2)
    towers = [Tower(user, seq, make_backbone(model, spec.num_domains, config, "user_backbone"), name="user_tower"),
              Tower(item, (), make_backbone(model, spec.num_domains, config, "item_backbone"), name="item_tower")]
    return RetrievalModel(encoder, embedding, towers[0], towers[1],
                          SampledSoftmaxRetrieval(temperature=config.temperature, name="task"),
                          name=f"{model}_retrieval")


def evaluate_recall(model: RetrievalModel, data_dir: str, split: str = "eval", ks: Sequence[int] = (10, 50),
                    batch_size: int = 2048) -> Dict[str, Dict[str, float]]:
    """Per-domain and overall Recall@K over each domain's full item corpus (exact top-K).

    Each positive row of `split` is a query: its user embedding (in its domain) is scored against
    the item tower's embedding of every item of that domain's corpus; a hit is the row's item
    ranking in the top K. Rows whose item is not in the domain's corpus count as misses.

    Returns:
        {'per_domain': {domain: {'recall@K': r, 'queries': n}}, 'overall': {...}}
    """
    from mdr_keras import data

    spec = fs.FeatureSpec.load(data_dir)
    item_ids, item_dom, item_emb = [], [], []
    for batch in data.make_dataset(data_dir, data.ITEMS, batch_size, spec=spec):
        item_ids.append(batch[fs.ITEM_ID].numpy())
        item_dom.append(batch[fs.DOMAIN].numpy())
        item_emb.append(model.item_embedding(batch).numpy())
    item_ids, item_dom, item_emb = map(np.concatenate, (item_ids, item_dom, item_emb))
    q_ids, q_dom, q_emb = [], [], []
    for batch in data.make_dataset(data_dir, split, batch_size, spec=spec):
        positive = tf.equal(batch[fs.LABEL], 1)
        if not bool(tf.reduce_any(positive)):
            continue
        batch = {k: tf.boolean_mask(v, positive) for k, v in batch.items()}  # embed the queries only
        q_ids.append(batch[fs.ITEM_ID].numpy())
        q_dom.append(batch[fs.DOMAIN].numpy())
        q_emb.append(model.user_embedding(batch).numpy())
    q_ids, q_dom, q_emb = map(np.concatenate, (q_ids, q_dom, q_emb))
    per_domain, hits_all = {}, {k: 0 for k in ks}
    for d in spec.domains:
        cand = item_dom == d.encode()
        rows = q_dom == d.encode()
        if not rows.any():
            continue
        scores = q_emb[rows] @ item_emb[cand].T
        index = {iid: j for j, iid in enumerate(item_ids[cand])}
        target = np.array([index.get(i, -1) for i in q_ids[rows]])
        found = target >= 0
        pos_score = np.where(found, scores[np.arange(len(target)), np.maximum(target, 0)], np.inf)
        rank = (scores > pos_score[:, None]).sum(axis=1)
        result = {"queries": int(rows.sum())}
        for k in ks:
            hit = found & (rank < k)
            result[f"recall@{k}"] = float(hit.mean())
            hits_all[k] += int(hit.sum())
        per_domain[d] = result
    n = sum(r["queries"] for r in per_domain.values())
    overall = {"queries": n, **{f"recall@{k}": hits_all[k] / max(n, 1) for k in ks}}
    return {"per_domain": per_domain, "overall": overall}
