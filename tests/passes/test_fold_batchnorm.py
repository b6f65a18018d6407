"""fold-batchnorm (FX only; the torch exporter folds an ONNX model's batch norms itself): the
graph before and after, numerical equivalence, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from afmc.capture import capture_module
from afmc.passes.fx.fold_batchnorm import FoldBatchNorm
from afmc.passes.layers import NOTES_KEY
from passes.conftest import assert_equivalent

aten = torch.ops.aten


class _ConvBN(nn.Module):
    """conv + BatchNorm2d + relu, linear + BatchNorm1d, conv1d + BatchNorm1d without affine."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.lin, self.bn1 = nn.Linear(5, 6), nn.BatchNorm1d(6)
        self.conv1, self.bn2 = nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4, affine=False)
        with torch.no_grad():
            for bn in (self.bn, self.bn1, self.bn2):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                if bn.affine:
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_()

    def forward(self, x, y, z):
        return torch.relu(self.bn(self.conv(x))), self.bn1(self.lin(y)), self.bn2(self.conv1(z))


def _bn_inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(3)
    return tuple(
        torch.randn(shape, generator=generator) for shape in ((2, 3, 8, 8), (4, 5), (2, 3, 9))
    )


def _check_outputs(program: fx.GraphModule, module: nn.Module, inputs: tuple) -> None:
    with torch.no_grad():
        for actual, expected in zip(program(*inputs), module(*inputs), strict=True):
            assert_equivalent(actual, expected)


def test_batchnorm_folds_into_conv_and_linear() -> None:
    torch.manual_seed(0)
    module, inputs = _ConvBN().eval(), _bn_inputs()
    program = capture_module(module, inputs).graph_module
    nodes = len(program.graph.nodes)

    assert FoldBatchNorm()(program).modified

    assert not program.graph.find_nodes(op="call_function", target=aten.batch_norm.default)
    # 3 BN nodes and their statistics (2 x 4 + 1 x 2 get_attr) go, conv gains a bias get_attr
    assert len(program.graph.nodes) == nodes - 3 - 10 + 1
    (conv,) = program.graph.find_nodes(op="call_function", target=aten.conv2d.default)
    assert conv.args[2].target == "conv.bias"
    assert [note["folded"] for note in program.meta[NOTES_KEY]] == [True] * 3
    assert module.conv.bias is None  # the FP module keeps its own parameters
    _check_outputs(program, module, inputs)


@pytest.mark.slow
def test_batchnorm_after_decompositions() -> None:
    torch.manual_seed(0)
    module, inputs = _ConvBN().eval(), _bn_inputs()
    program = torch.export.export(module, inputs).run_decompositions().module()

    assert FoldBatchNorm()(program).modified

    legit = aten._native_batch_norm_legit_no_training.default
    assert len(program.graph.find_nodes(op="call_function", target=legit)) == 1
    notes = {note["norm"]: note for note in program.meta[NOTES_KEY]}
    assert notes["bn"]["folded"] and notes["bn2"]["folded"]
    assert "addmm" in notes["bn1"]["reason"]  # linear decomposes to permute + addmm
    _check_outputs(program, module, inputs)


class _SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


@pytest.mark.parametrize("train", [False, True], ids=["shared-output", "training"])
def test_batchnorm_refusals(train: bool) -> None:
    module = _SharedConv().train(train)
    x = torch.randn(2, 3, 4, 4)
    program = capture_module(module, (x,)).graph_module

    assert not FoldBatchNorm()(program).modified

    (note,) = program.meta[NOTES_KEY]
    expected = "batch statistics" if train else "is also read by add"
    assert not note["folded"] and expected in note["reason"]
