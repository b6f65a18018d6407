"""Small models built inline for the tests, and the helpers that run them.

- ONNX models of one afmc analog linear node, for the op tests (`analog_linear_model`);
- ONNX graphs of standard ops built with onnx.helper (`onnx_graph`, `run_onnx`), for the
  front-end tests and the ONNX pass tests (tests/passes/);
- small torch modules and their batches (`LayerNormMLP`, `TwoInputMLP`), for the FX pass
  tests and the compiles of both front ends;
- the tiny Llama exported to ONNX and compiled both ways, once per process
  (`exported_llama`, `compiled_llama`), for the tests that compare the two paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_model
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import afmc.ops

OPSET = 20
FLOAT = TensorProto.FLOAT
RES = 254.0  # the default hardware's DAC and ADC resolutions
BOUND = 14.0  # and output bound


def analog_linear_model(
    sizes: Sequence[int], out_features: int, rank: int = 2, noisy: bool = False, **attributes
) -> onnx.ModelProto:
    """X -> [SliceInput] -> afmc.(Noisy)AnalogLinear <- [SliceInput] <- W, with input_range R."""
    k = sum(sizes)
    nodes = []
    x_name, w_name = "X", "W"
    if len(set(sizes)) > 1:
        nodes += [
            helper.make_node("SliceInput", ["X"], ["Xs"], domain="afmc", slice_sizes=list(sizes)),
            helper.make_node("SliceInput", ["W"], ["Ws"], domain="afmc", slice_sizes=list(sizes)),
        ]
        x_name, w_name = "Xs", "Ws"
    op_type = "NoisyAnalogLinear" if noisy else "AnalogLinear"
    nodes.append(
        helper.make_node(op_type, [x_name, w_name, "R"], ["Y"], domain="afmc", **attributes)
    )
    lead = [f"d{i}" for i in range(rank - 1)]
    graph = helper.make_graph(
        nodes,
        "analog_linear",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [*lead, k]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [out_features, k]),
            helper.make_tensor_value_info("R", TensorProto.FLOAT, [len(sizes)]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [*lead, out_features])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("afmc", 1)],
        functions=afmc.ops.function_protos({node.op_type for node in nodes}, OPSET),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def analog_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


# ------------------------------------------------------------------ ONNX graphs


def onnx_graph(
    nodes: list,
    inputs: dict[str, list],
    outputs: list[str],
    initializers: dict[str, np.ndarray],
    opset: int = OPSET,
) -> ir.Model:
    """A float32 model of `nodes` (onnx.helper nodes), its inputs by name and shape, its
    outputs by name, and its initializers (float arrays stored as float32)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, FLOAT, None) for name in outputs],
        [numpy_helper.from_array(_array(value), name) for name, value in initializers.items()],
    )
    return ir.from_proto(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    )


def _array(value: np.ndarray | float) -> np.ndarray:
    array = np.asarray(value)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def run_onnx(model: ir.Model | onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on ONNX Runtime (CPU)."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def op_types(model: ir.Model) -> list[str]:
    """The op types of the main graph's nodes, in order."""
    return [node.op_type for node in model.graph]


def relu_mlp_graph(w1: np.ndarray, w2: np.ndarray, batch: int | str = "batch"
                   ) -> ir.Model:
    """x [batch, K] -> MatMul w1 (fc1) -> Relu -> MatMul w2 (fc2) -> y."""
    return onnx_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2"),
        ],
        {"x": [batch, w1.shape[0]]},
        ["y"],
        {"w1": w1, "w2": w2},
    )


def random_weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """A float32 weight of `shape`, standard normal over sqrt(shape[0])."""
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def adc_steps(weight: np.ndarray, ranges: np.ndarray, sizes: list[int]) -> np.ndarray:
    """One ADC step per slice, summed, per output channel of an [N, K] weight."""
    parts = np.split(weight, np.cumsum(sizes)[:-1], axis=1)
    return sum(
        2 * BOUND * r * np.abs(p).max(axis=1) / RES for r, p in zip(ranges, parts, strict=True)
    )


# ------------------------------------------------------------------ torch modules


class UpDownMLP(nn.Module):
    """16 -> 32 -> ReLU -> 4, seeded: two analog layers named up and down."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class LayerNormMLP(nn.Module):
    """fc1 (20 -> 36) -> ReLU -> LayerNorm -> fc2 (36 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 36)
        self.norm = nn.LayerNorm(36)
        self.fc2 = nn.Linear(36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(torch.relu(self.fc1(x))))


def mlp_batches(count: int = 3) -> list[torch.Tensor]:
    """`count` seeded batches [4, 20] for LayerNormMLP."""
    generator = torch.Generator().manual_seed(11)
    return [torch.randn(4, 20, generator=generator) for _ in range(count)]


class TwoInputMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(24, 40)
        self.second = nn.Linear(40 + 8, 6)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.second(torch.cat([torch.relu(self.first(x)), extra], dim=-1))


def two_input_data(samples: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs (x [samples, 24] with std 3, extra [samples, 8]) of TwoInputMLP."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(samples, 24, generator=generator) * 3,
            torch.randn(samples, 8, generator=generator))


# ------------------------------------------------------------------ compiles


def compile_onnx(path, target="aimc", config=None, batches=None, output=None, **options):
    """afmc.compile on an ONNX file, with the calibration batches in the 4th place."""
    from afmc.api import compile as afmc_compile

    return afmc_compile(path, target, config, calibration=batches, output=output, **options)


_PROCESS_CACHE: dict[str, object] = {}  # what two modules of one worker share (below)


def exported_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama exported to ONNX (ROOT/llama.onnx), once per process: the modules
    that read it (their fixtures call this) share one export."""
    if "llama.onnx" not in _PROCESS_CACHE:
        from afmc.capture import capture_causal_lm
        from afmc.compiler.onnx_export import export_onnx

        root = tmp_path_factory.mktemp("llama")
        captured = capture_causal_lm(tiny_model("llama"))
        export_onnx(captured, root / "llama.onnx")
        _PROCESS_CACHE["captured llama"] = captured
        _PROCESS_CACHE["llama.onnx"] = root / "llama.onnx"
    return _PROCESS_CACHE["llama.onnx"]


def compiled_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny Llama compiled by the torch path (ROOT/torch) and, from its ONNX export
    (ROOT/llama.onnx), by afmc.compile (ROOT/onnx), without chip smoothing, calibration
    method max; once per process."""
    if "compiled llama" not in _PROCESS_CACHE:
        from afmc.api import compile as afmc_compile
        from afmc.config import load_config
        from afmc.data.tokenizer import ByteTokenizer

        path = exported_llama(tmp_path_factory)
        root = path.parent
        ids = [np.random.default_rng(i).integers(0, 256, (2, 24)) for i in range(2)]
        config = load_config(None, ["hardware.max_in=40", "calibration.method=max"])
        afmc_compile(
            _PROCESS_CACHE["captured llama"],
            "aimc",
            config,
            calibration=[(torch.from_numpy(i),) for i in ids],
            output=root / "torch",
            skip=["chip-smooth-inputs"],  # the ONNX path smooths by a Mul, not into U's rows
        )
        compile_onnx(
            path,
            "aimc",
            config,
            [{"input_ids": i} for i in ids],
            root / "onnx",
            tokenizer=ByteTokenizer(),
            skip=["onnx-chip-smooth-inputs"],
        )
        _PROCESS_CACHE["compiled llama"] = (root / "torch", root / "onnx")
    return _PROCESS_CACHE["compiled llama"]
