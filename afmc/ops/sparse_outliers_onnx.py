"""afmc sparse outliers, ONNX form (no torch): the exact digital path of an analog
layer's outlier weights.

An analog layer split by the split-outliers pass computes
``analog_linear(x, W_dense) + sparse_outliers(x, indices, values)``: row j of the
sparse part holds M weights ``values[j, t]`` at input columns ``indices[j, t]``
(zeros pad rows with fewer), so

    y[..., j] = sum_t x[..., indices[j, t]] * values[j, t]      (digital, float)

The ONNX op is ``afmc.SparseOutliers(X, indices, values)`` with overload ``m{M}``, a
model-local function that accumulates slot by slot (Gather of X's columns, Mul, Add):
its largest intermediate is the output's size, never [..., N, M]. The torch op and
the translation are in afmc.ops.sparse_outliers; both forms accumulate the slots in
the same order t = 0 .. M-1.
"""

from __future__ import annotations

import onnx
from onnx import FunctionProto, helper
from onnx.defs import OpSchema

from afmc.ops import onnx_domain

OP_TYPE = "SparseOutliers"
_DOC = ("Exact digital path of an analog layer's outlier weights: "
        "Y[..., j] = sum_t X[..., indices[j, t]] * values[j, t].")


def _register_schema() -> None:
    if onnx.defs.has(OP_TYPE, onnx_domain.DOMAIN):
        return
    onnx.defs.register_schema(OpSchema(
        OP_TYPE, onnx_domain.DOMAIN, onnx_domain.VERSION, _DOC,
        inputs=[OpSchema.FormalParameter("X", "T", "input [..., K]"),
                OpSchema.FormalParameter("indices", "I", "input columns [N, M]"),
                OpSchema.FormalParameter("values", "T", "outlier weights [N, M]")],
        outputs=[OpSchema.FormalParameter("Y", "T", "[..., N]")],
        type_constraints=[("T", ["tensor(float)"], "float32 tensors"),
                          ("I", ["tensor(int64)"], "column indices")],
    ))


_register_schema()


def slot_overload(slots: int) -> str:
    """The overload name of a SparseOutliers node with `slots` weights per row."""
    return f"m{slots}"


def overload_slots(overload: str) -> int:
    """The slot count M of a SparseOutliers overload ``m{M}``."""
    if not overload.startswith("m") or not overload[1:].isdigit():
        raise ValueError(f"not a SparseOutliers overload: {overload!r}")
    return int(overload[1:])


def sparse_outliers_function(opset: int, slots: int) -> FunctionProto:
    """The body of SparseOutliers for M = `slots`: slot by slot, Gather X's columns of the
    slot's indices, multiply by its values, add (weight-only Gathers fold at load)."""
    nodes = []
    total = None
    for t in range(slots):
        position = f"slot_{t}"
        nodes.append(helper.make_node("Constant", [], [position],
                                      value=helper.make_tensor(position, onnx.TensorProto.INT64,
                                                               [], [t])))
        nodes += [
            helper.make_node("Gather", ["indices", position], [f"index_{t}"], axis=1),
            helper.make_node("Gather", ["values", position], [f"value_{t}"], axis=1),
            helper.make_node("Gather", ["X", f"index_{t}"], [f"column_{t}"], axis=-1),
        ]
        product = "Y" if slots == 1 else f"product_{t}"
        nodes.append(helper.make_node("Mul", [f"column_{t}", f"value_{t}"], [product]))
        if total is not None:
            out = "Y" if t == slots - 1 else f"total_{t}"
            nodes.append(helper.make_node("Add", [total, product], [out]))
            total = out
        else:
            total = product
    function = onnx_domain.make_function(OP_TYPE, ["X", "indices", "values"], ["Y"], nodes,
                                         opset, {}, _DOC)
    function.overload = slot_overload(slots)
    return function
