"""Mixture-of-experts blocks as static-weight linears: every expert runs densely.

transformers 5 stores a block's experts as 3-D parameters (`gate_up_proj`
[E, 2I, H], `down_proj` [E, H, I]) and runs only the routed tokens through
each expert (a grouped matmul or a loop over the experts that were hit), so the
experts are no static-weight linear layers in the graph. On an analog chip each
expert is its own set of crossbars, so before export each such experts module
is replaced by `DenseExperts`: one `nn.Linear` per expert projection, every
expert applied to every token, and each expert's output scaled by its routing
weight, which is zero for the experts the router did not choose. The sum is the
same as the sparse one up to float rounding; the routing itself (the router
linear, softmax, top-k) is unchanged and stays in the graph.

Only the standard layout is rewritten (concatenated [gate; up], not transposed,
no bias, the default gate, no post-expert norm); an experts module in another
layout is refused with a one-line CaptureError naming it.
"""

from __future__ import annotations

import torch
from torch import nn

from afmc.io.user_errors import CaptureError


def _is_experts(module: nn.Module) -> bool:
    """Whether `module` is a transformers experts module (3-D gate_up_proj / down_proj)."""
    weights = [getattr(module, name, None) for name in ("gate_up_proj", "down_proj")]
    return all(isinstance(w, torch.Tensor) and w.dim() == 3 for w in weights)


def _layout_problem(module: nn.Module) -> str | None:
    from transformers.integrations.moe import _default_apply_gate

    flags = {"is_transposed": False, "has_bias": False, "has_gate": True,
             "is_concatenated": True, "has_post_expert_norm": False}
    for flag, expected in flags.items():
        if getattr(module, flag, expected) != expected:
            return f"{flag}={not expected}"
    if getattr(type(module), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        return "a custom gate"
    return None


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype,
                      device=weight.device)
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    return layer


class DenseExperts(nn.Module):
    """forward(hidden [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H].

    Every expert on every token: sum_e w[t, e] * down_e(act(gate_e(x)) * up_e(x)),
    with w[t, e] the routing weight of expert e for token t (0 if not chosen).
    """

    def __init__(self, experts: nn.Module) -> None:
        super().__init__()
        self.num_experts = experts.gate_up_proj.shape[0]
        self.gate_up = nn.ModuleList(_linear(w) for w in experts.gate_up_proj)
        self.down = nn.ModuleList(_linear(w) for w in experts.down_proj)
        self.act_fn = experts.act_fn

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        routing = hidden_states.new_zeros(hidden_states.shape[0], self.num_experts)
        routing = routing.scatter(1, top_k_index, top_k_weights.to(routing.dtype))
        output = torch.zeros_like(hidden_states)
        for index, (gate_up, down) in enumerate(zip(self.gate_up, self.down, strict=True)):
            gate, up = gate_up(hidden_states).chunk(2, dim=-1)
            output = output + down(self.act_fn(gate) * up) * routing[:, index:index + 1]
        return output


def densify_experts(model: nn.Module) -> int:
    """Replace every experts module of `model` by DenseExperts, in place; how many.

    Raises:
        CaptureError: an experts module has a layout DenseExperts does not cover.
    """
    found = [(name, module) for name, module in model.named_modules() if _is_experts(module)]
    for name, module in found:
        problem = _layout_problem(module)
        if problem is not None:
            raise CaptureError(f"mixture-of-experts module '{name}' ({type(module).__name__}) "
                               f"has {problem}; afmc runs experts densely only in the standard "
                               "layout")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DenseExperts(module))
    return len(found)
