"""Placement: decide analog or digital for every static-weight layer.

Rule: every static-weight matrix product (static_linear.find_static_linears) is
analog, except layers whose name matches one of the configured `digital`
regular expressions (re.search on the module path; first matching pattern is
recorded). A pattern that matches no layer is an error naming the pattern.
"""

from __future__ import annotations

import re

from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from afmc.config import AfmcConfig, ConfigError
from afmc.passes.fx.static_linear import find_static_linears
from afmc.passes.layers import META_KEY, LayerRecord
from afmc.passes.registry import register_pass

DEFAULT_RULE = "default: static-weight linear layers are analog"


@register_pass("place-layers", "fx")
class PlaceLayers(PassBase):
    """Mark each static-weight linear layer analog or digital (first matching rule wins)."""

    preserves_output = True

    def __init__(self, config: AfmcConfig) -> None:
        super().__init__()
        self.patterns = config.placement.digital

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        layers = find_static_linears(graph_module)
        compiled = []
        for pattern in self.patterns:
            try:
                compiled.append((pattern, re.compile(pattern)))
            except re.error as error:
                raise ConfigError(f"placement.digital: bad pattern {pattern!r}: {error}") from None
        used: set[str] = set()
        for layer in layers:
            match = next((p for p, regex in compiled if regex.search(layer.name)), None)
            if match is not None:
                used.add(match)
            layer.node.meta[META_KEY] = LayerRecord(
                name=layer.name,
                in_features=layer.in_features,
                out_features=layer.out_features,
                placement="digital" if match else "analog",
                rule=f"digital: {match}" if match else DEFAULT_RULE,
                weight=layer.weight.target,
            )
        unused = [pattern for pattern in self.patterns if pattern not in used]
        if unused:
            raise ConfigError(f"placement.digital: pattern {unused[0]!r} matches no layer")
        return PassResult(graph_module, bool(layers))
