"""Raise an ONNX model's default-domain opset to the afmc functions' minimum (18).

Rule: a model whose default-domain opset is below onnx_domain.MIN_OPSET is
converted with onnxscript's version converter (model-local functions are
inlined first; onnx's C converter is the fallback); a model at or above it is
left alone. A conversion that does not reach the minimum is an error that says
so, rather than a model that onnxruntime would later reject.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.version_converter import ConvertVersionPass

from afmc.config import AfmcConfig
from afmc.ops import onnx_domain
from afmc.passes.registry import register_pass


def default_opset(model: ir.Model) -> int:
    """The model's default-domain ("" or "ai.onnx") opset version (0 if none)."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


@register_pass("onnx-upgrade-opset", "onnx")
class UpgradeOpset(ir.passes.InPlacePass):
    """Convert a model below ONNX opset 18 to opset 18 (afmc functions need it)."""

    def __init__(self, config: AfmcConfig | None = None) -> None:
        super().__init__()  # takes the config like every registered pass; needs none

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = default_opset(model)
        if before >= onnx_domain.MIN_OPSET:
            return ir.passes.PassResult(model, False)
        try:
            ConvertVersionPass(onnx_domain.MIN_OPSET, fallback=True)(model)
        except Exception as exc:  # the converters raise many types; the message says which
            raise ValueError(
                f"cannot convert the model from ONNX opset {before} to "
                f"{onnx_domain.MIN_OPSET}: {str(exc).splitlines()[0]}"
            ) from exc
        after = default_opset(model)
        if after < onnx_domain.MIN_OPSET:
            raise ValueError(
                f"cannot convert the model from ONNX opset {before} to "
                f"{onnx_domain.MIN_OPSET} (afmc analog ops need it)"
            )
        return ir.passes.PassResult(model, True)
