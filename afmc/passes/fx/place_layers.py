"""Placement: decide analog or digital for every static-weight layer.

Rule: every static-weight matrix product (static_linear.find_static_linears) is
analog, except layers whose name matches one of the configured `digital`
regular expressions (re.search on the module path; first matching pattern is
recorded). A pattern that matches no layer is an error naming the pattern.
"""

from __future__ import annotations

from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.fx.static_linear import find_static_linears
from afmc.passes.layers import META_KEY, LayerRecord
from afmc.passes.name_rules import DEFAULT_RULE, PlacementRules
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs


@register_pass("place-layers", "fx")
class PlaceLayers(OrderedPass):
    """Mark each static-weight linear layer analog or digital (first matching rule wins)."""

    needs = Needs(analog_ops=False)

    preserves_output = True

    def __init__(self, config: AfmcConfig) -> None:
        super().__init__()
        self.placement = config.placement

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        layers = find_static_linears(graph_module)
        rules = PlacementRules(self.placement)
        for layer in layers:
            placement, rule = rules.decide([layer.name], layer.node.target.__name__.split(".")[0])
            layer.node.meta[META_KEY] = LayerRecord(
                name=layer.name,
                in_features=layer.in_features,
                out_features=layer.out_features,
                placement=placement,
                rule=rule or DEFAULT_RULE,
                weight=layer.weight.target,
            )
        rules.check_all_used()
        return PassResult(graph_module, bool(layers))
