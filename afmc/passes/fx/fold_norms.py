"""Fold the scale and shift of LayerNorm and RMSNorm into the linear layers that read them.

Rule: a norm ``y = n * g (+ beta)`` (fold_norm_sites) whose every reader is the
input x of a static-weight linear layer (static_linear: ``aten.linear``, or
``addmm`` / ``mm`` / ``matmul`` with an [in, out] weight such as GPT-2's Conv1D)
gets, in each reader (all of them together: q/k/v, gate/up), with the weight
taken as W [out, in] and bias b::

    W' = W * diag(g)        (column scaling)
    b' = b + W @ beta       (LayerNorm shift; an aten.linear without bias gains one)

and loses its own scale and shift (it then computes scale one, no shift).
Readers are found through the ops that pass every row of the last (feature)
axis on intact: dtype casts that are float32 -> float32 identities, views and
reshapes that keep the size of the last dim, and slices along another dim;
``aten._assert_tensor_metadata`` checks are ignored.

A norm is left unchanged, with a note that says why (passes.layers.NOTES_KEY),
when any reader is something else (a residual add, the graph output, ...), when
a reader's weight or bias is also read elsewhere or tied to another parameter
name (an LM head tied to the embedding), when a shift would have to go into an
mm / matmul, which has no bias, or when the norm is not foldable itself (no
affine parameters, several normalised dims, an unrecognised RMSNorm).
"""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from afmc.config import AfmcConfig
from afmc.passes.fx.fold_common import (
    CASTS,
    attr,
    describe,
    is_parameter,
    new_parameter,
    record_note,
    replace_parameter,
    set_bias,
    sharing,
)
from afmc.passes.fx.fold_norm_sites import NormSite, find_norm_sites, strip_affine
from afmc.passes.fx.ordering import OrderedPass
from afmc.passes.fx.static_linear import StaticLinear, find_static_linears
from afmc.passes.registry import register_pass
from afmc.passes.stages import Needs

aten = torch.ops.aten

_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_IGNORED = {aten._assert_tensor_metadata.default}


def _keeps_rows(user: fx.Node, value: fx.Node) -> bool:
    """Whether `user` passes `value` on with every row of its last axis intact."""
    if user.op != "call_function" or not user.args or user.args[0] is not value:
        return False
    before, after = value.meta.get("val"), user.meta.get("val")
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return False
    if user.target in CASTS:
        return before.dtype == after.dtype == torch.float32 and before.device == after.device
    if user.target in _VIEWS:
        width = before.shape[-1]
        return after.dim() > 0 and isinstance(width, int) and after.shape[-1] == width
    if user.target is aten.slice.Tensor:
        dim = user.args[1] if len(user.args) > 1 else 0
        return dim % before.dim() != before.dim() - 1
    return False


def _readers(
    site: NormSite, linears: dict[fx.Node, StaticLinear]
) -> tuple[list[StaticLinear], str | None]:
    """The linear layers that read the norm's output, or the reason one reader is not one."""
    found, pending = [], [site.output]
    while pending:
        value = pending.pop()
        for user in value.users:
            if user.target in _IGNORED:
                continue
            if _keeps_rows(user, value):
                pending.append(user)
                continue
            layer = linears.get(user)
            if layer is None or layer.x is not value:
                return [], f"{describe(user)} reads its output"
            found.append(layer)
    if not found:
        return [], "nothing reads its output"
    return found, None


def _reader_refusal(
    gm: fx.GraphModule, layer: StaticLinear, width: int, shifts: bool
) -> str | None:
    """Why the norm cannot be folded into `layer`, or None."""
    if layer.in_features != width:
        return f"{layer.name} has {layer.in_features} inputs, the norm {width} features"
    shared = sharing(gm, layer.weight, layer.node)
    if shared:
        return shared
    if not shifts:
        return None
    if layer.bias is None:
        if layer.node.target is aten.linear.default:
            return None
        return f"{layer.name} ({layer.node.target}) has no bias to take the norm's shift"
    if not is_parameter(gm, layer.bias):
        return f"the bias of {layer.name} is not a parameter"
    return sharing(gm, layer.bias, layer.node)


def _tensor(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    """The constant in at least float32, the precision the fold computes in.

    A float32 product of two float32 numbers is correctly rounded, so W * g matches
    a float64 fold bit for bit without a float64 copy of large weights (an LM head).
    """
    if node is None:
        return None
    value = attr(gm, node.target).detach()
    return value.to(torch.promote_types(value.dtype, torch.float32))


def _fold_into(
    gm: fx.GraphModule, layer: StaticLinear, scale: torch.Tensor | None, shift: torch.Tensor | None
) -> None:
    """W' = W diag(scale) and b' = b + W shift for one reader (W as [out, in])."""
    weight = _tensor(gm, layer.weight)
    if scale is not None:
        columns = scale[:, None] if layer.transposed else scale
        replace_parameter(gm, layer.weight.target, weight * columns.to(weight.dtype))
    if shift is None:
        return
    shift = shift.to(weight.dtype)
    delta = shift @ weight if layer.transposed else weight @ shift
    if layer.bias is not None:
        replace_parameter(gm, layer.bias.target, _tensor(gm, layer.bias) + delta)
        return
    owner = layer.weight.target.rpartition(".")[0]
    dtype = attr(gm, layer.weight.target).dtype
    target = new_parameter(gm, owner, "bias", delta.to(dtype))
    with gm.graph.inserting_before(layer.node):
        set_bias(layer.node, gm.graph.get_attr(target))


def _fold_site(gm: fx.GraphModule, site: NormSite, linears: dict[fx.Node, StaticLinear]) -> bool:
    """Fold one norm into its readers if it can be; note the outcome either way."""
    readers, reason = ([], site.problem) if site.problem else _readers(site, linears)
    scale, shift = _tensor(gm, site.scale), _tensor(gm, site.shift)
    if reason is None:
        width = (scale if scale is not None else shift).numel()
        if shift is not None and not shift.any():
            shift = None
        refusals = (_reader_refusal(gm, layer, width, shift is not None) for layer in readers)
        reason = next((refusal for refusal in refusals if refusal), None)
    folded = reason is None
    if folded:
        for layer in readers:
            _fold_into(gm, layer, scale, shift)
        strip_affine(gm, site)
        reason = "folded into " + ", ".join(layer.name for layer in readers)
    record_note(gm, site.name, folded, reason)
    return folded


@register_pass("fold-norms", "fx")
class FoldNorms(OrderedPass):
    """Fold LayerNorm/RMSNorm scale and shift into the linear layers that read the norm."""

    needs = Needs(analog_ops=False)

    preserves_output = True

    def __init__(self, config: AfmcConfig | None = None) -> None:
        """`config` is accepted as the registry constructs every pass; folding needs none."""
        super().__init__()

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        linears = {layer.node: layer for layer in find_static_linears(graph_module)}
        modified = False
        for site in find_norm_sites(graph_module):
            modified |= _fold_site(graph_module, site, linears)
        if modified:
            graph_module.graph.lint()
            graph_module.recompile()
        return PassResult(graph_module, modified)
