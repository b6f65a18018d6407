"""Find the LayerNorm and RMSNorm applications of an FX graph and their affine parts.

Recognised forms:

- ``aten.layer_norm(x, [K], weight, bias, eps)`` (nn.LayerNorm) and
  ``aten.rms_norm(x, [K], weight, eps)`` (nn.RMSNorm): scale = weight,
  shift = bias; both are stripped by passing None instead.
- Hugging Face RMSNorm modules (LlamaRMSNorm, Qwen2RMSNorm, Phi3RMSNorm, ...),
  traced as pow / mean / add / rsqrt / mul and a last ``mul(weight, normed)``:
  a node whose innermost nn_module_stack class name ends in "RMSNorm" and that
  multiplies a 1-D constant by ``x * rsqrt(...)`` (through dtype casts) is the
  scale multiply; it is stripped by reading ``normed`` in its place. An RMSNorm
  module without such a multiply (e.g. a ``(1 + weight)`` scale) is reported
  with a `problem`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from afmc.passes.fx.fold_common import (
    CASTS,
    attr,
    drop_if_unused,
    is_constant,
    module_class,
    module_path,
)

aten = torch.ops.aten

_ATEN_NORMS = {aten.layer_norm.default: 3, aten.rms_norm.default: None}  # op -> bias position
_WEIGHT_AT = 2


@dataclass(frozen=True)
class NormSite:
    """One norm application: the node its readers read, its scale and shift constants.

    `problem` says why the site cannot be folded whatever reads it (None: it can).
    """

    name: str
    output: fx.Node
    scale: fx.Node | None
    shift: fx.Node | None
    problem: str | None = None


def _operand(node: fx.Node, position: int | None, key: str) -> object:
    """The operand `key` of `node`, passed by keyword or at `position` (None: absent)."""
    if key in node.kwargs:
        return node.kwargs[key]
    if position is not None and position < len(node.args):
        return node.args[position]
    return None


def _aten_site(node: fx.Node) -> NormSite:
    scale = _operand(node, _WEIGHT_AT, "weight")
    shift = _operand(node, _ATEN_NORMS[node.target], "bias")
    problem = None
    if len(node.args[1]) != 1:
        problem = f"it normalises over {len(node.args[1])} dimensions, not the last one"
    elif scale is None and shift is None:
        problem = "it has no affine parameters"
    elif not all(operand is None or is_constant(operand) for operand in (scale, shift)):
        problem = "its affine parameters are not constants of the module"
    return NormSite(module_path(node), node, scale, shift, problem)


def _strip_casts(node: object) -> object:
    while isinstance(node, fx.Node) and node.target in CASTS:
        node = node.args[0]
    return node


def _is_rsqrt_normalised(node: object) -> bool:
    node = _strip_casts(node)
    return (
        isinstance(node, fx.Node)
        and node.target is aten.mul.Tensor
        and any(isinstance(arg, fx.Node) and arg.target is aten.rsqrt.default for arg in node.args)
    )


def _scale_multiply(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The 1-D constant that `node` multiplies an RMS-normalised value by, or None."""
    if node.target is not aten.mul.Tensor or len(node.args) != 2:
        return None
    for scale, normed in (node.args, node.args[::-1]):
        if (
            is_constant(scale)
            and attr(gm, scale.target).dim() == 1
            and _is_rsqrt_normalised(normed)
        ):
            return scale
    return None


def find_norm_sites(gm: fx.GraphModule) -> list[NormSite]:
    """Every LayerNorm / RMSNorm application of `gm`, in graph order."""
    sites: list[NormSite] = []
    rms_modules: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _ATEN_NORMS:
            sites.append(_aten_site(node))
        elif module_class(node).endswith("RMSNorm"):
            rms_modules.setdefault(module_path(node), node)
            scale = _scale_multiply(gm, node)
            if scale is not None:
                sites.append(NormSite(module_path(node), node, scale, None))
    found = {site.name for site in sites}
    for name, node in rms_modules.items():
        if name not in found:
            problem = "no multiply of x * rsqrt(...) by a 1-D weight was found in it"
            sites.append(NormSite(name, node, None, None, problem))
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    return sorted(sites, key=lambda site: order[site.output])


def strip_affine(gm: fx.GraphModule, site: NormSite) -> None:
    """Remove the scale and shift of `site` from the graph (the norm then computes scale 1)."""
    node = site.output
    if node.target in _ATEN_NORMS:
        for position, key in ((_WEIGHT_AT, "weight"), (_ATEN_NORMS[node.target], "bias")):
            if key in node.kwargs:
                node.update_kwarg(key, None)
            elif _operand(node, position, key) is not None:
                node.update_arg(position, None)
    else:
        normed = next(arg for arg in node.args if arg is not site.scale)
        node.replace_all_uses_with(normed)
        gm.graph.erase_node(node)
    drop_if_unused(gm, site.scale)
    drop_if_unused(gm, site.shift)
