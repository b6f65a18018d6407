"""In-memory views of a compiled aimc model, made without rewriting the file.

- fp_reference: every afmc analog linear node becomes MatMul(X, Transpose(W)), the
  floating-point model the analog one was compiled from (SliceInput pads X and W
  alike with zeros, so the product is unchanged); with `keep`, the nodes whose
  weight (the initializer behind W, through SliceInput) is named there stay analog,
  a model in which only those layers are analog. A layer split by split-outliers
  (Add(analog, afmc.SparseOutliers)) computed in floating point keeps its sparse path
  (FP to rounding), or, with `whole_weights` (the runtime hands such a layer its whole
  weights, outliers put back), drops it: then the view is bit for bit the unsplit one.
- with_read_noise: every AnalogLinear becomes NoisyAnalogLinear with the given
  out_noise (a fresh draw on each run); out_noise must be > 0, since a noise node
  with a standard deviation of 0 is never emitted.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx
from onnx import helper

from afmc import ops
from afmc.ops.analog_linear_onnx import ANALOG_OP_TYPES, overload_slices, sliced_function
from afmc.ops.sparse_outliers_onnx import OP_TYPE as SPARSE_OUTLIERS


def fp_reference(model: onnx.ModelProto, keep: Collection[str] = (), *,
                 whole_weights: bool = False) -> onnx.ModelProto:
    """A copy of `model` with every analog linear node computed in floating point, but
    those whose weight initializer is in `keep`; with `whole_weights`, the sparse paths
    of the FP-computed split layers dropped (module docstring)."""
    fp = onnx.ModelProto()
    fp.CopyFrom(model)
    producers = {output: node for node in fp.graph.node for output in node.output}
    to_fp = {node.output[0] for node in fp.graph.node
             if node.domain == ops.DOMAIN and node.op_type in ANALOG_OP_TYPES
             and _weight_of(node, producers) not in keep}
    dropped = set()
    for node in fp.graph.node if whole_weights else ():
        sparse = producers.get(node.input[1]) if len(node.input) == 2 else None
        if (node.op_type == "Add" and node.domain == "" and node.input[0] in to_fp
                and sparse is not None and sparse.domain == ops.DOMAIN
                and sparse.op_type == SPARSE_OUTLIERS):
            node.op_type = "Identity"
            del node.input[1:]
            dropped.add(sparse.output[0])
    nodes = []
    for node in fp.graph.node:
        if node.output and node.output[0] in dropped:
            continue
        if (node.domain == ops.DOMAIN and node.op_type in ANALOG_OP_TYPES
                and _weight_of(node, producers) not in keep):
            x, w = node.input[0], node.input[1]
            transposed = f"{node.output[0]}__fp_weight_t"
            nodes.append(helper.make_node("Transpose", [w], [transposed], perm=[1, 0],
                                          name=f"{node.name}__fp_t"))
            nodes.append(helper.make_node("MatMul", [x, transposed], [node.output[0]],
                                          name=f"{node.name}__fp_matmul"))
        else:
            nodes.append(node)
    del fp.graph.node[:]
    fp.graph.node.extend(nodes)
    return fp


def _weight_of(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str:
    """The initializer behind an analog node's W: its input, or afmc.SliceInput's."""
    producer = producers.get(node.input[1])
    if producer is not None and producer.domain == ops.DOMAIN and \
            producer.op_type == "SliceInput":
        return producer.input[0]
    return node.input[1]


def with_read_noise(model: onnx.ModelProto, out_noise: float) -> onnx.ModelProto:
    """A copy of `model` whose analog nodes add read noise of relative std `out_noise`."""
    if not out_noise > 0:
        raise ValueError(f"read noise must be > 0, got {out_noise}")
    noisy = onnx.ModelProto()
    noisy.CopyFrom(model)
    for node in noisy.graph.node:
        if node.domain == ops.DOMAIN and node.op_type in ANALOG_OP_TYPES:
            node.op_type = "NoisyAnalogLinear"
            kept = [a for a in node.attribute if a.name != "out_noise"]
            del node.attribute[:]
            node.attribute.extend(kept)
            node.attribute.append(helper.make_attribute("out_noise", float(out_noise)))
    present = {(f.domain, f.name, f.overload) for f in noisy.functions}
    opset = next(o.version for o in noisy.opset_import if o.domain in ("", "ai.onnx"))
    for node in noisy.graph.node:
        key = (node.domain, node.op_type, node.overload)
        if node.op_type != "NoisyAnalogLinear" or key in present:
            continue
        present.add(key)
        if node.overload:
            slices = overload_slices(node.overload)
            noisy.functions.append(sliced_function("NoisyAnalogLinear", opset, slices))
        else:
            noisy.functions.extend(ops.function_protos({"NoisyAnalogLinear"}, opset))
    return noisy
