"""serving/recommender.py: which features a one-call request carries, and when two models cannot share one.

The recommender's answers (the exported graph against the ranker over the retrieved candidates) are tested
in test_export.py; over gRPC against the two calls it replaces in tests/test_reliability.py and
tests/mdr/test_cli.py.
"""
import dataclasses

import pytest

from mdr_contract import artifacts
from mdr_contract import feature_spec as fs
from serving import export as ex
from serving import recommender as rec

T = 4
SIDE = [fs.SideFeature("age_group", "user", "categorical"), fs.SideFeature("category", "item", "categorical"),
        fs.SideFeature("price", "item", "numeric")]
SPEC = fs.FeatureSpec(fs.record_features(SIDE, "category", T), domains=["d0", "d1"], sequence_length=T)


def test_the_request_carries_the_user_side_and_never_a_candidates_feature():
    names = ex.model_inputs(SPEC, artifacts.RECOMMENDER)
    items = rec.item_side(SPEC)
    assert {"item_id", "category", "price"} <= set(items)
    assert not set(names) & set(items)
    # every retrieval input, and every ranker input a candidate does not bring
    assert set(ex.model_inputs(SPEC, artifacts.RETRIEVAL)) <= set(names)
    assert set(ex.model_inputs(SPEC, artifacts.RANKER)) - set(items) <= set(names)
    assert {fs.DOMAIN, fs.HIST_ITEM_ID, "age_group"} <= set(names)
    assert names == [f.name for f in SPEC.features if f.name in names]  # spec order


def test_models_of_other_specs_are_refused_with_the_reason():
    names = ex.model_inputs(SPEC, artifacts.RECOMMENDER)
    rec.check_same_features(SPEC, SPEC, names)  # the same spec: fine
    other_domains = dataclasses.replace(SPEC, domains=["d0", "d2"])
    with pytest.raises(ValueError, match=r"domains \['d0', 'd1'\], the ranker \['d0', 'd2'\]"):
        rec.check_same_features(SPEC, other_domains, names)
    longer = fs.FeatureSpec(fs.record_features(SIDE, "category", T + 2), domains=["d0", "d1"], sequence_length=T + 2)
    with pytest.raises(ValueError, match="hist_item_id"):
        rec.check_same_features(SPEC, longer, names)
    fewer = fs.FeatureSpec(fs.record_features(SIDE[1:], "category", T), domains=["d0", "d1"], sequence_length=T)
    with pytest.raises(ValueError, match="age_group"):
        rec.check_same_features(SPEC, fewer, names)
