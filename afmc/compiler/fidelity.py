"""The fidelity check that ends every compile: how far the compiled model is from FP.

Rule: on held-back calibration batches (data the calibration did not see where
there was enough of it), run the FP model and the compiled model and compare
their first outputs: relative L2 error, and for a language model (first input
int64 token ids [b, T], output [b, T, V]) the perplexity of both. The FP outputs are
taken by the front end before any pass (the torch module, or the input ONNX file);
the compiled model is always the lowered file, run through ONNX Runtime, whatever the
front end (one implementation: `lowered_fidelity`). An analog target is scored twice,
without programming noise and as chip 0 (the programming noise, device pairs and bit
slices that ``afmc run --seed 0`` samples); a digital target (int8, int4) once. Per
analog layer, the relative error of its own output against x W^T (x: the input it sees
in the noise-free run of the first batch, both fetched from ONNX Runtime as extra graph
outputs) ranks the layers.
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
from afmc.runtime.noise import NoiseConfig
from afmc.runtime.sessions import session_kv_cache

if TYPE_CHECKING:
    from afmc.data.calibration import CalibrationData
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


class LayerProbe:
    """Each analog layer's input x and output y in a session of the lowered model, fetched
    as extra graph outputs, ranked by |y - x W^T| against |x W^T| (W the stored crossbar
    weight). A layer is named by the record of its weight initializer (`records`, the
    record's "layers"); `add_outputs` adds the values to fetch to a serialized model."""

    def __init__(self, model: ir.Model, records: Sequence[dict[str, Any]]) -> None:
        by_weight = {layer["onnx_weight"]: layer["name"] for layer in records
                     if layer.get("onnx_weight")}
        self.layers = []
        for node in onnx_model.analog_nodes(model):
            weight = onnx_model.source_initializer(node.inputs[1])
            if weight.name in by_weight:
                self.layers.append((by_weight[weight.name],
                                    onnx_model.source_initializer(node.inputs[0]).name,
                                    node.outputs[0].name,
                                    weight.const_value.numpy().astype(np.float32)))
        self.fetch: list[str] = []

    def add_outputs(self, proto: onnx.ModelProto) -> None:
        """Make every layer's x and y an output of `proto` (graph inputs are fed anyway)."""
        graph_inputs = {value.name for value in proto.graph.input}
        present = {output.name for output in proto.graph.output}
        self.fetch = list(dict.fromkeys(name for _, x, y, _ in self.layers for name in (x, y)
                                        if name not in graph_inputs))
        proto.graph.output.extend(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            for name in self.fetch if name not in present)

    def ranked(self, session: Any, batch: tuple | Mapping,
               input_names: Sequence[str]) -> list[dict[str, Any]]:
        """The analog layers by relative output error on `batch`, worst first."""
        if not self.layers:
            return []
        feeds = _feeds(batch, input_names, session_kv_cache(session))
        values = {**feeds, **dict(zip(self.fetch, session.run(self.fetch, feeds),
                                      strict=True))}
        sums: dict[str, list[float]] = {}
        for name, x, y, weight in self.layers:
            exact = torch.from_numpy(np.asarray(values[x], dtype=np.float32) @ weight.T)
            totals = sums.setdefault(name, [0.0, 0.0])
            totals[0] += sum_of_squares(torch.from_numpy(np.asarray(values[y])) - exact)
            totals[1] += sum_of_squares(exact)
        ranked = [{"name": name, "relative_error": float(np.sqrt(err / max(sig, 1e-30)))}
                  for name, (err, sig) in sums.items()]
        return sorted(ranked, key=lambda item: -item["relative_error"])


def lowered_fidelity(model: ir.Model, record: dict[str, Any], noise: NoiseConfig,
                     batches: list, reference: list[np.ndarray],
                     held_back: bool = False) -> dict[str, Any]:
    """check_fidelity of the lowered model of any front end and target, all through ONNX
    Runtime, against `reference` (the FP model's outputs on `batches`, held before the
    passes). A digital model runs as the file; an analog one as the chips afmc run and
    afmc eval make of it (runtime.analog.AnalogRuntime, fused kernels where built): the
    stored weights (noise-free), chip 0 (the programmed weights of --seed 0, with the
    record's device pairs and bit slices), and the worst layers on the first batch,
    fetched from the noise-free chip's session (LayerProbe)."""
    from afmc.runtime.analog import AnalogRuntime

    proto = ir.serde.serialize_model(model)
    names = record["inputs"]
    if record.get("runtime") != "analog":
        return check_fidelity(reference, onnx_outputs(proto, names), batches, held_back,
                              record=record)
    probe = LayerProbe(model, record["layers"])
    runtime = AnalogRuntime(Path.cwd(), record, proto)
    chip = None
    if noise.model != "none" and probe.layers:  # built before the probe's outputs exist
        chip = onnx_chip_outputs(runtime.chip(0, noise=noise), names)
    probe.add_outputs(proto)  # a chip copies the graph when it is built
    noise_free = runtime.chip(None)
    worst = probe.ranked(noise_free.session, batches[0], names)[:WORST_LAYERS] or None
    return check_fidelity(reference, onnx_chip_outputs(noise_free, names), batches,
                          held_back, chip=chip, worst_layers=worst, record=record)


def fidelity_batches(calibration: CalibrationData) -> tuple[list, bool]:
    """(the batches the fidelity check runs on, whether they are held back): the held-back
    batches, or the first calibration batch when there was too little data to hold any."""
    held = bool(calibration.held)
    return (calibration.held if held else calibration.batches[:1]), held
