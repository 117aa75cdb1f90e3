"""What the models of both tasks share: the embedding of their features and the (de)serialisation of their parts.

A model (`RetrievalModel`, `RankerModel`) only wires its parts (encoder, embedding, towers or sequence
module, task); `get_config` lists each part's Keras config under the attribute that holds it.
"""
from __future__ import annotations

from typing import Dict, Sequence

import tf_keras as keras

from mdr_contract import feature_spec as fs
from mdr_keras.layers.embedding import SharedEmbedding
from mdr_keras.layers.feature_encoder import FeatureEncoder


def embedding_for(encoder: FeatureEncoder, names: Sequence[str], dim: int, l2: float,
                  name: str = "shared_embedding") -> SharedEmbedding:
    """A SharedEmbedding with one table per vocabulary (and per numeric feature) of `names`."""
    tables, features = {}, {}
    for feature in names:
        f = encoder.feature(feature)
        if f.vocab_from == fs.DOMAIN:
            table = feature
        elif f.kind in (fs.KIND_CATEGORICAL, fs.KIND_CATEGORICAL_LIST):
            table = f.vocab_from or f.name
        else:
            table = f.name
        tables[table] = encoder.input_dim(feature)
        mode = "sequence" if f.role == fs.ROLE_SEQUENCE else "pooled" if f.is_list else "scalar"
        features[feature] = [table, mode]
    return SharedEmbedding(tables, features, dim=dim, l2=l2, name=name)


def parts_config(model: keras.Model, parts: Sequence[str]) -> Dict[str, object]:
    """`{part: its serialised config}` of the layers `model.<part>` (None for an absent part)."""
    return {k: keras.saving.serialize_keras_object(getattr(model, k)) for k in parts}


def with_parts(config: dict, parts: Sequence[str]) -> dict:
    """A copy of a model's `config` whose `parts` are deserialised layers again (None stays None)."""
    config = dict(config)
    for k in parts:
        config[k] = keras.saving.deserialize_keras_object(config[k])
    return config
