"""Fixtures and checks that several pass test files share (tests/conftest.py's fixtures,
such as model_dirs, are visible here too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from analog_models import compiled_llama, exported_llama, onnx_graph
from onnx import helper
from torch import nn

from afmc.api import load


@pytest.fixture(scope="session")
def llama_onnx(tmp_path_factory) -> Path:
    """The tiny Llama's ONNX export (shared with tests/test_onnx_input.py in a process)."""
    return exported_llama(tmp_path_factory)


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny Llama compiled by the torch path and, from its ONNX export, by
    afmc.compile, both without chip smoothing (analog_models.compiled_llama)."""
    return compiled_llama(tmp_path_factory)


def assert_equivalent(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within 1e-5 relative to the largest magnitude."""
    actual, expected = actual.detach(), expected.detach()
    error = float((actual - expected).abs().max())
    assert error <= 1e-5 * float(expected.abs().max()), error


def assert_smoothed_with_fp_kept(smoothed_out: Path, unsmoothed_out: Path, groups: int) -> None:
    """One Mul by 1/s per smoothed group in the file, and its FP view that of the unsmoothed
    compile to rounding."""
    graph = onnx.load(str(smoothed_out / "model.onnx")).graph
    muls = [node for node in graph.node
            if node.op_type == "Mul" and any(i.endswith(".smooth_scale") for i in node.input)]
    assert len(muls) == groups
    inputs = np.random.default_rng(9).integers(0, 256, (3, 21))
    np.testing.assert_allclose(load(smoothed_out).fp_view().run(inputs),
                               load(unsmoothed_out).fp_view().run(inputs), rtol=1e-4, atol=1e-4)


class TwoGroups(nn.Module):
    """Two smoothing groups: q and k read x [.., 32], o reads relu(q(x) + k(x)) [.., 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(32, 16, bias=False)
        self.k = nn.Linear(32, 16, bias=False)
        self.o = nn.Linear(16, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.relu(self.q(x) + self.k(x)))


def two_groups_batches(count: int = 3) -> list[torch.Tensor]:
    """Seeded batches [8, 32] for TwoGroups with an outlier channel (5, 30 times larger), as
    an LLM's activations have."""
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 32, generator=generator) for _ in range(count)]
    for batch in batches:
        batch[:, 5] *= 30.0
    return batches


def two_groups_onnx(module: TwoGroups) -> ir.Model:
    """The same network as an ONNX graph of MatMuls (named q, k, o) on its weights."""
    weights = {name: getattr(module, name).weight.detach().numpy().T.copy()
               for name in ("q", "k", "o")}
    return onnx_graph(
        [
            helper.make_node("MatMul", ["x", "wq"], ["hq"], name="q"),
            helper.make_node("MatMul", ["x", "wk"], ["hk"], name="k"),
            helper.make_node("Add", ["hq", "hk"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "wo"], ["y"], name="o"),
        ],
        {"x": ["batch", 32]},
        ["y"],
        {f"w{name}": weight for name, weight in weights.items()},
    )


def smoothing_muls(model: ir.Model) -> dict[str, np.ndarray]:
    """The digital Mul by 1/s before each smoothed group: its input's name -> 1/s."""
    return {node.inputs[0].name: node.inputs[1].const_value.numpy() for node in model.graph
            if node.op_type == "Mul" and node.inputs[1].name.endswith(".smooth_scale")}
