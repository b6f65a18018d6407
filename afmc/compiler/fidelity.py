"""The fidelity check that ends every compile: how far the compiled model is from FP.

Rule: on held-back calibration batches (data the calibration did not see where
there was enough of it), run the FP model and the compiled model and compare
their first outputs: relative L2 error, and for a language model (first input
int64 token ids [b, T], output [b, T, V]) the perplexity of both. An analog
target is scored twice, without programming noise and as chip 0 (the
programming noise that ``afmc run --seed 0`` samples); a digital target (int8,
int4) once, through ONNX Runtime on the lowered file. Per analog layer, the
relative error of its own output against x W^T (x: the input it sees in the
noise-free run of the first batch) ranks the layers: through an fx.Interpreter on
a torch program (layer_errors), through ONNX Runtime with each layer's input and
output fetched on an ONNX input (onnx_layer_errors); both give the same ranking.

Above the thresholds (perplexity over PERPLEXITY_RATIO x FP, or a relative
error over RELATIVE_ERROR without programming noise) a FidelityWarning names
the worst layers and the next steps; the result is stored in afmc.json under
"fidelity" either way.

The numbers are the same on any number of threads (they are written into the ONNX
metadata, so they must be for one compile to give one file): the per-layer sums of
squares are taken by numpy's pairwise sum on one thread (`sum_of_squares`), not by a
whole-tensor torch sum, whose partial sums follow torch.get_num_threads().
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch import fx, nn

from afmc.metrics import next_token_nll
from afmc.ops import onnx_model
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.layers import META_KEY, LayerRecord, layer_records
from afmc.runtime.noise import NoiseConfig, layer_rng, program_weights
from afmc.runtime.threads import in_order_on_threads

if TYPE_CHECKING:
    from afmc.runtime.chip import Chip

PERPLEXITY_RATIO = 1.5
RELATIVE_ERROR = 0.2
CHIP_PERPLEXITY_RATIO = 3.0  # chip 0 above this times FP perplexity also warns
WORST_LAYERS = 5

Outputs = Callable[[tuple], np.ndarray]


class FidelityWarning(UserWarning):
    """The compiled model is far from the FP model on held-back calibration data."""


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def torch_outputs(module: nn.Module) -> Outputs:
    """First output of a torch module or program, as float32 numpy.

    A graph module runs through fx.Interpreter, which skips the input-shape guards
    of a module exported with a static batch size.
    """
    call = fx.Interpreter(module).run if isinstance(module, fx.GraphModule) else module

    def run(batch: tuple) -> np.ndarray:
        with torch.no_grad():
            return _first(call(*batch)).detach().float().numpy()

    return run


def onnx_outputs(model: ir.Model | onnx.ModelProto, input_names: Sequence[str]) -> Outputs:
    """First output of an ONNX model through ONNX Runtime; batches are tuples in the order
    of `input_names`, or mappings from input name (a KV cache's pasts, if not given,
    empty)."""
    from afmc.runtime.sessions import model_session, session_kv_cache, session_options

    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = model_session(proto, session_options(None))
    cache = session_kv_cache(session)

    def run(batch: tuple | Mapping) -> np.ndarray:
        return session.run(None, _feeds(batch, input_names, cache))[0]

    return run


def _feeds(batch: tuple | Mapping, input_names: Sequence[str],
           cache: Any) -> dict[str, np.ndarray]:
    """A batch (a tuple in the order of `input_names`, or a mapping by name) as a session's
    feeds, with a KV cache's empty pasts when the model has one and the batch none."""
    from afmc.data.kv_cache import with_empty_pasts

    pairs = batch.items() if isinstance(batch, Mapping) else zip(input_names, batch, strict=True)
    return with_empty_pasts({name: np.asarray(value) for name, value in pairs}, cache)


def _token_ids(batch: tuple | Mapping) -> np.ndarray:
    first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
    return np.asarray(first)


def _is_language_model(batch: tuple | Mapping, output: np.ndarray) -> bool:
    ids = _token_ids(batch)
    return (ids.dtype == np.int64 and ids.ndim == 2 and output.ndim == 3
            and tuple(output.shape[:2]) == ids.shape and output.shape[2] > ids.max())


def _score(outputs: list[np.ndarray], batches: list[tuple], reference: list[np.ndarray],
           language_model: bool) -> dict[str, float]:
    """Relative L2 error of `outputs` against `reference` (and perplexity, language models)."""
    error, norm, nll, count = 0.0, 0.0, 0.0, 0
    for batch, got, expected in zip(batches, outputs, reference, strict=True):
        error += float(np.square(got.astype(np.float64) - expected).sum())
        norm += float(np.square(expected.astype(np.float64)).sum())
        if language_model:
            losses = next_token_nll(got, _token_ids(batch))
            nll += float(losses.sum())
            count += losses.size
    scores = {"relative_error": float(np.sqrt(error / max(norm, 1e-30)))}
    if language_model:
        scores["perplexity"] = float(np.exp(nll / count))
    return scores


def sum_of_squares(tensor: torch.Tensor) -> float:
    """sum(tensor ** 2) in float64, the same on any number of threads.

    torch sums a whole tensor of 32768 or more elements as one partial sum per thread
    (at::parallel_reduce), so its last bits change with torch.get_num_threads(); numpy's
    pairwise sum of a contiguous array runs on one thread in a fixed order."""
    values = np.ascontiguousarray(tensor.detach().to("cpu", torch.float64).numpy())
    return float(np.square(values).sum())


class _LayerErrors(fx.Interpreter):
    """Runs an analog program and sums, per analog layer, |analog - x W^T|^2 and |x W^T|^2."""

    def __init__(self, program: fx.GraphModule) -> None:
        super().__init__(program)
        self.sums: dict[str, list[float]] = {}

    def call_function(self, target, args, kwargs):
        out = super().call_function(target, args, kwargs)
        if target is ANALOG_LINEAR:
            exact = torch.nn.functional.linear(args[0], args[1])
            name = self.current.meta[META_KEY].name
            sums = self.sums.setdefault(name, [0.0, 0.0])
            sums[0] += sum_of_squares(out - exact)
            sums[1] += sum_of_squares(exact)
        return out

    def run_node(self, node: fx.Node):
        self.current = node
        return super().run_node(node)


def layer_errors(program: fx.GraphModule,
                 batch: tuple) -> tuple[list[dict[str, Any]], np.ndarray]:
    """(analog layers by relative output error on `batch`, worst first; the program's
    first output on `batch`, which that run computes anyway)."""
    interpreter = _LayerErrors(program)
    with torch.no_grad():
        output = _first(interpreter.run(*batch)).float().numpy()
    ranked = [{"name": name, "relative_error": float(np.sqrt(err / max(sig, 1e-30)))}
              for name, (err, sig) in interpreter.sums.items()]
    return sorted(ranked, key=lambda item: -item["relative_error"]), output


def _analog(records: list[LayerRecord]) -> list[LayerRecord]:
    return [r for r in records if r.placement == "analog" and r.input_range]


class _ProgrammedChip(fx.Interpreter):
    """Runs an analog program with the programmed weights of chip `seed` in place of the
    stored ones: each analog weight is programmed for the graph's read of it (get_attr)
    and freed after its last use. The reads come in graph order, so the next LOOKAHEAD
    layers are programmed on worker threads meanwhile (each on its own random stream,
    so the numbers do not depend on the threads): at most 1 + LOOKAHEAD programmed
    copies are alive."""

    LOOKAHEAD = 2

    def __init__(self, program: fx.GraphModule, noise: NoiseConfig, seed: int,
                 devices: int = 1) -> None:
        super().__init__(program)
        self.noise, self.seed, self.devices = noise, seed, devices
        self.layers = {record.weight: (index, record)
                       for index, record in enumerate(_analog(layer_records(program)))}
        reads = [node.target for node in program.graph.nodes
                 if node.op == "get_attr" and node.users and node.target in self.layers]
        self.programmed = in_order_on_threads(self._program, reads, ahead=self.LOOKAHEAD)

    def run_node(self, node: fx.Node):
        if node.op == "get_attr" and not node.users:
            return None  # read by nobody: not programmed (the interpreter would hold it)
        return super().run_node(node)

    def get_attr(self, target, args, kwargs):
        if target not in self.layers:
            return super().get_attr(target, args, kwargs)
        return next(self.programmed)

    def _program(self, target: str) -> torch.Tensor:
        stored = self.fetch_attr(target)
        index, record = self.layers[target]
        programmed = program_weights(stored.detach().float().numpy(), record.slice_sizes,
                                     self.noise, layer_rng(self.seed, index), self.devices)
        return torch.from_numpy(programmed).to(stored.dtype)


def chip_outputs(program: fx.GraphModule, noise: NoiseConfig, seed: int,
                 devices: int = 1) -> Outputs:
    """Outputs of `program` with the programming noise of chip `seed` (same draws as afmc
    run), programmed layer by layer during each run (_ProgrammedChip), with `devices`
    device pairs per weight."""

    def run(batch: tuple) -> np.ndarray:
        with torch.no_grad():
            chip = _ProgrammedChip(program, noise, seed, devices)
            return _first(chip.run(*batch)).float().numpy()

    return run


def program_checks(program: fx.GraphModule, noise: NoiseConfig, batches: list[tuple],
                   devices: int = 1
                   ) -> tuple[Outputs, Outputs | None, list[dict[str, Any]] | None]:
    """(outputs without programming noise, chip 0, worst layers) of an analog torch
    program; (outputs, None, None) without analog layers. The layers are ranked in the
    noise-free run of the first batch, whose output is kept: one run, not two."""
    compiled = torch_outputs(program)
    if not _analog(layer_records(program)):
        return compiled, None, None
    worst, first = layer_errors(program, batches[0])

    def noise_free(batch: tuple) -> np.ndarray:
        return first if batch is batches[0] else compiled(batch)

    chip = chip_outputs(program, noise, 0, devices) if noise.model != "none" else None
    return noise_free, chip, worst[:WORST_LAYERS]


def check_fidelity(reference: list[np.ndarray], compiled: Outputs, batches: list,
                   held_back: bool, *,
                   chip: Outputs | None = None,
                   worst_layers: list[dict[str, Any]] | None = None,
                   record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fidelity entry of afmc.json; warns (FidelityWarning) when past the thresholds.

    `reference` holds the FP model's output on each batch, `compiled` runs the compiled
    model without programming noise and `chip` (analog targets) chip 0; `worst_layers`
    ranks the analog layers; the warning's advice names only the levers that the
    compile's `record` (its configuration and passes) does not already use.
    """
    language_model = _is_language_model(batches[0], reference[0])
    result: dict[str, Any] = {
        "data": f"{len(batches)} held-back calibration batch(es)" if held_back
        else f"{len(batches)} calibration batch(es) (too little data to hold any back)",
        "noise_free": _score([compiled(batch) for batch in batches], batches, reference,
                             language_model),
    }
    if language_model:
        result["fp_perplexity"] = _score(reference, batches, reference, True)["perplexity"]
    if chip is not None:
        result["chip_0"] = _score([chip(batch) for batch in batches], batches, reference,
                                  language_model)
    if worst_layers is not None:
        result["worst_layers"] = worst_layers
    result["warning"] = _warning(result, advice(record or {}))
    if result["warning"]:
        warnings.warn(result["warning"], FidelityWarning, stacklevel=2)
    return result


def advice(record: dict[str, Any]) -> str:
    """What to try next, naming only the levers the compile of `record` has not used."""
    config = record.get("config", {})
    passes = record.get("passes", [])
    ran = {step["name"].removeprefix("onnx-") for step in passes if step.get("modified", True)}
    level = "onnx-" if any(step["name"].startswith("onnx-") for step in passes) else ""
    steps = ["keep the worst layers digital (--digital REGEX)"]
    if record.get("runtime") == "analog":
        if config.get("calibration", {}).get("method") not in (None, "search"):
            steps.append("calibration.method=search")
        if not ran & {"smooth-inputs", "chip-smooth-inputs"}:
            steps.append(f"the {level}chip-smooth-inputs pass")
        if "split-outliers" not in ran:
            steps.append(f"the {level}split-outliers pass (outliers.budget=0.01)")
        if config.get("placement", {}).get("lm_head", "digital") == "analog":
            steps.append("placement.lm_head=digital (the LM head is the most noise-sensitive "
                         "layer of an LLM: docs/real-models.md)")
        if config.get("hardware", {}).get("devices_per_weight", 1) == 1:
            steps.append("hardware.devices_per_weight=2 or 4 (that many times the tiles)")
    steps.append("adapt the model by hardware-aware training")
    return ", ".join(steps[:-1]) + " or " + steps[-1]


def _warning(result: dict[str, Any], steps: str) -> str | None:
    noise_free = result["noise_free"]
    problems = []
    if "perplexity" in noise_free and \
            noise_free["perplexity"] > PERPLEXITY_RATIO * result["fp_perplexity"]:
        problems.append(f"perplexity {noise_free['perplexity']:.4g} without programming noise "
                        f"vs {result['fp_perplexity']:.4g} FP")
    if noise_free["relative_error"] > RELATIVE_ERROR:
        problems.append(f"relative output error {noise_free['relative_error']:.3g}")
    chip = result.get("chip_0", {})
    if "perplexity" in chip and chip["perplexity"] > CHIP_PERPLEXITY_RATIO * \
            result["fp_perplexity"]:
        problems.append(f"perplexity {chip['perplexity']:.4g} on chip 0")
    if not problems:
        return None
    worst = ", ".join(f"{layer['name']} ({layer['relative_error']:.2g})"
                      for layer in result.get("worst_layers", [])[:3])
    return (f"the compiled model is far from FP on held-back data: {'; '.join(problems)}"
            + (f"; worst layers by output error: {worst}" if worst else "") + f"; next: {steps}")


def onnx_chip_outputs(chip: Chip, input_names: Sequence[str]) -> Outputs:
    """First output of `chip`; batches as for onnx_outputs."""

    def run(batch: tuple | Mapping) -> np.ndarray:
        values = [batch[name] for name in input_names] if isinstance(batch, Mapping) else batch
        return chip.run(*(np.asarray(value) for value in values))

    return run


def onnx_layer_errors(model: ir.Model, proto: onnx.ModelProto, batch: tuple | Mapping,
                      input_names: Sequence[str]) -> list[dict[str, Any]]:
    """Analog layers of an ONNX model by relative output error on `batch`, worst first: the
    rule of layer_errors (|y - x W^T| against |x W^T|, x the input each layer sees in the
    noise-free run), with x and y fetched from ONNX Runtime as extra graph outputs of
    `proto`, the model serialized (given back as it was once the session is made)."""
    from afmc.runtime.sessions import model_session, session_kv_cache, session_options

    layers = []
    for node in onnx_model.analog_nodes(model):
        record = node.meta.get(META_KEY)
        if record is not None and record.placement == "analog":
            weight = onnx_model.source_initializer(node.inputs[1]).const_value.numpy()
            layers.append((record.name, onnx_model.source_initializer(node.inputs[0]).name,
                           node.outputs[0].name, weight.astype(np.float32)))
    if not layers:
        return []
    graph_inputs = {value.name for value in proto.graph.input}
    present = {output.name for output in proto.graph.output}
    fetch = list(dict.fromkeys(name for _, x, y, _ in layers for name in (x, y)
                               if name not in graph_inputs))
    kept = len(proto.graph.output)
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None)
                              for name in fetch if name not in present)
    try:
        session = model_session(proto, session_options(None))
    finally:
        del proto.graph.output[kept:]
    feeds = _feeds(batch, input_names, session_kv_cache(session))
    values = {**feeds, **dict(zip(fetch, session.run(fetch, feeds), strict=True))}
    sums: dict[str, list[float]] = {}
    for name, x, y, weight in layers:
        exact = torch.from_numpy(np.asarray(values[x], dtype=np.float32) @ weight.T)
        totals = sums.setdefault(name, [0.0, 0.0])
        totals[0] += sum_of_squares(torch.from_numpy(np.asarray(values[y])) - exact)
        totals[1] += sum_of_squares(exact)
    ranked = [{"name": name, "relative_error": float(np.sqrt(err / max(sig, 1e-30)))}
              for name, (err, sig) in sums.items()]
    return sorted(ranked, key=lambda item: -item["relative_error"])


def onnx_fidelity(model: ir.Model, record: dict[str, Any], noise: NoiseConfig,
                  batches: list, held_back: bool = False) -> dict[str, Any]:
    """check_fidelity for an analog ONNX model (ONNX input): the file's FP view, the file,
    chip 0 (the programmed weights of afmc run --seed 0), and the worst layers on the
    first batch (onnx_layer_errors), all through ONNX Runtime."""
    from afmc.runtime.analog import AnalogRuntime
    from afmc.runtime.views import fp_reference

    proto = ir.serde.serialize_model(model)
    names = record["inputs"]
    chip = None
    if noise.model != "none" and any(layer.get("onnx_weight") for layer in record["layers"]):
        runtime = AnalogRuntime(Path.cwd(), record, proto)
        chip = onnx_chip_outputs(runtime.chip(0, noise=noise), names)
    fp = onnx_outputs(fp_reference(proto), names)
    worst = onnx_layer_errors(model, proto, batches[0], names)[:WORST_LAYERS] or None
    return check_fidelity([fp(batch) for batch in batches], onnx_outputs(proto, names),
                          batches, held_back, chip=chip, worst_layers=worst, record=record)
