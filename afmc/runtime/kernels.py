"""The operators ONNX Runtime actually runs for a model file, after its graph optimizations.

The file alone does not say which kernels run: when ONNX Runtime builds a session it
fuses QuantizeLinear / DequantizeLinear around a MatMul into MatMulIntegerToFloat or
QLinearMatMul, folds constant Transposes into weights, and so on. Rule: `executed_graph`
builds a CPU session at full optimization (what a chip's session does) with
``optimized_model_filepath`` set, and reads back the graph it wrote.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort


def executed_graph(path: Path) -> onnx.GraphProto:
    """The graph ONNX Runtime's CPU provider runs for the model at `path`."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory(prefix="afmc-kernels-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "executed.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath).graph


def executed_ops(path: Path) -> Counter[str]:
    """How many nodes of each operator type ONNX Runtime runs for the model at `path`."""
    return Counter(node.op_type for node in executed_graph(path).node)
