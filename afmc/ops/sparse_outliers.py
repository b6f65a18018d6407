"""afmc sparse outliers, torch form: ``torch.ops.afmc.sparse_outliers(x, indices, values)``.

y[..., j] = sum_t x[..., indices[j, t]] * values[j, t] (the exact digital path of an
analog layer's outlier weights; ONNX form and semantics in
afmc.ops.sparse_outliers_onnx), with gradients for x and values so a split program
can be trained, and its translation to ``afmc.SparseOutliers`` for torch.onnx's
custom_translation_table. Slots accumulate in order t = 0 .. M-1, as in the ONNX body.
"""

from __future__ import annotations

import torch
from onnxscript import values as onnxscript_values

from afmc.ops import onnx_domain


@torch.library.custom_op("afmc::sparse_outliers", mutates_args=())
def sparse_outliers(x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
                    ) -> torch.Tensor:
    """y[..., j] = sum_t x[..., indices[j, t]] * values[j, t], slot by slot."""
    out = None
    for t in range(indices.shape[1]):
        product = x.index_select(-1, indices[:, t]) * values[:, t]
        out = product if out is None else out.add_(product)
    if out is None:
        return x.new_zeros(*x.shape[:-1], indices.shape[0])
    return out


@sparse_outliers.register_fake
def _sparse_outliers_fake(x, indices, values):
    return x.new_empty(*x.shape[:-1], indices.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    x, indices, values = inputs
    ctx.save_for_backward(x, indices, values)


def _backward(ctx, grad_output: torch.Tensor):
    """d/dx: each slot's upstream gradient times its values, added into its columns;
    d/dvalues: the upstream gradient times the gathered inputs, summed over the batch."""
    x, indices, values = ctx.saved_tensors
    grad_x = torch.zeros_like(x)
    grad_values = torch.zeros_like(values)
    flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
    flat_x = x.reshape(-1, x.shape[-1])
    for t in range(indices.shape[1]):
        column = indices[:, t]
        grad_x.index_add_(-1, column, grad_output * values[:, t])
        grad_values[:, t] = (flat_grad * flat_x.index_select(-1, column)).sum(dim=0)
    return grad_x, None, grad_values


sparse_outliers.register_autograd(_backward, setup_context=_setup_context)
SPARSE_OUTLIERS = torch.ops.afmc.sparse_outliers.default

_AFMC_OPSET = onnxscript_values.Opset(onnx_domain.DOMAIN, onnx_domain.VERSION)


def translate_sparse_outliers(x, indices, values):
    """torch.onnx custom translation: afmc::sparse_outliers -> afmc.SparseOutliers."""
    return _AFMC_OPSET.SparseOutliers(x, indices, values)


TRANSLATIONS = {SPARSE_OUTLIERS: translate_sparse_outliers}
