"""The aimc target's runtime: chip instances of an analog model, programmed in memory.

Rule: the graph of OUT/model.onnx is read once (weights left where they are: inline
in the proto, or in OUT/model.onnx.data). A chip is one session whose analog
weights are the programmed ones of its seed, sampled layer by layer from the
stored weights (runtime.noise), and the file is never rewritten:

- Each analog node of the chip's graph becomes its prepared form
  (ops.analog_linear_onnx.prepared_function): the weight-only part of its body (per
  slice W_s^T / w_max * scale and w_max) is computed from the programmed weights,
  layer by layer, on afmc's programming kernel (runtime.fused.programming, straight
  from the noise draws for pcm) or else in numpy (prepare_weights), with the same
  numbers, so onnxruntime has nothing weight-sized
  to constant-fold when the session starts. Folding it there holds several copies
  of every weight at once (a 1.1B model went past 24 GB).
- The prepared values, and the programmed weights of an analog node that keeps its
  full body (unequal slices: W comes through SliceInput), are handed to onnxruntime
  from memory; the session is built from the graph bytes, and the file's other
  external initializers are read by onnxruntime itself from OUT. So no model is
  serialised with its weights through protobuf (which cannot hold 2 GiB).
- Above PREPACK_LIMIT of analog weights, sessions do not prepack MatMul weights, and
  the values go in as shared initializers (SessionOptions.add_initializer): the
  session computes on afmc's arrays in place, which the Chip keeps alive, so a chip
  holds one copy of its weights and its start copies none (1.1B model: the copy was
  4.1 GB of fresh memory, most of the session's start). Without prepacking a MatMul
  costs about 5% more per inference (afmc-tiny, 128 tokens, aimc and FP alike;
  docs/scaling.md), and prepacking a shared initializer would be a second copy.
  Below the limit the values are external initializers
  (SessionOptions.add_external_initializers): onnxruntime copies and prepacks them,
  afmc drops its arrays once the session exists and gives the freed heap back to
  the system (sessions.release_free_memory).
- Layers are programmed on all cores, each from its own random stream.
- Where afmc's fused kernels are available (runtime.fused; AFMC_KERNELS=0 turns them
  off), a chip's analog nodes take the fused form of their prepared body
  (ops.analog_linear_onnx.fused_function: one AnalogDAC and one AnalogADC around the
  MatMuls, the same numbers) and its session registers the kernel library; without
  them the prepared body of standard ops runs. A graph onnxruntime refuses in fused
  form runs the stock bodies, with one KernelWarning naming the cause.

With ``hardware.weight_slices`` n > 1 (runtime.bit_slicing), a chip's analog nodes read
their bit-sliced weights: each layer's weights are quantized, split into n digit
matrices, each programmed as a layer of its own (its own stream, range and ADC) and laid
side by side with X gathered to match; the prepared and fused forms then apply as to any
node of n S equal slices. The FP view never is sliced.

The FP view is the same graph with every analog node computed in floating point
(views.fp_reference) on the stored weights; read noise is views.with_read_noise.
A chip of some analog layers only (`analog_layers`, by layer name; per-layer
sensitivity, eval.sensitivity) is the FP view but for those layers: only they are
programmed, each from the stream it has in the full chip (its index among all
analog layers), so a layer's programmed weights do not depend on the subset, and
read noise applies to them alone.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from afmc import ops
from afmc.io.layout import MODEL_FILE
from afmc.io.user_errors import KernelWarning, first_line
from afmc.ops.analog_linear_onnx import (
    ANALOG_OP_TYPES,
    ATTRIBUTE_DEFAULTS,
    FUSED_PREFIX,
    KERNEL_DOMAIN,
    PRE_SCALED,
    PREPARED_PREFIX,
    fused_function,
    overload_slices,
    prepare_weights,
    prepared_function,
)
from afmc.ops.sparse_outliers_onnx import OP_TYPE as SPARSE_OUTLIERS
from afmc.runtime import fused as fused_kernels
from afmc.runtime.bit_slicing import program_sliced, recombined, sliced_graph
from afmc.runtime.chip import Chip, chip_from_session
from afmc.runtime.fused import programming
from afmc.runtime.fused.programming import Prepared
from afmc.runtime.noise import NoiseConfig, layer_rng, program_prepared, program_weights
from afmc.runtime.sessions import open_session, release_free_memory, session_options
from afmc.runtime.threads import in_order_on_threads
from afmc.runtime.views import fp_reference, with_read_noise

EFFECTIVE = "::w_eff_"  # prepared_graph's names of the prepared weights: WEIGHT::w_eff_I
PREPACK_LIMIT = 1 << 30  # analog weights (bytes) above which sessions do not prepack


class AnalogRuntime:
    """Chips of an aimc output: one programming-noise draw per seed (same seed, same chip)."""

    varies_by_seed = True

    def __init__(self, out_dir: Path, record: dict[str, Any], graph: onnx.ModelProto) -> None:
        self.out_dir, self.record, self.graph = out_dir, record, graph
        self.path = out_dir / MODEL_FILE
        self.analog = [layer for layer in record["layers"] if layer.get("onnx_weight")]
        self.slice_sizes = {layer["onnx_weight"]: layer["slice_sizes"] for layer in self.analog}
        self.noise = NoiseConfig.model_validate(record["config"]["noise"])
        # device pairs per weight, averaged (runtime.noise); hardware, kept under any noise=
        hardware = record["config"]["hardware"]
        self.devices = int(hardware.get("devices_per_weight", 1))
        # bit slices per weight and the bits they hold (runtime.bit_slicing; 1: unsliced)
        self.slices = int(hardware.get("weight_slices", 1))
        self.weight_bits = int(hardware.get("weight_bits", 8))
        self.initializers = {init.name: init for init in graph.graph.initializer}
        self.plan = preparation(graph)
        self.kernels = True  # chips use afmc.kernels where they are built (runtime.fused)

    def chip(self, seed: int | None, *, read_noise: float = 0.0,
             noise: NoiseConfig | None = None, threads: int | None = None,
             analog_layers: Collection[str] | None = None) -> Chip:
        """Chip `seed` (None: the stored weights, no programming noise), with `noise`
        replacing the record's programming-noise model and `read_noise` drawn fresh on
        every inference; with `analog_layers` (layer names), only those layers are
        analog and the others computed in floating point (module docstring)."""
        noise = noise or self.noise
        graph = self.graph
        kept = None if analog_layers is None else self.analog_weights(analog_layers)
        if kept is not None:
            graph = fp_reference(graph, kept, whole_weights=True)
        graph = with_read_noise(graph, read_noise) if read_noise > 0 else graph
        plan = self.plan
        if self.slices > 1:
            graph = self.sliced(graph, kept)
            plan = preparation(graph)
        seed = None if noise.model == "none" else seed
        kernels = self.kernels and fused_kernels.enabled()
        fused, values = prepared_graph(graph, self._layers(seed, noise, plan=plan, analog=kept),
                                       fused=kernels)
        try:
            return self._session(fused, values, threads, seed, kernels=kernels)
        except ValueError as error:
            if not kernels:
                raise
            # onnxruntime refused the fused bodies (seen when an analog node's output had
            # no type: it cannot infer one through afmc.kernels ops; insert-analog-linear
            # now types it): this output's chips run the stock bodies, the same numbers.
            self.kernels = False
            warnings.warn(f"{self.path}: chips run the stock ONNX bodies, not afmc's fused "
                          f"kernels (the same numbers, slower): {first_line(error)}",
                          KernelWarning, stacklevel=2)
        graph, values = prepared_graph(graph, self._layers(seed, noise, plan=plan, analog=kept))
        return self._session(graph, values, threads, seed)

    def sliced(self, graph: onnx.ModelProto, kept: set[str] | None) -> onnx.ModelProto:
        """`graph` with the analog layers `kept` (initializer names; None: all) computing
        their bit-sliced weights (runtime.bit_slicing.sliced_graph)."""
        sizes = self.slice_sizes
        return sliced_graph(graph, sizes if kept is None else kept, sizes, self.slices)

    def analog_weights(self, names: Collection[str]) -> set[str]:
        """The weight initializers of the analog layers `names`; a ValueError naming the
        first name that is not an analog layer of this output."""
        weights = {layer["name"]: layer["onnx_weight"] for layer in self.analog}
        for name in names:
            if name not in weights:
                raise ValueError(f"{name!r} is not an analog layer of {self.out_dir} "
                                 f"({len(weights)} analog layers, e.g. "
                                 f"{next(iter(weights), 'none')!r})")
        return {weights[name] for name in names}

    def fp_view(self, threads: int | None = None) -> Chip:
        """The floating-point model the analog one was compiled from, on the stored weights
        (each transposed in numpy, so onnxruntime has no weight to fold; a split layer's
        outliers put back into its weights, so the view is bit for bit the unsplit one)."""
        graph, values = prepared_graph(fp_reference(self.graph, whole_weights=True),
                                       self._layers(None, self.noise, plan={},
                                                    analog=set()))
        return self._session(graph, values, threads, None)

    def programmed(self, seed: int, noise: NoiseConfig) -> Iterator[tuple[str, np.ndarray]]:
        """(initializer name, programmed weights [N, K]) of every analog layer of chip
        `seed` (bit-sliced weights recombined: the weights the chip computes with)."""
        for name, weight in self._layers(seed, noise, plan={}):
            yield name, (recombined(weight, self.slice_sizes[name], self.slices)
                         if self.slices > 1 else weight)

    def _layers(self, seed: int | None, noise: NoiseConfig, *,
                plan: dict[str, tuple[int, dict[str, float]]],
                analog: set[str] | None = None) -> Iterator[tuple[str, np.ndarray | Prepared]]:
        """(initializer name, weights) of every analog layer in layer order: programmed
        for chip `seed` (None: as stored; bit-sliced with weight_slices > 1) and already
        in their prepared form where `plan` (preparation of the chip's graph) takes them;
        with `analog` (initializer names),
        the layers not in it are given as stored, with their outliers (split-outliers)
        put back (the FP view computes them on the whole weights). Layers run on all cores (numpy
        releases the GIL), a few ahead of the consumer; each draws from its own stream,
        so the result does not depend on the order the threads run in."""

        def program(index: int) -> tuple[str, np.ndarray | Prepared]:
            layer = self.analog[index]
            name, weight = self._stored(layer)
            if analog is not None and name not in analog:
                return name, self._whole(layer, weight)
            prepared = plan.get(name)  # (slices, attributes)
            sizes = layer["slice_sizes"]
            if self.slices > 1:
                weight = program_sliced(
                    weight, sizes, self.slices, self.weight_bits,
                    None if seed is None else layer_rng(seed, index),
                    lambda digits, rng: program_weights(digits, sizes, noise, rng,
                                                        self.devices))
            elif seed is not None:
                fast = None if prepared is None else program_prepared(
                    weight, sizes, noise, layer_rng(seed, index), *prepared, self.devices)
                if fast is not None:
                    return name, fast
                weight = program_weights(weight, sizes, noise, layer_rng(seed, index),
                                         self.devices)
            return name, weight if prepared is None else prepared_values(weight, *prepared)

        yield from in_order_on_threads(program, range(len(self.analog)),
                                       ahead=2 * (os.cpu_count() or 1))

    def stored(self, *, whole: bool = False) -> Iterator[tuple[str, np.ndarray]]:
        """(initializer name, stored weights as float32) of every analog layer, one by one;
        with `whole`, a split layer's outliers put back (the weights its FP view uses)."""
        for layer in self.analog:
            name, weight = self._stored(layer)
            yield name, self._whole(layer, weight) if whole else weight

    def _stored(self, layer: dict[str, Any]) -> tuple[str, np.ndarray]:
        """(name, the layer's stored weights as float32): float32 external data is mapped
        from the file (read-only pages of the page cache, no copy)."""
        name = layer["onnx_weight"]
        initializer = self.initializers[name]
        if initializer.data_type == TensorProto.FLOAT and uses_external_data(initializer):
            info = ExternalDataInfo(initializer)
            return name, np.memmap(self.out_dir / info.location, dtype=np.float32, mode="r",
                                   offset=info.offset or 0, shape=tuple(initializer.dims))
        stored = numpy_helper.to_array(initializer, str(self.out_dir))
        return name, stored.astype(np.float32, copy=False)

    def _whole(self, layer: dict[str, Any], weight: np.ndarray) -> np.ndarray:
        """A layer's stored (dense) weights with its outliers back in place: W itself,
        bit for bit, for a layer split by split-outliers; else `weight` unchanged."""
        if not layer.get("outlier_values"):
            return weight
        indices, values = (numpy_helper.to_array(self.initializers[layer[key]],
                                                 str(self.out_dir))
                           for key in ("outlier_indices", "outlier_values"))
        whole = np.array(weight, dtype=np.float32)
        np.put_along_axis(whole, indices, values.astype(np.float32), axis=1)
        return whole

    def _session(self, graph: onnx.ModelProto, weights: dict[str, np.ndarray],
                 threads: int | None, seed: int | None, *, kernels: bool = False) -> Chip:
        options = session_options(threads)
        if kernels:
            fused_kernels.register(options)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(self.out_dir))
        shared = self.record.get("summary", {}).get("analog_weights", 0) * 4 > PREPACK_LIMIT
        if shared:
            options.add_session_config_entry("session.disable_prepacking", "1")
        readers = _readers(graph.graph)
        in_place = [name for name in weights
                    if shared and all(_multiplies(node, name) for node in readers[name])]
        # The OrtValues borrow the arrays' memory and options keeps bare pointers to the
        # shared ones: all stay referenced until the session exists.
        borrowed = [weights.pop(name) for name in in_place]
        shared_values = [ort.OrtValue.ortvalue_from_numpy(array) for array in borrowed]
        for name, value in zip(in_place, shared_values, strict=True):
            options.add_initializer(name, value)
        names = list(weights)
        values = [ort.OrtValue.ortvalue_from_numpy(weights.pop(name)) for name in names]
        if values:
            options.add_external_initializers(names, values)
        session = open_session(graph.SerializeToString(), options, self.path)
        del options, values, shared_values
        release_free_memory()  # onnxruntime copied the external initializers
        return chip_from_session(session, seed, self.record, self.path, borrowed=borrowed)


def _multiplies(node: onnx.NodeProto, name: str) -> bool:
    """Whether `node` only multiplies `name` as a matrix with a computed operand, so
    onnxruntime never folds it and a session can read it in place: a MatMul's second
    input (the FP view's weights) or a w_eff input of a prepared or fused analog node
    (its body's MatMul)."""
    if node.op_type == "MatMul" and node.domain == "":
        return list(node.input).index(name) == 1 and node.input[0] != name
    return (node.op_type.startswith((PREPARED_PREFIX, FUSED_PREFIX))
            and node.domain == ops.DOMAIN and EFFECTIVE in name)


def preparation(model: onnx.ModelProto) -> dict[str, tuple[int, dict[str, float]]]:
    """The weights that prepared_graph replaces by their prepared values (every reader a
    node with equal slices): weight name -> (slices, prepare_weights' attributes)."""
    return {name: _preparation_of(users[0])
            for name, users in _readers(model.graph).items()
            if len(users) == 1 and _preparable(users[0], name)}


def prepared_graph(model: onnx.ModelProto,
                   weights: Iterable[tuple[str, np.ndarray | Prepared]], *,
                   fused: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of `model` whose analog nodes take their prepared weights, and the values of
    the initializers it adds (named WEIGHT::w_eff_I, WEIGHT::w_max_I) or replaces.

    `weights` gives the (programmed or stored) weights by initializer name, consumed one
    at a time, or their prepared values already (for a weight in `preparation`): a
    node with an overload (equal slices) reading one of them directly gets its
    prepared form; a 2-D Transpose that alone reads one (the FP view's) becomes the
    transposed weights; any other consumer keeps the weights themselves. With `fused`,
    prepared nodes take the fused body (fused_function), whose session must register
    afmc's kernel library (runtime.fused).
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    readers = _readers(graph)
    opset = next(o.version for o in copy.opset_import if o.domain in ("", "ai.onnx"))
    values: dict[str, np.ndarray] = {}
    functions: set[tuple[str, str]] = set()
    body, prefix = (fused_function, FUSED_PREFIX) if fused else (prepared_function,
                                                                 PREPARED_PREFIX)
    if fused:
        copy.opset_import.append(helper.make_opsetid(KERNEL_DOMAIN, 1))
    for name, weight in weights:
        users = readers.get(name, [])
        preparable = [node for node in users if _preparable(node, name)]
        if len(preparable) < len(users):
            values[name] = weight
        for node in preparable:
            slices, attributes = _preparation_of(node)
            effective, maxima = weight if isinstance(weight, tuple) else prepared_values(
                weight, slices, attributes)
            given = [f"{name}{EFFECTIVE}{i}" for i in range(slices)] + [
                f"{name}::w_max_{i}" for i in range(slices)]
            values.update(zip(given, [*effective, *maxima], strict=True))
            key = (node.op_type, node.overload)
            if key not in functions:
                functions.add(key)
                copy.functions.append(body(node.op_type, opset, slices))
            node.op_type = prefix + node.op_type
            x, _, input_range = node.input
            del node.input[:]
            node.input.extend([x, input_range, *given])
    if fused:
        _sparse_on_kernels(graph)
        _absorb_pre_scales(copy, values, opset)
        _add_into_sparse(graph)
    for node in [node for node in graph.node if _transposes_weight(node, values, readers)]:
        values[node.output[0]] = np.ascontiguousarray(values.pop(node.input[0]).T)
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    present = {init.name for init in graph.initializer}
    for name, value in values.items():
        if name not in present:
            initializer = graph.initializer.add()
            initializer.name = name
            initializer.dims.extend(value.shape)
    for initializer in graph.initializer:
        if initializer.name in values:
            _point_outside(initializer, values[initializer.name].nbytes)
    return copy, values


def prepared_values(weight: np.ndarray, slices: int, attributes: dict[str, float]) -> Prepared:
    """prepare_weights(weight, slices, **attributes), on afmc's programming kernel where it
    is built (one pass, the same numbers: runtime.fused.programming)."""
    fast = programming.prepare(weight, slices, attributes)
    return fast if fast is not None else prepare_weights(weight, slices, **attributes)


def _absorb_pre_scales(model: onnx.ModelProto, values: dict[str, np.ndarray],
                       opset: int) -> None:
    """Move each Mul of a value by a constant float vector [K] (smoothing's scale) whose
    output only fused analog nodes (and a split layer's kernel SparseOutliers) read as
    their X into those nodes' AnalogDAC, as its pre_scale input (fused_function with
    pre_scaled; the SparseOutliers kernel's fourth input): one element-wise pass less,
    the same float32 operations in the same order."""
    graph = model.graph
    inputs = {value.name for value in graph.input}
    constants = {init.name: list(init.dims) for init in graph.initializer
                 if init.data_type == TensorProto.FLOAT and init.name not in inputs}
    outputs = {value.name for value in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    present = {(f.name, f.overload) for f in model.functions}
    absorbed = []
    for name, users in _readers(graph).items():
        mul = producers.get(name)
        if (mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx")
                or mul.input[0] == mul.input[1] or name in outputs
                or not all(_fused_x(user, name) or _sparse_x(user, name) for user in users)):
            continue
        sparse = [user for user in users if _sparse_x(user, name)]
        users = [user for user in users if user not in sparse]
        if not users or len({user.overload for user in users}) > 1:
            continue
        slices = overload_slices(users[0].overload)
        width = values[users[0].input[2]].shape[0] * slices  # w_eff_0: [k, N]
        scale = next((i for i in mul.input if constants.get(i) == [width]), None)
        if scale is None:
            continue
        x = next(i for i in mul.input if i != scale)
        for user in users:
            user.input[0] = x
            user.input.insert(1, scale)
            user.overload += PRE_SCALED
            if (user.op_type, user.overload) not in present:
                present.add((user.op_type, user.overload))
                model.functions.append(fused_function(
                    user.op_type.removeprefix(FUSED_PREFIX), opset, slices, pre_scaled=True))
        for user in sparse:
            user.input[0] = x
            user.input.append(scale)
        absorbed.append(mul)
    for mul in absorbed:
        graph.node.remove(mul)


def _sparse_on_kernels(graph: onnx.GraphProto) -> None:
    """Run every afmc.SparseOutliers node on the kernel library's SparseOutliers (the same
    float32 sums in the same order as its stock body, one pass over X instead of M)."""
    for node in graph.node:
        if node.domain == ops.DOMAIN and node.op_type == SPARSE_OUTLIERS:
            node.domain = KERNEL_DOMAIN
            node.overload = ""


def _add_into_sparse(graph: onnx.GraphProto) -> None:
    """Fold each Add joining a fused analog node's output and the kernel SparseOutliers
    of the same X (read by that Add alone) into the SparseOutliers, as its addend input:
    the kernel writes addend + sparse sum, the Add's float32 sum, and the split layer
    costs one [tokens, N] tensor and one pass over it less."""
    producers = {out: node for node in graph.node for out in node.output}
    readers = _readers(graph)
    outputs = {value.name for value in graph.output}
    for add in [node for node in graph.node if node.op_type == "Add" and node.domain == ""]:
        for sparse_out, analog_out in (add.input, reversed(add.input)):
            sparse, analog = producers.get(sparse_out), producers.get(analog_out)
            if (sparse is None or analog is None or sparse_out in outputs
                    or not analog.op_type.startswith(FUSED_PREFIX)
                    or not _sparse_x(sparse, analog.input[0], pre_scaled=True)
                    or len(readers[sparse_out]) != 1):
                continue
            if len(sparse.input) == 3:
                sparse.input.append("")  # no pre_scale
            sparse.input.append(analog_out)
            sparse.output[0] = add.output[0]
            producers[add.output[0]] = sparse
            graph.node.remove(sparse)
            position = list(graph.node).index(add)
            graph.node.remove(add)
            graph.node.insert(position, sparse)
            break


def _fused_x(node: onnx.NodeProto, name: str) -> bool:
    """Whether `node` is a fused analog node (not pre-scaled yet) reading `name` as X."""
    return (node.op_type.startswith(FUSED_PREFIX) and node.input[0] == name
            and not node.overload.endswith(PRE_SCALED) and name not in node.input[1:])


def _sparse_x(node: onnx.NodeProto, name: str, *, pre_scaled: bool = False) -> bool:
    """Whether `node` is a kernel SparseOutliers reading `name` as X, with no pre_scale
    or addend yet (with `pre_scaled`, possibly a pre_scale)."""
    return (node.domain == KERNEL_DOMAIN and node.op_type == SPARSE_OUTLIERS
            and len(node.input) in ((3, 4) if pre_scaled else (3,))
            and node.input[0] == name)


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes reading each value of `graph`, by value name."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _preparation_of(node: onnx.NodeProto) -> tuple[int, dict[str, float]]:
    """(slices, prepare_weights' attributes) of an analog node with equal slices."""
    attributes = {a.name: a.f for a in node.attribute}
    return overload_slices(node.overload), {
        key: attributes.get(key, default) for key, default in ATTRIBUTE_DEFAULTS.items()}


def _transposes_weight(node: onnx.NodeProto, values: dict[str, np.ndarray],
                       readers: dict[str, list[onnx.NodeProto]]) -> bool:
    """Whether `node` is a 2-D Transpose (the FP view's) that alone reads given weights."""
    return (node.op_type == "Transpose" and node.domain == "" and node.input[0] in values
            and len(readers[node.input[0]]) == 1 and values[node.input[0]].ndim == 2)


def _preparable(node: onnx.NodeProto, weight: str) -> bool:
    """Whether `node` is an analog node of equal slices reading `weight` as its W."""
    return (node.domain == ops.DOMAIN and node.op_type in ANALOG_OP_TYPES
            and node.overload.startswith("n") and len(node.input) == 3
            and node.input[1] == weight)


def _point_outside(initializer: onnx.TensorProto, nbytes: int) -> None:
    """Make `initializer` carry no data but point at external data that the chip's
    session supplies from memory. onnxruntime checks that the named file exists in the
    model's folder (OUT) but reads nothing from it: the location is MODEL_FILE, which
    every output has."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
        initializer.ClearField(field)
    del initializer.external_data[:]
    initializer.data_type = TensorProto.FLOAT  # prepared and programmed values are float32
    initializer.data_location = TensorProto.EXTERNAL
    for key, value in (("location", MODEL_FILE), ("offset", "0"), ("length", str(nbytes))):
        entry = initializer.external_data.add()
        entry.key, entry.value = key, value
