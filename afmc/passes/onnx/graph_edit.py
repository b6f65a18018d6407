"""Small editing helpers shared by the ONNX passes: fresh names, new initializers, cleanup."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


class Names:
    """The value names of a graph, to give new initializers names that are still free."""

    def __init__(self, graph: ir.Graph) -> None:
        self.used = set(graph.initializers)
        self.used.update(value.name for value in graph.inputs if value.name)
        for node in graph:
            self.used.update(value.name for value in node.outputs if value.name)

    def fresh(self, base: str) -> str:
        name, index = base, 0
        while name in self.used:
            index += 1
            name = f"{base}_{index}"
        self.used.add(name)
        return name


def add_initializer(graph: ir.Graph, names: Names, base: str, array: np.ndarray) -> ir.Value:
    """Register `array` as a new initializer named after `base` (made unique)."""
    name = names.fresh(base)
    tensor = ir.tensor(np.ascontiguousarray(array), name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def drop_if_unused(graph: ir.Graph, value: ir.Value | None) -> None:
    """Remove `value` once nothing reads it: its initializer, or its producer (recursively)."""
    if value is None or value.uses() or value.is_graph_output():
        return
    if value.is_initializer():
        graph.initializers.pop(value.name)
        return
    producer = value.producer()
    if producer is None or producer.graph is not graph:
        return
    if any(output.uses() or output.is_graph_output() for output in producer.outputs):
        return
    inputs = list(producer.inputs)
    graph.remove(producer, safe=True)
    for upstream in inputs:
        drop_if_unused(graph, upstream)
