"""The backbones of both tasks side by side: one factory from a model name and its config to the layer.

A retrieval tower (`models.retrieval`) and the ranker's multi-domain baselines (`models.ranker`) build
their backbone here, from the fields of their own config that carry the same names (`tower_units`,
`expert_units`, `star_units`, ...), so a backbone is configured the same way in both tasks.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from mdr_keras.layers.adi_backbone import ADIBackbone
from mdr_keras.layers.cross_stitch import CrossStitchBackbone
from mdr_keras.layers.mmoe import MMoEBackbone
from mdr_keras.layers.ple import PLEBackbone
from mdr_keras.layers.shared_bottom import SharedBottomBackbone
from mdr_keras.layers.star import STARBackbone
from mdr_keras.layers.towers import MLPBackbone

BACKBONES = ("dnn", "adi", "shared-bottom", "cross-stitch", "mmoe", "ple", "star")
LINEAR_BACKBONES = ("dnn", "adi")  # their last layer is always linear


def _widths(units: Sequence[int], output_units: Optional[int]) -> List[int]:
    """`units` as a list, its last width replaced by `output_units` when given."""
    return list(units[:-1]) + [output_units if output_units is not None else units[-1]]


def make_backbone(model: str, num_domains: int, config, output_units: Optional[int] = None,
                  output_activation=None, num_fields: Optional[int] = None, name: str = "backbone"):
    """The backbone layer of `model`, called as `backbone([x, domain, domain_embedding], training)`.

    Args:
        model: one of `BACKBONES`: `"dnn"` (`MLPBackbone`, blind to the domain), `"adi"`,
            `"shared-bottom"`, `"cross-stitch"`, `"mmoe"`, `"ple"` (one level, one shared and one
            specific expert per domain) or `"star"`.
        num_domains: number of domains D.
        config: a `RetrievalConfig` or `RankerConfig`; the backbone reads the fields of its own:
            `dnn_units` (dnn); `num_shared`, `shared_units`, `specific_units`, `fusion`, `dsbn`,
            `input_norm`, `bn_momentum`, `attention`, `attention_placement`, `forward_units`,
            `forward_sharing`, `fused_dropout` (adi, retrieval only); `bottom_units`, `tower_units` (shared-bottom); `stitch_units` (cross-stitch);
            `num_experts`, `expert_units`, `tower_units` (mmoe, ple); `star_units`, `star_aux_units`,
            `star_partitioned_norm`, `bn_momentum` (star); and `dropout` (all but adi).
        output_units: the width of the output: replaces the last width of the backbone's last
            network. Default None: as configured.
        output_activation: activation of the output layer (not for `LINEAR_BACKBONES`). Default None.
        num_fields: the number of equal-width feature fields of the input (adi: the fields of its domain
            attention). Default None: every input unit is a field.
        name: the layer's name.

    Returns:
        The backbone layer, ending in `output_units` dims (or the configured last width).
    """
    if model not in BACKBONES:
        raise ValueError(f"Unknown backbone. Received: model={model!r}; expected one of {BACKBONES}")
    if output_activation is not None and model in LINEAR_BACKBONES:
        raise ValueError(f"The {model!r} backbone ends linear. Received: output_activation={output_activation!r}")
    c = config
    if model == "dnn":
        return MLPBackbone(_widths(c.dnn_units, output_units), dropout=c.dropout, name=name)
    if model == "adi":
        return ADIBackbone(num_domains, num_shared=c.num_shared, shared_units=list(c.shared_units),
                           specific_units=list(c.specific_units), forward_units=_widths(c.forward_units, output_units),
                           forward_sharing=c.forward_sharing,
                           fusion=c.fusion, dsbn=c.dsbn, input_norm=c.input_norm, dropout=c.fused_dropout,
                           bn_momentum=c.bn_momentum, attention=c.attention,
                           attention_placement=c.attention_placement, num_fields=num_fields, name=name)
    common = dict(dropout=c.dropout, output_activation=output_activation, name=name)
    if model == "shared-bottom":
        return SharedBottomBackbone(num_domains, bottom_units=list(c.bottom_units),
                                    tower_units=_widths(c.tower_units, output_units), **common)
    if model == "cross-stitch":
        return CrossStitchBackbone(num_domains, units=_widths(c.stitch_units, output_units), **common)
    if model == "mmoe":
        return MMoEBackbone(num_domains, num_experts=c.num_experts, expert_units=list(c.expert_units),
                            tower_units=_widths(c.tower_units, output_units), **common)
    if model == "ple":
        return PLEBackbone(num_domains, num_levels=1, num_shared_experts=1, num_specific_experts=1,
                           expert_units=list(c.expert_units), tower_units=_widths(c.tower_units, output_units),
                           **common)
    return STARBackbone(num_domains, units=_widths(c.star_units, output_units), aux_units=list(c.star_aux_units),
                        partitioned_norm=c.star_partitioned_norm, pn_momentum=c.bn_momentum, **common)
