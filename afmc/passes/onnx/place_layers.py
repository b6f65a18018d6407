"""Placement on an ONNX graph: decide analog or digital for every static-weight layer.

Rule (the same as the FX pass place-layers): every static-weight layer
(static_layers.find_static_layers) is analog, except layers whose name or weight
initializer name matches one of the configured `digital` regular expressions
(re.search; the first matching pattern is recorded). A pattern that matches no
layer is an error naming the pattern. A layer afmc cannot map to an analog op
stays digital with the reason as its rule, and a warning
(UnsupportedLayerWarning). A name already taken (a module run twice) gets a
suffix _1, _2, ... The LayerRecord goes on the node (``node.meta["afmc"]``) and
its name and placement into the node's metadata_props, so they survive in the file.
"""

from __future__ import annotations

import warnings

import onnx_ir as ir

from afmc.config import AfmcConfig
from afmc.passes.layers import META_KEY, LayerRecord
from afmc.passes.name_rules import DEFAULT_RULE, PlacementRules
from afmc.passes.onnx.ordering import OrderedOnnxPass
from afmc.passes.onnx.static_layers import (
    OnnxLayer,
    UnsupportedLayerWarning,
    find_static_layers,
)
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs

PLACEMENT_PROP = "afmc.placement"
LAYER_PROP = "afmc.layer"
NAMES_SHOWN = 6


class GroupedConvolutionWarning(UnsupportedLayerWarning):
    """Grouped convolutions stay digital in an analog compile (placement.grouped_convs)."""


@register_pass("onnx-place-layers", "onnx")
class PlaceOnnxLayers(OrderedOnnxPass):
    """Mark each static-weight ONNX layer analog or digital (first matching rule wins)."""

    needs = Needs(analog_ops=False)

    crossbars = True  # the accelerator is crossbars: grouped convolutions by their setting

    def __init__(self, config: AfmcConfig) -> None:
        super().__init__()
        self.placement = config.placement

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rules = PlacementRules(self.placement)
        layers = find_static_layers(model.graph)
        names: set[str] = set()
        grouped: list[str] = []
        for layer in layers:
            name = _unique(layer.name, names)
            placement, rule = rules.decide([name, layer.weight.name or ""], layer.node.op_type)
            limit = self._limit(layer)
            if limit:
                rule = f"digital: {limit}"
                if layer.unsupported:
                    warnings.warn(f"{name}: stays digital: {limit}", UnsupportedLayerWarning,
                                  stacklevel=1)
                else:
                    grouped.append(name)
                placement = "digital"
            else:
                rule = rule or DEFAULT_RULE
            block_diagonal = self.crossbars and placement == "analog" and layer.groups != 1
            layer.node.meta[META_KEY] = LayerRecord(
                name=name,
                in_features=layer.crossbar_features if block_diagonal else layer.in_features,
                out_features=layer.out_features,
                placement=placement,
                rule=rule,
                weight=layer.weight.name or "",
                groups=layer.groups if block_diagonal else 1,
            )
            layer.node.metadata_props[LAYER_PROP] = name
            layer.node.metadata_props[PLACEMENT_PROP] = placement
        rules.check_all_used()
        if grouped:
            shown = ", ".join(grouped[:NAMES_SHOWN]) + (", ..." if len(grouped) > NAMES_SHOWN
                                                         else "")
            warnings.warn(f"{len(grouped)} grouped convolution(s) stay digital "
                          f"(placement.grouped_convs=analog maps them block-diagonally): "
                          f"{shown}", GroupedConvolutionWarning, stacklevel=1)
        return ir.passes.PassResult(model, bool(layers))

    def _limit(self, layer: OnnxLayer) -> str:
        """Why `layer` cannot go on this accelerator ('' when it can)."""
        if layer.unsupported:
            return layer.unsupported
        if self.crossbars and self.placement.grouped_convs == "digital":
            return layer.crossbar_limit and f"{layer.crossbar_limit}, placement.grouped_convs"
        return ""


@register_pass("onnx-place-integer-layers", "onnx")
class PlaceOnnxIntegerLayers(PlaceOnnxLayers):
    """Mark each static-weight ONNX layer for the integer accelerator (grouped convolutions
    included) or floating point (first matching rule wins)."""

    crossbars = False


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`, ... when a layer already has it (a module run twice)."""
    unique, index = name, 0
    while unique in taken:
        index += 1
        unique = f"{name}_{index}"
    taken.add(unique)
    return unique
