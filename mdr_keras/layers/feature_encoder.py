"""Raw feature values -> model indices, inside the graph, from the feature spec."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from mdr_contract import feature_spec as fs


@keras.utils.register_keras_serializable(package="mdr")
class FeatureEncoder(keras.layers.Layer):
    """Maps the raw values of a record (strings, floats) to the indices the embeddings take.

    The one implementation of the spec's index conventions (`mdr_contract.feature_spec`): training,
    evaluation and every exported serving signature run this layer, so there is no second mapping
    that could drift (no training/serving skew).
      - categorical and categorical-list features, and sequence features through the vocabulary
        they share: 0 for padding (""), 1 for out-of-vocabulary, then the vocabulary file order;
      - numeric features: `bisect_right(boundaries, x)`;
      - the domain: its position in `domains`; an unknown domain is an error, not a silent OOV.
    Features of kind 'int' (`hist_len`, `label`, `timestamp`) are passed through unchanged.

    Args:
        features: the spec's features, as `Feature` objects or their JSON dicts.
        domains: the domain names, in index order.
        vocabularies: {feature name: tokens} for every feature with its own vocabulary file.
        names: encode only these features (default: every feature the call receives).

    Call arguments:
        inputs: dict {feature name: raw tensor} (strings [B] / [B, L], floats [B], ints [B]).
        training: unused.

    Returns:
        dict {feature name: int64 index tensor of the input's shape} for every input feature the
        encoder knows.

    Reference:
        The feature spec written by `pipeline.preprocess` (`feature_spec.json`).
    """

    def __init__(self, features: Sequence, domains: Sequence[str], vocabularies: Dict[str, List[str]],
                 names: Optional[Sequence[str]] = None, **kwargs):
        # Raw values are compared with bucket boundaries in float32 whatever the global policy:
        # under mixed_float16 a float16 cast would move values across boundaries (and fail).
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self._features = [f if isinstance(f, fs.Feature) else fs.Feature(**{**f, "boundaries": tuple(
            f.get("boundaries", ()))}) for f in features]
        if not domains:
            raise ValueError(f"FeatureEncoder needs at least one domain. Received: domains={list(domains)}")
        self.domains = list(domains)
        self.vocabularies = {k: list(v) for k, v in vocabularies.items()}
        by_name = {f.name: f for f in self._features}
        for f in self._features:
            source = f.vocab_from or f.name
            if f.kind in (fs.KIND_CATEGORICAL, fs.KIND_CATEGORICAL_LIST) and source != fs.DOMAIN \
                    and source not in self.vocabularies:
                raise ValueError(f"No vocabulary for feature {f.name!r} (from {source!r}). "
                                 f"Received: vocabularies for {sorted(self.vocabularies)}")
            if f.vocab_from is not None and f.vocab_from not in by_name:
                raise ValueError(f"Feature {f.name!r} shares the vocabulary of unknown feature {f.vocab_from!r}")
        self.names = list(names) if names is not None else None
        self._by_name = by_name
        self._lookups = {}
        for name, tokens in self.vocabularies.items():
            self._lookups[name] = keras.layers.StringLookup(
                vocabulary=tokens or ["\x00<empty vocabulary>"], mask_token=fs.PAD, num_oov_indices=1,
                name=f"lookup_{name}")
        self._domain_lookup = keras.layers.StringLookup(vocabulary=self.domains, num_oov_indices=0,
                                                        name="lookup_domain")
        self._buckets = {f.name: keras.layers.Discretization(bin_boundaries=list(f.boundaries) or [0.0],
                                                             name=f"buckets_{f.name}")
                         for f in self._features if f.kind == fs.KIND_NUMERIC}

    @classmethod
    def from_spec(cls, spec: fs.FeatureSpec, names: Optional[Sequence[str]] = None, **kwargs) -> "FeatureEncoder":
        """An encoder with the spec's features and the vocabularies read from its files."""
        vocabularies = {f.name: spec.vocabulary(f.name) for f in spec.features
                        if f.vocab_file and not f.vocab_from and f.role != fs.ROLE_DOMAIN}
        return cls(spec.features, spec.domains, vocabularies, names=names, **kwargs)

    def feature(self, name: str) -> fs.Feature:
        return self._by_name[name]

    def call(self, inputs, training=None):
        out = {}
        for name, value in inputs.items():
            if self.names is not None and name not in self.names:
                continue
            f = self._by_name.get(name)
            if f is None:
                continue
            if f.role == fs.ROLE_DOMAIN:
                out[name] = self._domain_lookup(value)
            elif f.vocab_from == fs.DOMAIN:  # history domains: padding 0, else 1 + domain index (closed list)
                idx = self._domain_lookup(tf.where(tf.equal(value, fs.PAD), self.domains[0], value))
                out[name] = tf.where(tf.equal(value, fs.PAD), tf.zeros_like(idx), idx + 1)
            elif f.kind in (fs.KIND_CATEGORICAL, fs.KIND_CATEGORICAL_LIST):
                out[name] = self._lookups[f.vocab_from or f.name](value)
            elif f.kind == fs.KIND_NUMERIC:
                if f.boundaries:
                    out[name] = tf.cast(self._buckets[name](value), tf.int64)
                else:  # no boundaries (no train rows): a single bucket
                    out[name] = tf.zeros_like(tf.cast(value, tf.int64))
            else:
                out[name] = tf.cast(value, tf.int64)
        return out

    def input_dim(self, name: str) -> int:
        """Rows of the embedding table of `name` (history domains: padding + one per domain)."""
        f = self._by_name[name]
        if f.role == fs.ROLE_DOMAIN:
            return len(self.domains)
        if f.vocab_from == fs.DOMAIN:
            return len(self.domains) + 1
        if f.kind in (fs.KIND_CATEGORICAL, fs.KIND_CATEGORICAL_LIST):
            return len(self.vocabularies[f.vocab_from or f.name]) + 2
        return f.input_dim

    def get_config(self):
        config = super().get_config()
        config.update({
            "features": [fs._feature_to_json(f) for f in self._features],
            "domains": list(self.domains),
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
            "names": list(self.names) if self.names is not None else None,
        })
        return config
