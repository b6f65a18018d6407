"""The torch form of an ONNX graph: an nn.Module that computes the graph, to train it.

Rule: every node of the main graph runs in graph order through afmc.train.onnx_ops, except
the static-weight layers that onnx-place-layers names (static_layers.find_static_layers):
each becomes an nn.Linear holding its crossbar matrix W [N, K] (a MatMul's [K, N] weight
transposed, a Gemm's times alpha, a Conv's flattened in im2col order) and its bias (a
Conv's B, a Gemm's beta * C when constant), computed on the layer's input as the crossbar
sees it: x [..., K] for MatMul and Gemm, every input patch [batch, positions, C * k...]
for a Conv of group 1 (the patch order of the flattened weight), its output put back in
[batch, N, spatial...]. Grouped convolutions run as convolutions. Each layer's nn.Linear
sits in ``layers`` under its record name (dots as ``__``), so hardware-aware training can
swap the analog ones for AnalogTrainingLinear, and every other float initializer of more
than one value is a Parameter in ``tensors`` (biases, depthwise kernels, norm scales), so
training updates what the ONNX file stores; scalars (Clip bounds, epsilons, the
constants of Mul / Div) stay constants.

``write_back`` puts the trained values into the ONNX model: each initializer in its own
layout (W^T for MatMul, W / alpha for a Gemm, the bias / beta), a layer whose weight is
read by another node too getting its own new initializer. The graph is left as it was.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from afmc.config import AfmcConfig, ConfigError
from afmc.passes.layers import META_KEY, LayerRecord
from afmc.passes.onnx.graph_edit import Names, add_initializer
from afmc.passes.onnx.place_layers import PlaceOnnxLayers
from afmc.passes.onnx.static_layers import OnnxLayer, constant, crossbar_matrix, find_static_layers
from afmc.train.onnx_ops import OPS, conv, pad_spatial


def module_key(name: str) -> str:
    """A layer name as an nn.ModuleDict key (no dots)."""
    return name.replace(".", "__")


class _Layer:
    """How one static layer's node maps onto its nn.Linear."""

    def __init__(self, layer: OnnxLayer, record: LayerRecord) -> None:
        node = layer.node
        self.layer, self.record, self.node = layer, record, node
        self.kind = node.op_type
        gemm = self.kind == "Gemm"
        self.alpha = node.attributes.get_float("alpha", 1.0) if gemm else 1.0
        self.beta = node.attributes.get_float("beta", 1.0) if gemm else 1.0
        self.trans_a = gemm and bool(node.attributes.get_int("transA", 0))
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        value = constant(bias)
        # a constant bias of one value per output folds into the Linear; else it stays an add
        self.bias_value = bias if value is not None and value.size == layer.out_features \
            and (self.kind == "Conv" or value.ndim == 1) else None
        self.extra_bias = bias if bias is not None and self.bias_value is None else None
        self.grouped = layer.groups != 1
        self.attributes = {key: attribute.value for key, attribute in node.attributes.items()}

    def linear(self) -> nn.Module:
        weight = torch.from_numpy(crossbar_matrix(self.layer) * np.float32(self.alpha))
        if self.grouped:
            weight = torch.from_numpy(constant(self.layer.weight).copy())
        module = nn.Linear(self.layer.in_features, self.layer.out_features,
                           bias=self.bias_value is not None, device="meta")
        module.weight = nn.Parameter(weight.contiguous())
        if self.bias_value is not None:
            bias = constant(self.bias_value).reshape(-1) * np.float32(self.beta)
            module.bias = nn.Parameter(torch.from_numpy(np.ascontiguousarray(bias)))
        return module


class OnnxTorchModule(nn.Module):
    """An ONNX model's main graph as a trainable torch module (see the module docstring).

    ``forward(**inputs)`` takes the graph inputs by name and returns the graph outputs as a
    tuple. ``records`` are the placement records of the static layers (by record name).
    """

    def __init__(self, model: ir.Model, config: AfmcConfig) -> None:
        super().__init__()
        PlaceOnnxLayers(config)(model)
        self.model = model
        graph = model.graph
        self.input_names = [value.name for value in graph.inputs]
        self.output_names = [value.name for value in graph.outputs]
        for index, node in enumerate(graph):
            node.meta[_INDEX] = index
        self.static: dict[int, _Layer] = {}  # node index -> its layer
        self.layers = nn.ModuleDict()
        self.records: dict[str, LayerRecord] = {}
        taken: set[int] = set()
        for layer in find_static_layers(graph):
            record = layer.node.meta.get(META_KEY)
            if record is None or layer.unsupported:
                continue
            if layer.groups != 1 and record.placement == "analog":
                raise ConfigError(f"layer {record.name}: afmc train keeps grouped convolutions "
                                  "digital (set placement.grouped_convs=digital)")
            mapped = _Layer(layer, record)
            self.static[_node_key(layer.node)] = mapped
            self.layers[module_key(record.name)] = mapped.linear()
            self.records[record.name] = record
            taken.add(id(layer.weight))
            if mapped.bias_value is not None:
                taken.add(id(mapped.bias_value))
        self.tensors = nn.ParameterDict()
        self.constants: dict[str, torch.Tensor] = {}
        self._keys: dict[str, str] = {}
        for name, value in graph.initializers.items():
            if id(value) in taken and all(_node_key(use.node) in self.static
                                          and use.idx in (1, 2) for use in value.uses()):
                continue  # read by its layers only: held by their Linear
            array = torch.from_numpy(np.array(value.const_value.numpy()))
            if array.is_floating_point() and array.numel() > 1:
                key = f"t{len(self._keys)}"
                self._keys[name] = key
                self.tensors[key] = nn.Parameter(array)
            else:
                self.constants[name] = array

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxTorchModule:
        """A copy with its own tensors that shares the ONNX model and the layer mapping
        (read only in forward; write_back writes into the shared model)."""
        for shared in (self.model, self.static, self.records):
            memo[id(shared)] = shared
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone

    def forward(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, torch.Tensor | None] = {"": None}
        values.update(self.constants)
        for name, key in self._keys.items():
            values[name] = self.tensors[key]
        for name in self.input_names:
            if name not in inputs:
                raise ValueError(f"missing model input {name!r} (the model takes "
                                 f"{', '.join(self.input_names)})")
            values[name] = inputs[name]
        for node in self.model.graph:
            arguments = [values.get(v.name) if v is not None else None for v in node.inputs]
            mapped = self.static.get(_node_key(node))
            if mapped is not None:
                outputs = [self._layer(mapped, arguments)]
            else:
                if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
                    raise ValueError(f"node {node.name or node.op_type}: op "
                                     f"{node.domain or 'ai.onnx'}.{node.op_type} is not computed "
                                     "by afmc's torch form of ONNX graphs")
                attributes = {key: attribute.value for key, attribute in node.attributes.items()}
                outputs = OPS[node.op_type](arguments, attributes)
            for value, output in zip(node.outputs, outputs, strict=False):
                values[value.name] = output
        return tuple(values[name] for name in self.output_names)

    def _layer(self, mapped: _Layer, arguments: list[Any]) -> torch.Tensor:
        linear = self.layers[module_key(mapped.record.name)]
        x = arguments[0]
        if mapped.grouped:
            return conv(x, linear.weight, linear.bias, mapped.attributes)
        if mapped.kind == "Conv":
            y = _conv_as_linear(x, linear, mapped)
        else:
            y = linear(x.T if mapped.trans_a else x)
        if mapped.extra_bias is not None:
            y = y + mapped.beta * arguments[2]
        return y

    @torch.no_grad()
    def write_back(self) -> ir.Model:
        """The ONNX model with this module's values in its initializers (rule above)."""
        graph = self.model.graph
        names = Names(graph)
        for name, key in self._keys.items():
            _set(graph.initializers[name], self.tensors[key])
        for mapped in self.static.values():
            linear = self.layers[module_key(mapped.record.name)]
            weight = linear.weight.detach().float()
            layer = mapped.layer
            stored = constant(layer.weight)
            if mapped.grouped:
                value = weight
            elif layer.layout == "kn":
                value = (weight / mapped.alpha).T
            else:
                value = (weight / mapped.alpha).reshape(stored.shape)
            if layer.weight.is_initializer() and len(layer.weight.uses()) == 1:
                _set(layer.weight, value)
            else:  # shared with another node, or a Constant node's: its own initializer
                direct = layer.weight_input is layer.weight
                array = (value if direct else value.reshape(stored.shape).T).numpy()
                own = add_initializer(graph, names, f"{mapped.record.name}.trained_weight",
                                      np.ascontiguousarray(array.astype(stored.dtype)))
                mapped.node.replace_input_with(1, own)
            if mapped.bias_value is not None:
                bias = linear.bias.detach().float() / mapped.beta
                _set(mapped.bias_value, bias.reshape(constant(mapped.bias_value).shape))
        return self.model


def _set(initializer: ir.Value, value: torch.Tensor) -> None:
    dtype = constant(initializer).dtype
    array = np.ascontiguousarray(value.detach().cpu().numpy().astype(dtype))
    initializer.const_value = ir.tensor(array, name=initializer.name)


_INDEX = "afmc.torch_form_index"


def _node_key(node: ir.Node) -> int:
    """The node's position in the graph when the torch form was built (survives a deepcopy)."""
    return node.meta[_INDEX]


def _conv_as_linear(x: torch.Tensor, linear: nn.Module, mapped: _Layer) -> torch.Tensor:
    """A Conv of group 1 as im2col + the Linear: [batch, N, spatial...]."""
    attributes = mapped.attributes
    kernel = list(attributes.get("kernel_shape") or constant(mapped.layer.weight).shape[2:])
    spatial = len(kernel)
    if spatial != 2 and spatial != 1:
        return conv(x, linear.weight.reshape(-1, x.shape[1], *kernel), linear.bias, attributes)
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ValueError(f"{mapped.record.name}: Conv auto_pad={attributes['auto_pad']} is not "
                         "computed by afmc's torch form of ONNX graphs")
    strides = list(attributes.get("strides") or [1] * spatial)
    dilations = list(attributes.get("dilations") or [1] * spatial)
    x = pad_spatial(x, list(attributes.get("pads") or [0] * (2 * spatial)))
    if spatial == 1:
        x, kernel, strides, dilations = x.unsqueeze(-2), [1, *kernel], [1, *strides], \
            [1, *dilations]
    batch = x.shape[0]
    if math.prod(kernel) == 1 and strides == [1, 1]:
        out_size = list(x.shape[2:])
        patches = x.flatten(2).transpose(1, 2)
    else:
        out_size = [(x.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                    for i in range(2)]
        patches = torch.nn.functional.unfold(x, kernel, dilations, 0, strides).transpose(1, 2)
    y = linear(patches).transpose(1, 2).reshape(batch, -1, *out_size)
    return y.squeeze(-2) if spatial == 1 else y
