"""make_backbone: the one factory of both tasks' backbones: each kind from either config, its output width and
activation, the models built with it, argument errors."""
import numpy as np
import pytest

from mdr_contract import feature_spec as fs
from mdr_keras.layers.adi_backbone import ADIBackbone
from mdr_keras.layers.cross_stitch import CrossStitchBackbone
from mdr_keras.layers.mmoe import MMoEBackbone
from mdr_keras.layers.ple import PLEBackbone
from mdr_keras.layers.shared_bottom import SharedBottomBackbone
from mdr_keras.layers.star import STARBackbone
from mdr_keras.layers.towers import MLPBackbone
from mdr_keras.models.backbones import BACKBONES, make_backbone
from mdr_keras.models.ranker import BACKBONE_MODELS, RankerConfig, build_ranker_model
from mdr_keras.models.retrieval import RetrievalConfig, build_retrieval_model
from tests.mdr_keras import layer_checks

LAYERS = {"dnn": MLPBackbone, "adi": ADIBackbone, "shared-bottom": SharedBottomBackbone,
          "cross-stitch": CrossStitchBackbone, "mmoe": MMoEBackbone, "ple": PLEBackbone, "star": STARBackbone}
SMALL_RETRIEVAL = RetrievalConfig(tower_units=(8, 6), shared_units=(8,), specific_units=(8,), dnn_units=(8, 4),
                                  bottom_units=(8,), stitch_units=(8, 4), expert_units=(8,), star_units=(8, 4),
                                  star_aux_units=(4,))
SMALL_RANKER = RankerConfig(bottom_units=(8,), tower_units=(5,), expert_units=(8,), star_units=(8, 5),
                            star_aux_units=(4,))


@pytest.mark.parametrize("model", BACKBONES)
def test_every_backbone_from_a_retrieval_config_ends_in_output_units(model):
    layer = make_backbone(model, 3, SMALL_RETRIEVAL, output_units=7, name="user_backbone")
    assert type(layer) is LAYERS[model] and layer.name == "user_backbone"
    out = layer(layer_checks.backbone_inputs(6, 10, 4, 3))
    assert out.shape == (6, 7)


@pytest.mark.parametrize("model", BACKBONE_MODELS)
def test_ranker_backbones_keep_their_widths_and_end_in_relu(model):
    layer = make_backbone(model, 3, SMALL_RANKER, output_activation="relu")
    out = layer(layer_checks.backbone_inputs(6, 10, 4, 3)).numpy()
    assert out.shape == (6, 5)  # tower_units[-1], star_units[-1]
    assert out.min() >= 0.0 and layer.get_config()["output_activation"] == "relu"


def test_widths_and_settings_come_from_the_config():
    # Retrieval: the last width of the configured network is replaced by the towers' output width.
    star = make_backbone("star", 2, RetrievalConfig(star_units=(16, 8), bn_momentum=0.8, star_partitioned_norm=False),
                         output_units=4)
    assert star.units == [16, 4] and star.pn_momentum == 0.8 and not star.partitioned_norm
    assert make_backbone("dnn", 2, RetrievalConfig(dnn_units=(16, 8)), output_units=4).units == [16, 4]
    adi = make_backbone("adi", 2, RetrievalConfig(forward_units=(16, 8), num_shared=3, forward_sharing="specific",
                                                  input_norm=False), output_units=4)
    assert adi.forward_units == [16, 4] and adi.num_shared == 3
    assert (adi.forward_sharing, adi.input_norm) == ("specific", False)
    default = make_backbone("adi", 2, RetrievalConfig(), output_units=4)  # the measured defaults (RetrievalConfig)
    assert default.forward_units == [4] and default.forward_sharing == "star" and default.input_norm
    ple = make_backbone("ple", 2, RankerConfig(expert_units=(12,), tower_units=(6,)))
    assert (ple.num_levels, ple.num_shared_experts, ple.num_specific_experts) == (1, 1, 1)
    assert ple.expert_units == [12] and ple.tower_units == [6]


def test_both_models_build_their_backbones_here(synthetic_data):
    spec = fs.FeatureSpec.load(synthetic_data[0])
    retrieval = build_retrieval_model(spec, "mmoe", SMALL_RETRIEVAL)
    expected = make_backbone("mmoe", spec.num_domains, SMALL_RETRIEVAL, output_units=6, name="user_backbone")
    assert retrieval.user_tower.backbone.get_config() == expected.get_config()
    ranker = build_ranker_model(spec, "star", SMALL_RANKER)
    expected = make_backbone("star", spec.num_domains, SMALL_RANKER, output_activation="relu")
    assert ranker.backbone.get_config() == expected.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown backbone. Received: model='din'"):
        make_backbone("din", 2, SMALL_RANKER)
    with pytest.raises(ValueError, match="Received: output_activation='relu'"):
        make_backbone("adi", 2, SMALL_RETRIEVAL, output_activation="relu")
    assert np.isfinite(make_backbone("cross-stitch", 1, SMALL_RETRIEVAL)(
        layer_checks.backbone_inputs(2, 3, 2, 1)).numpy()).all()  # one domain is a valid backbone
