"""The `recommender` SavedModel: retrieval and ranking answered by one graph, in one Predict call.

A client without it makes two calls (`retrieval`, then `ranker` on the K candidates, with the items'
features fetched in between). The recommender holds what that round trip needs, in the graph:

    e     = user_tower(request)                              [B, o]
    s, id = exact top-K of e in the row's domain              [B, K]   (`serving.index.ExactDomainIndex`)
    rows  = table[domain, id]                                 [B, K]   (a hash table over (domain, item))
    items = the ranker's indices of the item features and item domain statistics at `rows`
            (encoded at export, variables of the graph)
    p     = ranker(request's user features encoded once, repeated K times; items)   [B K] -> [B, K]
    answer: the K candidates ordered by p, best first (ties: retrieval order, as `tf.math.top_k` keeps)

Every op is a stock TensorFlow op (no ScaNN), so stock TF Serving loads it. Its answers are those of
`Client.recommend`'s two calls on the same export: the same exact retrieval, the same ranker on the
same item features (the item rows come from the same `items/` split the feature store reads).

Inputs: the `serving_default` inputs of `retrieval`, plus any user-side feature only the ranker reads
(`recommender_inputs`). Outputs: `item_ids` string `[B, K]` and `probabilities` float32 `[B, K]`,
best first; `retrieval_scores` float32 `[B, K]` in the same order. A domain with fewer than K items
pads with `""` ids and probability 0 (after every real candidate).

A third signature, `rank` (`artifacts.RANK_SIGNATURE`), is the second stage alone: the ranker's user-side
inputs and `item_ids` string `[B, N]` give `probabilities` float32 `[B, N]` (the ranker's, in the order
given) and `known` bool `[B, N]` (whether the item is in the table of the row's domain; 0 where not).
The user's features cross the wire once instead of once per item (a behaviour sequence is 50 strings),
and the items' features are not fetched by the client: `Client.scores` calls it when the server has it.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from serving import feature_store
from serving.signatures import input_specs, signatures

KEY_SEPARATOR = "\x1f"  # joins domain and item id in the table's keys (a control character: in neither)
OUTPUTS = ("item_ids", "probabilities", "retrieval_scores")
RANK_OUTPUTS = ("probabilities", "known")


def item_side(spec: fs.FeatureSpec) -> List[str]:
    """The features a candidate brings: item features and item domain statistics."""
    return [f.name for f in spec.by_role(fs.ROLE_ITEM, fs.ROLE_ITEM_DOMAIN_STAT)]


def recommender_inputs(spec: fs.FeatureSpec, retrieval_inputs: Sequence[str], ranker_inputs: Sequence[str]
                       ) -> List[str]:
    """The request's features, in spec order: the retrieval model's and the ranker's user-side ones."""
    items = set(item_side(spec))
    names = set(retrieval_inputs) | (set(ranker_inputs) - items)
    return [f.name for f in spec.features if f.name in names]


def check_same_features(retrieval_spec: fs.FeatureSpec, ranker_spec: fs.FeatureSpec, names: Sequence[str]) -> None:
    """ValueError unless both specs have the same domains and read `names` with the same dtypes and shapes."""
    if list(retrieval_spec.domains) != list(ranker_spec.domains):
        raise ValueError(f"the retrieval model has domains {retrieval_spec.domains}, the ranker "
                         f"{ranker_spec.domains}")
    missing = [n for n in names if n not in retrieval_spec or n not in ranker_spec]
    if missing:
        raise ValueError(f"features {missing} are known to only one of the two models")
    a, b = retrieval_spec.tf_parse_spec(names), ranker_spec.tf_parse_spec(names)
    differ = [n for n in names if (a[n].dtype, tuple(a[n].shape)) != (b[n].dtype, tuple(b[n].shape))]
    if differ:
        raise ValueError(f"features {differ} have other dtypes or shapes in the two models' specs")


class RecommenderModule(tf.Module):
    """Retrieval (exact, per domain) and ranking of the K candidates in one graph.

    Args:
        retrieval_model: the trained `RetrievalModel` (its user tower and domain encoder).
        ranker_model: the trained `RankerModel`.
        spec: the feature spec both were trained with (`check_same_features`).
        index: `serving.index.ExactDomainIndex` over the item-tower embeddings, K = its `k`.
        store: the `FeatureStore` of the data the index was built from (the candidates' features).
        input_names: the request's features (`recommender_inputs`).
        ranker_inputs: the features the ranker reads.
    """

    kind = artifacts.RECOMMENDER

    def __init__(self, retrieval_model, ranker_model, spec: fs.FeatureSpec, index, store: feature_store.FeatureStore,
                 input_names: Sequence[str], ranker_inputs: Sequence[str]):
        super().__init__(name=artifacts.RECOMMENDER)
        self.retrieval_model = retrieval_model
        self.ranker_model = ranker_model
        self.index = index
        self.k = int(index.k)
        self.input_names = list(input_names)
        self._specs = input_specs(spec, self.input_names)
        self._parse_spec = spec.tf_parse_spec(self.input_names)
        item_names = set(item_side(spec))
        self.item_inputs = [n for n in ranker_inputs if n in item_names]
        self.user_inputs = [n for n in ranker_inputs if n not in item_names]
        keys, columns = [], {n: [] for n in self.item_inputs}
        for domain, ids in zip(spec.domains, index.ids):
            ids = [i.decode("utf-8") for i in ids.numpy().tolist()]
            rows = store.item_features(ids, domain)
            keys += [domain + KEY_SEPARATOR + i for i in ids]
            for n in self.item_inputs:
                columns[n] += rows[n]
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.range(len(keys), dtype=tf.int64)),
            default_value=-1)
        # The ranker's indices of the candidates' features, looked up once here rather than per request.
        # Variables, not constants: a big item table stays out of the graph proto (2 GB limit).
        encoded = ranker_model.encoder({n: tf.constant(feature_store.to_array(spec[n], columns[n]))
                                        for n in self.item_inputs})
        self.item_columns = {n: tf.Variable(encoded[n], trainable=False, name=f"items_{n}")
                             for n in self.item_inputs}

    def _ranked(self, raw: Dict[str, tf.Tensor], ids: tf.Tensor):
        """`(probability [B, N], known [B, N])` of the ranker for each row's items `ids` (0 where unknown)."""
        n = tf.shape(ids)[1]
        keys = tf.strings.join([tf.repeat(tf.reshape(raw[fs.DOMAIN], [-1, 1]), n, axis=1), ids],
                               separator=KEY_SEPARATOR)
        rows = self.table.lookup(keys)  # [B, N]; -1 for an item the row's domain does not have (or padding)
        known = rows >= 0
        flat_rows = tf.reshape(tf.maximum(rows, 0), [-1])
        # Each user row's features are encoded once (three behaviour sequences of strings), then repeated N times.
        user = self.ranker_model.encoder({name: raw[name] for name in self.user_inputs})
        idx = {name: tf.repeat(value, n, axis=0) for name, value in user.items()}
        for name in self.item_inputs:
            idx[name] = tf.gather(self.item_columns[name], flat_rows)
        logit, _ = self.ranker_model.forward_encoded(idx, training=False)
        probability = tf.reshape(tf.sigmoid(logit), [-1, n])
        return tf.where(known, probability, tf.zeros_like(probability)), known

    def rank_outputs(self, raw: Dict[str, tf.Tensor], item_ids: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The `rank` signature's outputs: the ranker's probabilities of `item_ids` `[B, N]`, in that order."""
        probability, known = self._ranked(raw, item_ids)
        return {"probabilities": probability, "known": known}

    def outputs(self, raw: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """The named outputs of raw request tensors `raw` (inference mode)."""
        k = self.k
        user = self.retrieval_model.user_embedding(raw, training=False)
        domain = self.retrieval_model.encoder({fs.DOMAIN: raw[fs.DOMAIN]})[fs.DOMAIN]  # unknown domains fail here
        scores, ids = self.index(user, tf.reshape(domain, [-1]))  # [B, K]
        probability, real = self._ranked(raw, ids)  # padding ids ("") are not in the table
        # Padding last: rank real candidates by probability (>= 0), padding at -1.
        _, order = tf.math.top_k(tf.where(real, probability, -tf.ones_like(probability)), k=k)
        return {"item_ids": tf.gather(ids, order, batch_dims=1),
                "probabilities": tf.gather(probability, order, batch_dims=1),
                "retrieval_scores": tf.gather(scores, order, batch_dims=1)}

    def signatures(self):
        """`{"serving_default": fn over the named raw inputs, "examples": fn over serialized Examples,
        "rank": fn over the ranker's user-side inputs and item_ids}`."""
        names = list(self.user_inputs)
        specs = [self._specs[n] for n in names] + [tf.TensorSpec([None, None], tf.string,
                                                                 name=artifacts.RANK_ITEMS_INPUT)]

        @tf.function(input_signature=specs)
        def rank(*tensors):
            return self.rank_outputs(dict(zip(names, tensors[:-1])), tensors[-1])

        return {**signatures(self.outputs, self._specs, self._parse_spec), artifacts.RANK_SIGNATURE: rank}
