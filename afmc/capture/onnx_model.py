"""ONNX front end: load an ONNX file into an onnx_ir model, or fail with one clear line.

The file is parsed without reading external data (onnx_ir maps it lazily), so a
large model loads quickly; every external tensor is then checked against its
data file, so a missing or truncated `<name>.data` is reported here, naming the
file and the first tensor it lacks, rather than deep inside a later pass.

A node of a domain onnxruntime does not implement (not the standard one,
ai.onnx.ml nor com.microsoft), for which the model holds no local
function, is an error naming the node and its domain: nothing could run it.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx_ir as ir

from afmc.io.user_errors import CaptureError, first_line

RUNNABLE_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def load_onnx_model(path: str | os.PathLike) -> ir.Model:
    """Load `path` as an onnx_ir model.

    Raises:
        CaptureError: the file is missing or not a readable ONNX model, the model has
            no graph nodes, a node of an unknown domain has no local function, or an
            external data file is missing or too short.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"{path}: ONNX file not found")
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors vary by version
        raise CaptureError(f"{path}: not a valid ONNX model ({first_line(exc)})") from exc
    if len(model.graph) == 0:
        raise CaptureError(f"{path}: the ONNX graph has no nodes")
    _check_domains(path, model)
    _check_external_data(path, model)
    return model


def _check_domains(path: Path, model: ir.Model) -> None:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in RUNNABLE_DOMAINS and node.op_identifier() not in model.functions:
            raise CaptureError(
                f"{path}: node {node.name or node.op_type!r} is {node.op_type} of the custom "
                f"domain {node.domain!r}, and the model holds no function for it "
                "(onnxruntime cannot run it)"
            )


def _check_external_data(path: Path, model: ir.Model) -> None:
    sizes: dict[str, int] = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        data = tensor.path
        if data not in sizes:
            sizes[data] = os.path.getsize(data) if os.path.isfile(data) else -1
        if sizes[data] < 0:
            raise CaptureError(
                f"{path}: external data file {tensor.location} not found "
                f"(needed by initializer {value.name!r})"
            )
        needed = (tensor.offset or 0) + (tensor.length or tensor.nbytes)
        if sizes[data] < needed:
            raise CaptureError(
                f"{path}: external data file {tensor.location} is too short "
                f"for initializer {value.name!r} ({sizes[data]} < {needed} "
                "bytes)"
            )
