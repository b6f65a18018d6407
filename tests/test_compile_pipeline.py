"""End to end: compile tiny models of every supported architecture for aimc and run them.

Proves: (1) with noise and quantization off (the FP view of the compiled file, and
the fp target) ONNX Runtime's logits equal PyTorch's FP logits; (2) with
quantization on and noise off, the torch-level analog program and the ONNX
Runtime session agree within one ADC step of the output layer; (3) the file
passes the ONNX checker, holds one afmc node per analog layer and the placement
in its metadata; (4) chips are reproducible per seed and differ across seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM

from afmc.api import compile as afmc_compile
from afmc.api import load
from afmc.compiler.lowering import read_metadata
from afmc.config import load_config

# four tiny models compiled for aimc (module fixture), built once on one worker
# (make test: --dist loadgroup)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group(__name__),
]

ARCHITECTURES = ["llama", "phi3", "qwen2", "gpt2"]


@pytest.fixture(scope="module")
def compiled(model_dirs, calibration_text, tmp_path_factory) -> dict[str, tuple]:
    """aimc compiles (max_in 48, so layers are split into unequal slices) of each model."""
    config = load_config(None, ["hardware.max_in=40", "noise.model=pcm"])
    results = {}
    for architecture in ARCHITECTURES:
        out = tmp_path_factory.mktemp("out") / architecture
        result = afmc_compile(str(model_dirs[architecture]), "aimc", config,
                              calibration=calibration_text, output=out)
        results[architecture] = (out, result)
    return results


def _ids(batch: int = 3, seq: int = 21) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (batch, seq), dtype=np.int64)


def _hf_logits(model_dir: Path, ids: np.ndarray) -> np.ndarray:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fp_view_equals_pytorch(architecture, compiled, model_dirs):
    out, _ = compiled[architecture]
    ids = _ids()
    expected = _hf_logits(model_dirs[architecture], ids)
    got = load(out).fp_view().run(ids)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fp_target_equals_pytorch(model_dirs, tmp_path):
    result = afmc_compile(str(model_dirs["llama"]), "fp", output=tmp_path / "fp")
    assert result.record["summary"]["analog_layers"] == 0
    ids = _ids(2, 9)
    got = load(tmp_path / "fp").chip(None).run(ids)
    np.testing.assert_allclose(got, _hf_logits(model_dirs["llama"], ids), rtol=1e-4, atol=1e-5)


def _output_adc_step(result) -> float:
    """One ADC step of the output layer (largest row), summed over its slices."""
    program, hardware = result.program, result.record["config"]["hardware"]
    layer = [rec for rec in result.layers if rec.placement == "analog"][-1]
    weight = program.get_parameter(layer.weight).detach()
    ranges = program.get_parameter(layer.input_range).detach()
    steps = []
    for index, part in enumerate(torch.split(weight, layer.slice_sizes, dim=1)):
        bound = hardware["out_bound"] * ranges[index] * part.abs().amax(dim=1).max()
        steps.append(float(2 * bound / hardware["out_res"]))
    return sum(steps)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_quantized_torch_program_matches_onnxruntime(architecture, compiled):
    out, result = compiled[architecture]
    ids = _ids()
    with torch.no_grad():
        torch_logits = result.program(torch.from_numpy(ids))[0].numpy()  # logits, presents
    ort_logits = load(out).chip(None).run(ids)
    fp_logits = load(out).fp_view().run(ids)
    assert np.abs(torch_logits - fp_logits).max() > 1e-3, "quantization had no effect"
    assert np.abs(torch_logits - ort_logits).max() <= _output_adc_step(result)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_file_structure_and_metadata(architecture, compiled):
    out, result = compiled[architecture]
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    analog = [n for n in model.graph.node if n.domain == "afmc" and n.op_type == "AnalogLinear"]
    records = [r for r in result.layers if r.placement == "analog"]
    assert len(analog) == len(records) > 0
    assert {f.name for f in model.functions} >= {"AnalogLinear", "SliceInput"}
    assert not any(n.op_type == "RandomNormalLike" for f in model.functions for n in f.node
                   if f.name == "AnalogLinear")
    metadata = read_metadata(out / "model.onnx")
    assert [layer["name"] for layer in metadata["layers"]] == [r.name for r in result.layers]
    assert metadata["config"]["hardware"]["max_in"] == 40
    record = json.loads((out / "afmc.json").read_text())
    assert record["summary"]["analog_layers"] == len(records)
    assert all(layer["tiles"] >= 1 and sum(layer["slice_sizes"]) == layer["in_features"]
               for layer in record["layers"])
    assert any(len(set(layer["slice_sizes"])) > 1 for layer in record["layers"])


def test_chips_reproduce_per_seed(compiled):
    out, _ = compiled["llama"]
    ids = _ids(2, 12)
    first = load(out).chip(3).run(ids)
    again = load(out).chip(3).run(ids)
    other = load(out).chip(4).run(ids)
    clean = load(out).chip(None).run(ids)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    assert np.abs(first - clean).max() > 1e-3


def test_read_noise_is_fresh_per_inference(compiled):
    out, _ = compiled["llama"]
    ids = _ids(2, 12)
    chip = load(out).chip(3, read_noise=0.1)
    assert np.abs(chip.run(ids) - chip.run(ids)).max() > 0
    with pytest.raises(ValueError, match="read noise"):
        load(out).chip(3, read_noise=-1.0)


def test_calibrated_ranges_follow_the_data(compiled):
    _, result = compiled["llama"]
    ranges = [result.program.get_parameter(r.input_range).detach() for r in result.layers]
    assert all(bool((r > 0).all()) for r in ranges)
    assert len({round(float(r[0]), 5) for r in ranges}) > 3, "ranges were not calibrated"


def test_chip_runs_the_programmed_weights_on_a_static_shape_model(tmp_path):
    """With static shapes onnxruntime folds the weight-only part of the analog body at
    load; the chip must still run the programmed (noisy) weights, not the stored ones."""
    from afmc.runtime.noise import NoiseConfig

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(96, 48), torch.nn.ReLU(), torch.nn.Linear(48, 8))
    x = torch.randn(16, 96)
    config = load_config(None, ["hardware.max_in=40", "noise.model=additive",
                                "noise.additive_std=0.2"])
    result = afmc_compile(module.eval(), "aimc", config, example_inputs=(x,),
                          calibration=[(x,)], output=tmp_path / "out")
    out = tmp_path / "out"
    stored = load(out).chip(None).run(x.numpy())
    chip = load(out).chip(5).run(x.numpy())
    assert np.abs(chip - stored).max() > 1e-3, "programming noise was folded away"
    weights = dict(load(out).runtime.programmed(5, NoiseConfig(model="additive",
                                                               additive_std=0.2)))
    program = result.program
    with torch.no_grad():
        for layer in result.layers:
            program.get_parameter(layer.weight).copy_(torch.from_numpy(weights[layer.onnx_weight]))
        expected = program(x).numpy()
    assert np.abs(chip - expected).max() <= _output_adc_step(result)


def _folded_chip(out: Path, seed: int | None, fp: bool = False):
    """Chip `seed` (or the FP view) the way onnxruntime folds it: the weights as external
    initializers of the unprepared graph, the weight-only part of each body folded by
    onnxruntime when the session starts."""
    from afmc.runtime.analog import _point_outside
    from afmc.runtime.views import fp_reference

    runtime = load(out).runtime
    weights = dict(runtime.programmed(seed, runtime.noise) if seed is not None
                   else runtime.stored(whole=fp))
    graph = onnx.ModelProto()
    graph.CopyFrom(fp_reference(runtime.graph, whole_weights=True) if fp else runtime.graph)
    for initializer in graph.graph.initializer:
        if initializer.name in weights:
            _point_outside(initializer, weights[initializer.name].nbytes)
    return runtime._session(graph, weights, None, seed)


@pytest.mark.parametrize("seed", [None, 3])
def test_prepared_chip_equals_the_folded_body(compiled, seed):
    """A chip's session takes the analog nodes in their prepared form (the weight-only part
    computed in numpy): the same numbers as onnxruntime folding the file's body."""
    out, _ = compiled["llama"]
    ids = _ids(2, 12)
    np.testing.assert_array_equal(load(out).chip(seed).run(ids),
                                  _folded_chip(out, seed).run(ids))


def test_large_chip_computes_on_its_arrays_in_place(compiled, monkeypatch):
    """Above PREPACK_LIMIT a chip's session reads afmc's prepared arrays in place (shared
    initializers, no copy): the same outputs as the copying path, and the chip holds
    the arrays its session computes on (zeroing them changes the output)."""
    from afmc.runtime import analog

    out, _ = compiled["llama"]
    ids = _ids(2, 12)
    copied, fp = load(out).chip(3), load(out).fp_view().run(ids)
    assert copied.borrowed is None
    monkeypatch.setattr(analog, "PREPACK_LIMIT", 0)
    np.testing.assert_array_equal(load(out).fp_view().run(ids), fp)
    shared = load(out).chip(3)
    np.testing.assert_array_equal(shared.run(ids), copied.run(ids))
    assert shared.borrowed
    for array in shared.borrowed:
        array[...] = 0
    assert not np.array_equal(shared.run(ids), copied.run(ids))


def test_fp_view_transposes_in_numpy(compiled):
    out, _ = compiled["llama"]
    ids = _ids(1, 9)
    np.testing.assert_array_equal(load(out).fp_view().run(ids),
                                  _folded_chip(out, None, fp=True).run(ids))


def test_prepared_graph_leaves_no_raw_analog_weight(compiled):
    from afmc.runtime.analog import prepared_graph

    out, _ = compiled["llama"]
    runtime = load(out).runtime
    graph, values = prepared_graph(runtime.graph, runtime.stored())
    analog = [node for node in graph.graph.node if node.domain == "afmc"
              and node.op_type.endswith("AnalogLinear")]
    raw = {layer["onnx_weight"] for layer in runtime.analog}
    prepared = [node for node in analog if node.op_type == "PreparedAnalogLinear"]
    assert prepared, "no analog node was prepared"
    # Unequal slices keep their body: W comes through SliceInput, not straight from a weight.
    assert all(node in prepared or node.input[1] not in raw for node in analog)
    kept = raw & {init.name for init in graph.graph.initializer}
    assert len(kept) == len(analog) - len(prepared)
    layer = runtime.analog[0]
    slices = len(layer["slice_sizes"])
    assert values[f"{layer['onnx_weight']}::w_eff_0"].shape == (
        layer["in_features"] // slices, layer["out_features"])
