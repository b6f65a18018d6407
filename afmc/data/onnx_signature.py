"""The input signature of an ONNX model: what its graph inputs take.

The inputs are the graph inputs that are not initializers, with their element type and
shape (a symbolic dimension by its name). When an embedding table (a Gather on a
constant) reads input_ids, its rows are the vocabulary size; a learned position table
(an initializer named *position_embeddings.weight or *wpe.weight) gives the context
length. Weights are not read: a model loaded lazily stays so.
"""

from __future__ import annotations

import onnx_ir as ir

from afmc.data.calibration import InputSpec, ModelSignature
from afmc.io.user_errors import CaptureError

POSITION_TABLES = ("position_embeddings.weight", "wpe.weight")


def onnx_signature(model: ir.Model) -> ModelSignature:
    """The graph inputs (initializers excepted); when an embedding table reads input_ids,
    the vocabulary size (the table's rows); with a learned position table (an initializer
    named *position_embeddings.weight or *wpe.weight), the context length (its rows)."""
    inputs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else None
        if dtype is None:
            raise CaptureError(f"graph input {value.name!r} has no element type")
        shape = None if value.shape is None else tuple(
            dim if isinstance(dim, int) else dim.value for dim in value.shape)
        inputs.append(InputSpec(value.name, dtype, shape))
    return ModelSignature(tuple(inputs), _vocab_size(model), _max_positions(model))


def _vocab_size(model: ir.Model) -> int | None:
    ids = next((value for value in model.graph.inputs if value.name == "input_ids"), None)
    for user, index in ids.uses() if ids is not None else ():
        table = user.inputs[0]
        if user.op_type == "Gather" and index == 1 and table is not None \
                and table.const_value is not None and table.shape is not None:
            return int(table.shape[0])
    return None


def _max_positions(model: ir.Model) -> int | None:
    """The rows of a learned position-embedding table (BERT, GPT-2), if the model has one."""
    for name, value in model.graph.initializers.items():
        if name.endswith(POSITION_TABLES) and value.shape is not None and len(value.shape) == 2:
            return int(value.shape[0])
    return None
