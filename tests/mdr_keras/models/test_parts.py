"""The models' shared parts: one embedding table per vocabulary, the parts' config round trip."""
import pytest
import tf_keras as keras

from mdr_contract import feature_spec as fs
from mdr_keras.layers.embedding import SharedEmbedding
from mdr_keras.layers.feature_encoder import FeatureEncoder
from mdr_keras.models.parts import embedding_for, parts_config, with_parts


def test_embedding_for_shares_the_tables_of_one_vocabulary(synthetic_data):
    spec = fs.FeatureSpec.load(synthetic_data[0])
    names = [fs.ITEM_ID, fs.HIST_ITEM_ID, fs.DOMAIN, fs.HIST_DOMAIN, "item_domain_ctr"]
    encoder = FeatureEncoder.from_spec(spec, names=names)
    embedding = embedding_for(encoder, names, dim=4, l2=0.5)
    assert embedding.features == {fs.ITEM_ID: [fs.ITEM_ID, "scalar"], fs.HIST_ITEM_ID: [fs.ITEM_ID, "sequence"],
                                  fs.DOMAIN: [fs.DOMAIN, "scalar"], fs.HIST_DOMAIN: [fs.HIST_DOMAIN, "sequence"],
                                  "item_domain_ctr": ["item_domain_ctr", "scalar"]}
    # item ids: padding + 1 OOV + the vocabulary; history domains: padding + one per domain; buckets + 1.
    assert embedding.tables == {fs.ITEM_ID: len(spec.vocabulary(fs.ITEM_ID)) + 2, fs.DOMAIN: spec.num_domains,
                                fs.HIST_DOMAIN: spec.num_domains + 1,
                                "item_domain_ctr": len(spec["item_domain_ctr"].boundaries) + 1}
    assert (embedding.dim, embedding.l2, embedding.name) == (4, 0.5, "shared_embedding")


def test_parts_round_trip():
    model = keras.Model()
    model.embedding = SharedEmbedding({"t": 3}, {"a": ["t", "scalar"]}, dim=2, name="e")
    model.absent = None
    config = {"name": "m", **parts_config(model, ("embedding", "absent"))}
    assert config["absent"] is None and config["embedding"]["config"]["dim"] == 2
    restored = with_parts(config, ("embedding", "absent"))
    assert isinstance(restored["embedding"], SharedEmbedding) and restored["embedding"].tables == {"t": 3}
    assert restored["absent"] is None and config["embedding"]["class_name"]  # the config itself is unchanged
    with pytest.raises(KeyError):
        with_parts({"name": "m"}, ("embedding",))
