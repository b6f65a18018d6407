"""The pass API: custom passes, pass selection, per-pass verification, intermediates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.fx.passes.infra.pass_base import PassBase, PassResult

import afmc.api
from afmc.data.kv_cache import KVCacheSpec
from afmc.ops.analog_linear import ANALOG_LINEAR
from afmc.passes.registry import PASSES, resolve_passes
from afmc.passes.verify import VerificationError

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-pass.md"
AIMC = ["place-layers", "insert-analog-linear", "calibrate"]


def _doc_example() -> dict:
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102  (the guide's own example)
    return namespace


def _ranges(program) -> list[torch.Tensor]:
    return [program.get_parameter(n.args[2].target).detach() for n in program.graph.nodes
            if n.target is ANALOG_LINEAR]


@pytest.mark.slow
def test_guide_example_runs_and_caps_ranges(model_dirs, calibration_text):
    example = _doc_example()
    result = example["compile_with_capped_ranges"](str(model_dirs["llama"]), calibration_text, 0.5)
    ranges = _ranges(result.program)
    assert ranges and all(float(r.max()) <= 0.5 for r in ranges)
    names = [step["name"] for step in result.record["passes"]]
    assert names[names.index("lower") - 1] == "CapInputRanges"
    uncapped = afmc.api.compile(str(model_dirs["llama"]), "aimc", calibration=calibration_text)
    assert max(float(r.max()) for r in _ranges(uncapped.program)) > 0.5


class _PerturbWeights(PassBase):
    """A broken pass that claims to preserve the output but scales every parameter."""

    preserves_output = True

    def call(self, graph_module):
        with torch.no_grad():
            for parameter in graph_module.parameters():
                parameter.mul_(1.01)
        return PassResult(graph_module, True)


class _CorruptRecord(PassBase):
    """A broken pass that desynchronises an analog node from its record."""

    def call(self, graph_module):
        node = next(n for n in graph_module.graph.nodes if n.target is ANALOG_LINEAR)
        node.meta["afmc"].slice_sizes = [1]
        node.args = (*node.args[:3], [1], *node.args[4:])
        return PassResult(graph_module, True)


def test_verify_names_a_pass_that_changes_the_output(model_dirs, calibration_text):
    model = afmc.capture.capture_causal_lm(model_dirs["gpt2"])
    with pytest.raises(VerificationError, match="pass _PerturbWeights must not change"):
        afmc.api.compile(model, "aimc", calibration=[model.example_inputs], verify=True,
                         passes=[_PerturbWeights(), *AIMC])


@pytest.mark.slow
def test_graph_check_names_a_pass_that_breaks_a_record(model_dirs, calibration_text):
    with pytest.raises(VerificationError, match="after pass _CorruptRecord"):
        afmc.api.compile(str(model_dirs["llama"]), "aimc", calibration=calibration_text,
                         passes=[*AIMC, _CorruptRecord()])


@pytest.mark.slow
def test_verify_records_drift_per_pass(model_dirs, calibration_text, tmp_path):
    result = afmc.api.compile(str(model_dirs["llama"]), "aimc", calibration=calibration_text,
                              verify=True, save_intermediate=True, output=tmp_path / "out")
    drift = {step["name"]: step.get("output_drift") for step in result.record["passes"]}
    assert drift["place-layers"] == 0.0
    assert drift["insert-analog-linear"] > 1e-3 and drift["calibrate"] < drift[
        "insert-analog-linear"]
    saved = sorted((tmp_path / "out" / "intermediate").glob("*.pt2"))
    assert [p.name for p in saved] == ["01-fold-batchnorm.pt2", "02-fold-norms.pt2",
                                      "03-place-layers.pt2", "04-chip-smooth-inputs.pt2",
                                      "05-insert-analog-linear.pt2", "06-split-outliers.pt2",
                                      "07-calibrate.pt2"]
    assert drift["fold-norms"] < 1e-5 and drift["chip-smooth-inputs"] < 1e-5
    reloaded = torch.export.load(saved[-1]).module()
    ids = torch.randint(0, 256, (2, 7))
    pasts = KVCacheSpec.from_json(result.record["kv_cache"]).empty(2).values()
    torch.testing.assert_close(reloaded(ids, *map(torch.from_numpy, pasts)), result.program(ids))


def test_pass_selection():
    assert resolve_passes(tuple(AIMC), None, ["calibrate"]) == AIMC[:2]
    assert resolve_passes(tuple(AIMC), ["place-layers"], []) == ["place-layers"]
    with pytest.raises(KeyError, match="unknown pass 'nope'"):
        resolve_passes(tuple(AIMC), ["nope"], [])
    with pytest.raises(ValueError, match="--skip calibrate"):
        resolve_passes(tuple(AIMC), ["place-layers"], ["calibrate"])
    assert all(info.summary for info in PASSES.values())


@pytest.mark.slow
def test_top_level_compile_and_load(model_dirs, calibration_text, tmp_path):
    import afmc

    result = afmc.compile(str(model_dirs["qwen2"]), target="aimc", calibration=calibration_text,
                          output=tmp_path / "out")
    assert result.program is not None and result.model is not None
    assert result.record["summary"]["analog_layers"] > 0
    chip = afmc.load(tmp_path / "out").chip(2)
    assert chip.run(torch.zeros((1, 4), dtype=torch.int64).numpy()).shape == (1, 4, 256)
