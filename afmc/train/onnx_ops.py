"""The ONNX operators of afmc's torch form of an ONNX graph, each as torch functions.

One function per op type: (inputs, attributes) -> outputs, with inputs as torch tensors
(None for an omitted optional input) and attributes as onnx_ir gives them. Each follows
the ONNX operator specification (default domain, opset >= 13 forms) for the cases the
torch exporter and common converters write; a case outside that (an attribute value
afmc does not compute) is a ValueError naming the op and the attribute. Static layers
(MatMul / Gemm / Conv with a constant weight) are not computed here: the torch form
runs them as nn.Linear modules (afmc.train.onnx_torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Attributes = dict[str, Any]
OpFunction = Callable[[list[Tensor | None], Attributes], list[Tensor]]

# ONNX TensorProto.DataType -> torch dtype
DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
          7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
          16: torch.bfloat16}


def _unsupported(op: str, detail: str) -> ValueError:
    return ValueError(f"{op}: {detail} is not computed by afmc's torch form of ONNX graphs")


def _ints(tensor: Tensor | None) -> list[int]:
    return [] if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]


def _axes(inputs: list[Tensor | None], attributes: Attributes, index: int) -> list[int] | None:
    """Axes given as the input at `index` (opset >= 13/18) or as the axes attribute."""
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    axes = attributes.get("axes")
    return None if axes is None else list(axes)


def _elementwise(function: Callable[..., Tensor]) -> OpFunction:
    return lambda inputs, _attributes: [function(*inputs)]


def _reshape(inputs, attributes):
    data, shape = inputs[0], _ints(inputs[1])
    if not attributes.get("allowzero", 0):
        shape = [data.shape[i] if value == 0 else value for i, value in enumerate(shape)]
    return [data.reshape(shape)]


def _transpose(inputs, attributes):
    data = inputs[0]
    perm = attributes.get("perm") or list(reversed(range(data.dim())))
    return [data.permute(*perm)]


def _unsqueeze(inputs, attributes):
    data = inputs[0]
    axes = sorted(a % (data.dim() + len(_axes(inputs, attributes, 1)))
                  for a in _axes(inputs, attributes, 1))
    for axis in axes:
        data = data.unsqueeze(axis)
    return [data]


def _squeeze(inputs, attributes):
    data, axes = inputs[0], _axes(inputs, attributes, 1)
    if axes is None:
        return [data.squeeze()]
    for axis in sorted((a % data.dim() for a in axes), reverse=True):
        data = data.squeeze(axis)
    return [data]


def _concat(inputs, attributes):
    return [torch.cat([x for x in inputs if x is not None], dim=attributes["axis"])]


def _slice(inputs, _attributes):
    data = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else \
        list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * data.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= data.dim()
        size = data.shape[axis]
        if step > 0:
            index[axis] = slice(max(0, min(size, start + size if start < 0 else start)),
                                max(0, min(size, end + size if end < 0 else end)), step)
        else:  # negative steps: take the reversed range, then flip
            first = max(-1, min(size - 1, start + size if start < 0 else start))
            last = max(-1, min(size - 1, end + size if end < 0 else end))
            positions = torch.arange(first, last, step, device=data.device)
            index[axis] = positions
            flips.append(axis)
    if flips:
        result = data
        for axis, item in enumerate(index):
            if isinstance(item, Tensor):
                result = result.index_select(axis, item)
            elif item != slice(None):
                result = result[(slice(None),) * axis + (item,)]
        return [result]
    return [data[tuple(index)]]


def _gather(inputs, attributes):
    data, indices = inputs[0], inputs[1].long()
    axis = attributes.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    taken = data.index_select(axis, indices.reshape(-1))
    shape = [*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]]
    return [taken.reshape(shape)]


def _is_inf(inputs, attributes):
    data = inputs[0]
    found = torch.isinf(data)
    if not attributes.get("detect_negative", 1):
        found &= data > 0
    if not attributes.get("detect_positive", 1):
        found &= data < 0
    return [found]


def _cumsum(data: Tensor, axis: int, attributes: Attributes) -> Tensor:
    if attributes.get("reverse", 0):
        return data.flip(axis).cumsum(axis).flip(axis) - (data if attributes.get(
            "exclusive", 0) else 0)
    summed = data.cumsum(axis)
    return summed - data if attributes.get("exclusive", 0) else summed


def _gather_nd(inputs, attributes):
    data, indices = inputs[0], inputs[1].long()
    batch = attributes.get("batch_dims", 0)
    depth = indices.shape[-1]
    count = math.prod(data.shape[:batch])
    flat = data.reshape(count, *data.shape[batch:])
    positions = indices.reshape(count, -1, depth)
    sizes = torch.tensor(flat.shape[1:1 + depth], device=positions.device)
    positions = torch.where(positions < 0, positions + sizes, positions)
    rows = torch.arange(count, device=positions.device)[:, None].expand(-1, positions.shape[1])
    taken = flat[(rows, *positions.unbind(-1))]
    return [taken.reshape(*indices.shape[:-1], *data.shape[batch + depth:])]


def _reduce(function: Callable[..., Tensor]) -> OpFunction:
    def reduce(inputs, attributes):
        data = inputs[0]
        axes = _axes(inputs, attributes, 1)
        keep = bool(attributes.get("keepdims", 1))
        if not axes:
            if attributes.get("noop_with_empty_axes", 0):
                return [data]
            axes = list(range(data.dim()))
        return [function(data, dim=[a % data.dim() for a in axes], keepdim=keep)]
    return reduce


def _softmax(function: Callable[..., Tensor]) -> OpFunction:
    return lambda inputs, attributes: [function(inputs[0], dim=attributes.get("axis", -1))]


def _clip(inputs, _attributes):
    data = inputs[0]
    low = inputs[1] if len(inputs) > 1 else None
    high = inputs[2] if len(inputs) > 2 else None
    if low is not None and high is not None and data.is_floating_point() \
            and not (low.requires_grad or high.requires_grad):
        # constant bounds: hardtanh (ReLU6 at [0, 6]), whose backward is one pass
        return [F.hardtanh(data, float(low), float(high))]
    return [torch.clamp(data, min=low, max=high)]


def _cast(inputs, attributes):
    to = attributes["to"]
    if to not in DTYPES:
        raise _unsupported("Cast", f"to={to}")
    return [inputs[0].to(DTYPES[to])]


def _shape(inputs, attributes):
    shape = list(inputs[0].shape)
    start, end = attributes.get("start", 0), attributes.get("end", len(shape))
    return [torch.tensor(shape[start:end], dtype=torch.int64)]


def _expand(inputs, _attributes):
    data, shape = inputs[0], _ints(inputs[1])
    rank = max(data.dim(), len(shape))
    own = [1] * (rank - data.dim()) + list(data.shape)
    wanted = [1] * (rank - len(shape)) + shape
    target = [max(a, b) if b != 1 else a for a, b in zip(own, wanted, strict=True)]
    return [data.reshape(own).expand(target)]


def _constant_of_shape(inputs, attributes):
    value = attributes.get("value")
    fill = value.numpy().reshape(-1)[0].item() if value is not None else 0.0
    dtype = DTYPES.get(int(value.dtype), torch.float32) if value is not None else torch.float32
    return [torch.full(_ints(inputs[0]), fill, dtype=dtype)]


def _constant(_inputs, attributes):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in attributes:
            value = attributes[key]
            array = value.numpy() if hasattr(value, "numpy") else value
            return [torch.as_tensor(array)]
    raise _unsupported("Constant", "a value other than value/value_float(s)/value_int(s)")


def _layer_normalization(inputs, attributes):
    data, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attributes.get("axis", -1) % data.dim()
    shape = data.shape[axis:]
    return [F.layer_norm(data, shape, scale.expand(shape),
                         None if bias is None else bias.expand(shape),
                         attributes.get("epsilon", 1e-5))]


def _batch_normalization(inputs, attributes):
    data, scale, bias, mean, var = inputs[:5]
    return [F.batch_norm(data, mean, var, scale, bias, False, 0.0,
                         attributes.get("epsilon", 1e-5))]


def _flatten(inputs, attributes):
    data = inputs[0]
    axis = attributes.get("axis", 1) % max(1, data.dim()) if data.dim() else 0
    return [data.reshape(math.prod(data.shape[:axis]), -1)]


def _pool_geometry(attributes: Attributes, spatial: int, op: str) -> tuple[list[int], list[int],
                                                                          list[int], list[int]]:
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise _unsupported(op, f"auto_pad={attributes['auto_pad']}")
    kernel = list(attributes["kernel_shape"])
    strides = list(attributes.get("strides") or [1] * spatial)
    dilations = list(attributes.get("dilations") or [1] * spatial)
    pads = list(attributes.get("pads") or [0] * (2 * spatial))
    return kernel, strides, dilations, pads


def pad_spatial(data: Tensor, pads: Sequence[int], value: float = 0.0) -> Tensor:
    """ONNX pads [begin_1, ..., begin_n, end_1, ..., end_n] on the last n axes."""
    count = len(pads) // 2
    if not any(pads):
        return data
    order: list[int] = []
    for axis in reversed(range(count)):
        order += [pads[axis], pads[axis + count]]
    return F.pad(data, order, value=value)


def _max_pool(inputs, attributes):
    data = inputs[0]
    kernel, strides, dilations, pads = _pool_geometry(attributes, data.dim() - 2, "MaxPool")
    padded = pad_spatial(data, pads, -math.inf)
    pool = F.max_pool1d if data.dim() == 3 else F.max_pool2d
    return [pool(padded, kernel, strides, 0, dilations, ceil_mode=bool(
        attributes.get("ceil_mode", 0)))]


def _average_pool(inputs, attributes):
    data = inputs[0]
    kernel, strides, _, pads = _pool_geometry(attributes, data.dim() - 2, "AveragePool")
    include = bool(attributes.get("count_include_pad", 0))
    if any(pads) and not include:
        if pads[:len(pads) // 2] != pads[len(pads) // 2:]:
            raise _unsupported("AveragePool", "asymmetric pads without count_include_pad")
        padding, padded = pads[:len(pads) // 2], data
    else:
        padding, padded = [0] * (data.dim() - 2), pad_spatial(data, pads)
    pool = F.avg_pool1d if data.dim() == 3 else F.avg_pool2d
    return [pool(padded, kernel, strides, padding, bool(attributes.get("ceil_mode", 0)),
                 count_include_pad=include)]


def _global_average_pool(inputs, _attributes):
    data = inputs[0]
    return [data.mean(dim=list(range(2, data.dim())), keepdim=True)]


def _where(inputs, _attributes):
    return [torch.where(inputs[0].bool(), inputs[1], inputs[2])]


def _range(inputs, _attributes):
    start, limit, delta = (x.item() for x in inputs)
    return [torch.arange(start, limit, delta, dtype=inputs[0].dtype)]


def _split(inputs, attributes):
    data = inputs[0]
    axis = attributes.get("axis", 0)
    sizes = _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else \
        attributes.get("split")
    if sizes is None:
        count = attributes["num_outputs"]
        size = -(-data.shape[axis] // count)
        sizes = [min(size, data.shape[axis] - size * i) for i in range(count)]
    return list(torch.split(data, list(sizes), dim=axis))


def _gelu(inputs, attributes):
    approximate = attributes.get("approximate", "none")
    return [F.gelu(inputs[0], approximate=approximate)]


def _hard_sigmoid(inputs, attributes):
    alpha, beta = attributes.get("alpha", 0.2), attributes.get("beta", 0.5)
    return [torch.clamp(alpha * inputs[0] + beta, 0, 1)]


def _trilu(inputs, attributes):
    k = int(inputs[1].item()) if len(inputs) > 1 and inputs[1] is not None else 0
    return [torch.triu(inputs[0], k) if attributes.get("upper", 1) else torch.tril(inputs[0], k)]


def _matmul(inputs, _attributes):
    return [torch.matmul(inputs[0], inputs[1])]


def _gemm(inputs, attributes):
    a, b = inputs[0], inputs[1]
    a = a.T if attributes.get("transA", 0) else a
    b = b.T if attributes.get("transB", 0) else b
    y = attributes.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + attributes.get("beta", 1.0) * inputs[2]
    return [y]


def conv(data: Tensor, weight: Tensor, bias: Tensor | None, attributes: Attributes) -> Tensor:
    """ONNX Conv (1-D to 3-D) through torch's convolution, its pads applied first."""
    spatial = data.dim() - 2
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise _unsupported("Conv", f"auto_pad={attributes['auto_pad']}")
    strides = list(attributes.get("strides") or [1] * spatial)
    dilations = list(attributes.get("dilations") or [1] * spatial)
    padded = pad_spatial(data, list(attributes.get("pads") or [0] * (2 * spatial)))
    function = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return function(padded, weight, bias, strides, 0, dilations, attributes.get("group", 1))


def _conv(inputs, attributes):
    return [conv(inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None, attributes)]


OPS: dict[str, OpFunction] = {
    "Add": _elementwise(torch.add), "Sub": _elementwise(torch.sub),
    "Mul": _elementwise(torch.mul),
    "Div": lambda i, _a: [torch.div(i[0], i[1], rounding_mode="trunc")
                          if not i[0].is_floating_point() else torch.div(i[0], i[1])],
    "Pow": _elementwise(torch.pow), "Sqrt": _elementwise(torch.sqrt),
    "Reciprocal": _elementwise(torch.reciprocal), "Exp": _elementwise(torch.exp),
    "Log": _elementwise(torch.log), "Neg": _elementwise(torch.neg), "Abs": _elementwise(torch.abs),
    "Erf": _elementwise(torch.erf), "Tanh": _elementwise(torch.tanh),
    "Sigmoid": _elementwise(torch.sigmoid), "Relu": _elementwise(F.relu),
    "Sin": _elementwise(torch.sin), "Cos": _elementwise(torch.cos),
    "Max": lambda i, _a: [torch.stack(torch.broadcast_tensors(*i)).amax(0)],
    "Min": lambda i, _a: [torch.stack(torch.broadcast_tensors(*i)).amin(0)],
    "LeakyRelu": lambda i, a: [F.leaky_relu(i[0], a.get("alpha", 0.01))],
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda i, _a: [F.hardswish(i[0])],
    "Softplus": lambda i, _a: [F.softplus(i[0])],
    "Gelu": _gelu, "Clip": _clip,
    "Equal": _elementwise(torch.eq), "Less": _elementwise(torch.lt),
    "Greater": _elementwise(torch.gt), "LessOrEqual": _elementwise(torch.le),
    "GreaterOrEqual": _elementwise(torch.ge), "Not": _elementwise(torch.logical_not),
    "And": _elementwise(torch.logical_and), "Or": _elementwise(torch.logical_or),
    "IsNaN": _elementwise(torch.isnan), "IsInf": _is_inf,
    "Xor": _elementwise(torch.logical_xor), "Sign": _elementwise(torch.sign),
    "Floor": _elementwise(torch.floor), "Ceil": _elementwise(torch.ceil),
    "Round": _elementwise(torch.round), "Mod": lambda i, a: [
        torch.fmod(i[0], i[1]) if a.get("fmod", 0) else torch.remainder(i[0], i[1])],
    "CumSum": lambda i, a: [_cumsum(i[0], int(i[1]), a)],
    "Where": _where, "Cast": _cast, "Identity": lambda i, _a: [i[0]],
    "Dropout": lambda i, _a: [i[0]],
    "Reshape": _reshape, "Transpose": _transpose, "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze, "Concat": _concat, "Slice": _slice, "Gather": _gather,
    "GatherND": _gather_nd,
    "Flatten": _flatten, "Expand": _expand, "Shape": _shape, "Split": _split,
    "Size": lambda i, _a: [torch.tensor(i[0].numel(), dtype=torch.int64)],
    "ConstantOfShape": _constant_of_shape, "Constant": _constant, "Range": _range,
    "Trilu": _trilu,
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax), "ReduceMin": _reduce(torch.amin),
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "LayerNormalization": _layer_normalization,
    "BatchNormalization": _batch_normalization,
    "GlobalAveragePool": _global_average_pool, "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv,
}
