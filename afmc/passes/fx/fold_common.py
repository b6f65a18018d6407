"""What the folding passes share: parameter surgery, tied-weight checks, fold notes.

The graph module shares its parameter tensors with the captured FP module, so a
fold never edits a tensor in place: it installs a new ``nn.Parameter`` under the
same name (``replace_parameter``) or a new name (``new_parameter``).

Every norm a folding pass looks at gets a note in
``graph_module.meta["afmc_fold_notes"]``: ``{"norm": module path, "folded":
bool, "reason": str}``, also logged on the ``afmc.passes.fold`` logger.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import fx, nn

from afmc.passes.layers import NOTES_KEY

CASTS = {
    torch.ops.aten.to.dtype,
    torch.ops.aten.to.dtype_layout,
    torch.ops.aten.to.device,
    torch.ops.aten._to_copy.default,
}
logger = logging.getLogger("afmc.passes.fold")


def record_note(gm: fx.GraphModule, norm: str, folded: bool, reason: str) -> None:
    """Append a fold note to the graph module and log it."""
    gm.meta.setdefault(NOTES_KEY, []).append({"norm": norm, "folded": folded, "reason": reason})
    logger.info("%s: %s (%s)", norm, "folded" if folded else "left unchanged", reason)


def module_path(node: fx.Node) -> str:
    """The innermost module the node was traced in (nn_module_stack), else the node's name."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return path
    return node.name


def module_class(node: fx.Node) -> str:
    """The qualified class name of the innermost module the node was traced in, or ''."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    cls = list(stack.values())[-1][1]
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def describe(node: fx.Node) -> str:
    """A node as a reason names it: 'add_3 (aten.add.Tensor in lm.model.layers.0)'."""
    if node.op == "output":
        return "the graph output"
    return f"{node.name} ({node.target} in {module_path(node)})"


def attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    """The tensor a get_attr target names."""
    return functools.reduce(getattr, target.split("."), gm)


def is_parameter(gm: fx.GraphModule, node: object) -> bool:
    """Whether `node` is a get_attr of an nn.Parameter."""
    return (
        isinstance(node, fx.Node)
        and node.op == "get_attr"
        and isinstance(attr(gm, node.target), nn.Parameter)
    )


def is_constant(node: object) -> bool:
    """Whether `node` is a get_attr (a parameter or a buffer of the module)."""
    return isinstance(node, fx.Node) and node.op == "get_attr"


def sharing(gm: fx.GraphModule, node: fx.Node, reader: fx.Node) -> str | None:
    """Why the tensor of get_attr `node` cannot be rewritten for `reader` alone, or None.

    It can not when another node reads it, or another name of the module holds
    the same tensor (tied weights, e.g. an LM head that is also the embedding).
    """
    others = [describe(user) for user in node.users if user is not reader]
    if others:
        return f"{node.target} is also read by {', '.join(others)}"
    tensor = attr(gm, node.target)
    aliases = [
        name
        for name, value in gm.named_parameters(remove_duplicate=False)
        if value is tensor and name != node.target
    ]
    if aliases:
        return f"{node.target} is tied to {', '.join(aliases)}"
    return None


def _owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    path, _, leaf = target.rpartition(".")
    return gm.get_submodule(path), leaf


def replace_parameter(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    """Install `value` as a new parameter under `target` (the old tensor is left untouched)."""
    owner, leaf = _owner(gm, target)
    old = getattr(owner, leaf)
    owner.register_parameter(
        leaf, nn.Parameter(value.detach().to(old.dtype), requires_grad=old.requires_grad)
    )


def new_parameter(gm: fx.GraphModule, owner_path: str, name: str, value: torch.Tensor) -> str:
    """Register `value` as a parameter of `owner_path` under a free name; return its target.

    A parameter slot registered as None (``nn.Linear(bias=False).bias``) counts as free.
    """
    owner = gm.get_submodule(owner_path)
    leaf, index = name, 0
    while hasattr(owner, leaf) and not _empty_slot(owner, leaf):
        index += 1
        leaf = f"{name}_{index}"
    owner.register_parameter(leaf, nn.Parameter(value.detach()))
    return f"{owner_path}.{leaf}" if owner_path else leaf


def _empty_slot(module: nn.Module, leaf: str) -> bool:
    return leaf in module._parameters and module._parameters[leaf] is None


def drop_if_unused(gm: fx.GraphModule, node: object) -> None:
    """Erase a get_attr node nobody reads, and its attribute when no other node names it."""
    if not is_constant(node) or node.users:
        return
    target = node.target
    gm.graph.erase_node(node)
    if not gm.graph.find_nodes(op="get_attr", target=target):
        owner, leaf = _owner(gm, target)
        delattr(owner, leaf)


def set_bias(node: fx.Node, bias: fx.Node) -> None:
    """Make `bias` the bias operand (position 2 or keyword) of a linear or convolution node."""
    if "bias" in node.kwargs:
        node.update_kwarg("bias", bias)
    elif len(node.args) > 2:
        node.update_arg(2, bias)
    else:
        node.args = (*node.args, bias)
