"""afmc's fused analog kernels (afmc.runtime.fused): chips give the stock bodies' outputs
bit for bit, the read noise is fresh standard-normal noise of the specified std, and
without the kernels everything runs as before."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from scipy import stats
from torch import nn

import afmc
from afmc.api import load
from afmc.config import load_config
from afmc.data.kv_cache import KVCacheSpec
from afmc.io.user_errors import KernelWarning
from afmc.ops.analog_linear_onnx import KERNEL_DOMAIN, PRE_SCALED
from afmc.runtime import fused
from afmc.runtime.analog import prepared_graph

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = [
    pytest.mark.skipif(not fused.enabled(), reason="no C++ compiler for the kernels"),
    pytest.mark.xdist_group(__name__),
]


@pytest.fixture(scope="module")
def tiny(compiled_tiny) -> Path:
    """afmc-tiny compiled for aimc (its layers have one slice each; shared, read only)."""
    return compiled_tiny.output


class Wide(nn.Module):
    """nn.Linear(1024, 64): four equal slices of 256 inputs at max_in=256."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1024, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    batches = [(torch.randn(16, 1024),) for _ in range(2)]
    return afmc.compile(Wide().eval(), "aimc", load_config(None, ["hardware.max_in=256"]),
                        example_inputs=batches[0], calibration=batches,
                        output=tmp_path_factory.mktemp("k") / "wide").output


def _both(out: Path, monkeypatch: pytest.MonkeyPatch, inputs: np.ndarray, **chip) -> tuple:
    """Chip outputs with the kernels and with the stock bodies (AFMC_KERNELS=0)."""
    model = load(out)
    monkeypatch.setenv("AFMC_KERNELS", "1")
    with_kernels = model.chip(**chip).run(inputs)
    monkeypatch.setenv("AFMC_KERNELS", "0")
    stock = model.chip(**chip).run(inputs)
    return with_kernels, stock


@pytest.mark.slow
def test_afmc_tiny_chip_is_bit_identical(tiny, monkeypatch):
    ids = np.random.default_rng(0).integers(0, 256, (2, 40), dtype=np.int64)
    for seed in (None, 3):
        with_kernels, stock = _both(tiny, monkeypatch, ids, seed=seed)
        np.testing.assert_array_equal(with_kernels, stock)


@pytest.mark.slow
def test_smoothing_scale_moves_into_the_dac(tiny):
    runtime = load(tiny).runtime
    layers = runtime._layers(None, runtime.noise, plan=runtime.plan)
    graph, _ = prepared_graph(runtime.graph, layers, fused=True)
    fused_nodes = [node for node in graph.graph.node if node.op_type == "FusedAnalogLinear"]
    pre_scaled = [node for node in fused_nodes if node.overload.endswith(PRE_SCALED)]
    muls = sum(node.op_type == "Mul" for node in graph.graph.node)
    stock_muls = sum(node.op_type == "Mul" for node in runtime.graph.graph.node)
    stock = runtime.graph.graph.node
    smoothed = {node.output[0] for node in stock
                if node.op_type == "Mul" and "smooth_scale" in node.input[1]}
    reads_smoothed = [node for node in stock
                      if node.op_type == "AnalogLinear" and node.input[0] in smoothed]
    assert len(fused_nodes) == 29 and len(pre_scaled) == len(reads_smoothed) > 0
    assert all("smooth_scale" in node.input[1] for node in pre_scaled)
    # a split layer's SparseOutliers kernel takes the same scale as its fourth input
    sparse_scaled = [node for node in graph.graph.node if node.op_type == "SparseOutliers"
                     and len(node.input) >= 4 and node.input[3]]
    assert sparse_scaled and all("smooth_scale" in node.input[3] for node in sparse_scaled)
    assert stock_muls - muls == len(smoothed)  # every smoothing Mul is gone


def _kernel_session(graph: onnx.GraphProto) -> ort.InferenceSession:
    """A session of `graph` (nodes of afmc's kernel domain) with the kernel library."""
    model = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 20), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    options = ort.SessionOptions()
    fused.register(options)
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def test_dac_against_numpy():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 5, 96)) * 40).astype(np.float32)
    x[0, 0, :4] = [0.5, 1.5, -2.5, 127.6]  # ties round to even; saturation
    pre = rng.uniform(0.5, 2.0, 96).astype(np.float32)
    pre[:4] = 1.0
    scale = np.repeat(np.array([1.0, 0.5, 2.0], np.float32), 32)
    scale[:4] = 1.0
    h_in = np.float32(127.0)
    node = helper.make_node("AnalogDAC", ["X", "S", "H", "P"], ["Q0", "Q1", "Q2"],
                            domain=KERNEL_DOMAIN)
    graph = helper.make_graph(
        [node], "dac", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 5, 96])],
        [helper.make_tensor_value_info(f"Q{i}", TensorProto.FLOAT, None) for i in range(3)],
        [numpy_helper.from_array(scale, "S"), numpy_helper.from_array(np.array(h_in), "H"),
         numpy_helper.from_array(pre, "P")])
    levels = np.concatenate(_kernel_session(graph).run(None, {"X": x}), axis=-1)
    expected = np.rint(np.clip((x * pre) * scale, -h_in, h_in))
    np.testing.assert_array_equal(levels, expected)
    assert list(levels[0, 0, :4]) == [0.0, 2.0, -2.0, 127.0]


def test_sparse_outliers_kernel_is_the_stock_body_bit_for_bit():
    """The kernel's SparseOutliers against the function body a stock onnxruntime runs:
    the same float32 sums in the same slot order, 3-D X with 70 rows (3 blocks)."""
    from afmc import ops
    from afmc.ops.sparse_outliers_onnx import slot_overload, sparse_outliers_function

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 35, 48)).astype(np.float32)
    indices = np.sort(rng.choice(48, (40, 6)), axis=1).astype(np.int64)
    values = rng.standard_normal((40, 6)).astype(np.float32)
    values[3] = 0.0  # a padded row

    def run(domain: str) -> np.ndarray:
        node = helper.make_node("SparseOutliers", ["X", "I", "V"], ["Y"], domain=domain)
        functions = []
        if domain == ops.DOMAIN:
            node.overload = slot_overload(6)
            functions = [sparse_outliers_function(20, 6)]
        graph = helper.make_graph(
            [node], "sparse", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(indices, "I"), numpy_helper.from_array(values, "V")])
        model = helper.make_model(graph, ir_version=10, functions=functions, opset_imports=[
            helper.make_opsetid("", 20), helper.make_opsetid(domain, 1)])
        options = ort.SessionOptions()
        if domain == KERNEL_DOMAIN:
            fused.register(options)
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {"X": x})[0]

    kernel, stock = run(KERNEL_DOMAIN), run(ops.DOMAIN)
    np.testing.assert_array_equal(kernel, stock)
    expected = np.einsum("bsnm,nm->bsn", x[..., indices.reshape(-1)].reshape(2, 35, 40, 6),
                         values)
    np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-5)
    # with a pre_scale (a smoothing Mul absorbed): the stock body on X * pre_scale
    pre = rng.uniform(0.5, 2.0, 48).astype(np.float32)
    node = helper.make_node("SparseOutliers", ["X", "I", "V", "P"], ["Y"],
                            domain=KERNEL_DOMAIN)
    graph = helper.make_graph(
        [node], "scaled", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(indices, "I"), numpy_helper.from_array(values, "V"),
         numpy_helper.from_array(pre, "P")])
    scaled = _kernel_session(graph).run(None, {"X": x})[0]
    x = x * pre
    np.testing.assert_array_equal(scaled, run(ops.DOMAIN))


def test_sparse_outliers_kernel_adds_its_addend_as_the_add_it_replaces():
    """With an addend (the analog output it joins), the kernel writes Add(addend, sparse)
    bit for bit, whether onnxruntime lets it write over the addend (an intermediate read
    by it alone) or not (a graph input), with and without a pre_scale."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 37, 50)).astype(np.float32)
    base = rng.standard_normal((3, 37, 19)).astype(np.float32)
    indices = rng.integers(0, 50, (19, 5)).astype(np.int64)
    values = rng.standard_normal((19, 5)).astype(np.float32)
    pre = rng.uniform(0.5, 2.0, 50).astype(np.float32)
    scaled = x * pre
    stock = np.zeros(base.shape, np.float32)
    for slot in range(5):  # the stock body's order: slot by slot from 0
        stock = stock + scaled[..., indices[:, slot]] * values[:, slot]
    for intermediate in (False, True):
        addend = "A2" if intermediate else "A"
        nodes = [helper.make_node("Neg", ["A"], ["A1"]), helper.make_node("Neg", ["A1"], ["A2"])]
        node = helper.make_node("SparseOutliers", ["X", "I", "V", "P", addend], ["Y"],
                                domain=KERNEL_DOMAIN)
        graph = helper.make_graph(
            [*nodes, node] if intermediate else [node], "added",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape),
             helper.make_tensor_value_info("A", TensorProto.FLOAT, base.shape)],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(indices, "I"), numpy_helper.from_array(values, "V"),
             numpy_helper.from_array(pre, "P")])
        np.testing.assert_array_equal(
            _kernel_session(graph).run(None, {"X": x, "A": base})[0], base + stock)


@pytest.mark.slow
def test_chips_run_the_sparse_path_on_the_kernel(tiny):
    runtime = load(tiny).runtime
    layers = runtime._layers(None, runtime.noise, plan=runtime.plan)
    graph, _ = prepared_graph(runtime.graph, layers, fused=True)
    sparse = [node for node in graph.graph.node if node.op_type == "SparseOutliers"]
    assert sparse and all(node.domain == KERNEL_DOMAIN for node in sparse)
    # each joins its layer's analog output itself: one Add per split layer is gone
    producers = {out: node for node in graph.graph.node for out in node.output}
    assert all(producers[node.input[4]].op_type.startswith("Fused") for node in sparse)
    adds = sum(node.op_type == "Add" for node in graph.graph.node)
    assert adds == sum(node.op_type == "Add" for node in runtime.graph.graph.node) - len(sparse)


def test_multi_slice_layer_is_bit_identical(wide, monkeypatch):
    record = load(wide).record
    assert [len(layer["slice_sizes"]) for layer in record["layers"]
            if layer.get("onnx_weight")] == [4]
    x = (np.random.default_rng(1).standard_normal((33, 1024)) * 2).astype(np.float32)
    with_kernels, stock = _both(wide, monkeypatch, x, seed=5)
    np.testing.assert_array_equal(with_kernels, stock)
    assert np.count_nonzero(stock) > stock.size // 2


def test_read_noise_matches_stock_in_spread_and_is_fresh(wide, monkeypatch):
    x = np.random.default_rng(2).standard_normal((64, 1024)).astype(np.float32)
    model = load(wide)
    clean = model.chip(5).run(x)
    spreads = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("AFMC_KERNELS", setting)
        chip = model.chip(5, read_noise=0.04)
        runs = np.stack([chip.run(x) for _ in range(12)])
        spreads[setting] = float(np.std(runs - clean))
        if setting == "1":
            assert not np.array_equal(runs[0], runs[1])
            assert abs(float(np.mean(runs - clean))) < 0.05 * spreads[setting]
    assert spreads["1"] == pytest.approx(spreads["0"], rel=0.05)


def _noise_session(rows: int, columns: int, sigma: float) -> ort.InferenceSession:
    """One NoisyAnalogADC with one slice: y = round(z + sigma * N(0, 1)) / sigma (h_out
    far out of reach), so y - z / sigma is the unit normal to within 0.5 / sigma."""
    constants = [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in
                 (("h_out", 1e9), ("sigma", sigma), ("step", np.full(columns, 1 / sigma)))]
    node = helper.make_node("NoisyAnalogADC", ["h_out", "sigma", "Z", "step"], ["Y"],
                            domain=KERNEL_DOMAIN)
    graph = helper.make_graph(
        [node], "noise", [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [rows, columns])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, columns])], constants)
    model = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 20), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    fused.register(options)
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def test_read_noise_is_standard_normal():
    sigma, rows, columns = 2000.0, 1000, 300  # several parallel chunks
    session = _noise_session(rows, columns, sigma)
    z = np.zeros((rows, columns), np.float32)
    first, second = (session.run(None, {"Z": z})[0].ravel().astype(np.float64)
                     for _ in range(2))
    n = first.size
    assert abs(first.mean()) < 5 / np.sqrt(n)
    assert first.std() == pytest.approx(1.0, abs=5 * np.sqrt(2 / n))
    assert stats.kstest(first, "norm").pvalue > 1e-4
    assert stats.kurtosis(first) == pytest.approx(0.0, abs=0.05)
    assert np.mean(np.abs(first) > 3) == pytest.approx(2 * stats.norm.sf(3), rel=0.15)
    # Fresh on every run, independent between runs and between the parallel chunks.
    assert abs(np.corrcoef(first, second)[0, 1]) < 5 / np.sqrt(n)
    halves = first.reshape(2, -1)
    assert abs(np.corrcoef(halves[0], halves[1])[0, 1]) < 5 / np.sqrt(n / 2)
    # Another session (another kernel) draws another stream.
    third = _noise_session(rows, columns, sigma).run(None, {"Z": z})[0].ravel()
    assert not np.array_equal(first, third)


def test_noise_std_scales_and_adds_to_the_levels():
    sigma = 4.0
    session = _noise_session(500, 200, sigma)
    z = np.full((500, 200), 3.0 * sigma, np.float32)  # level 12: y = 3 + N(0,1) rounded
    y = session.run(None, {"Z": z})[0].astype(np.float64)
    assert y.mean() == pytest.approx(3.0, abs=0.01)
    # round(12 + 4 g) / 4: variance 1 + (1/4)^2 / 12 (the rounding, nearly uniform)
    assert y.var() == pytest.approx(1 + 1 / 16 / 12, rel=0.02)


@pytest.mark.slow
def test_fallback_without_kernels_and_stock_file(tiny, monkeypatch):
    ids = np.random.default_rng(3).integers(0, 256, (1, 16), dtype=np.int64)
    monkeypatch.setenv("AFMC_KERNELS", "0")
    assert not fused.enabled()
    expected = load(tiny).chip(2).run(ids)
    # The file afmc wrote runs in a stock onnxruntime, without the kernels' domain.
    model = onnx.load(str(tiny / "model.onnx"), load_external_data=False)
    assert KERNEL_DOMAIN not in {o.domain for o in model.opset_import}
    session = ort.InferenceSession(str(tiny / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids} | KVCacheSpec.from_json(load(tiny).record["kv_cache"]).empty(1)
    names = {i.name for i in session.get_inputs()}
    plain = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    stored = load(tiny).chip(None).run(ids)
    np.testing.assert_array_equal(plain, stored)
    assert expected.shape == plain.shape


@pytest.mark.slow
def test_failed_build_warns_once_and_falls_back(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("AFMC_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    fused.library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not fused.enabled()
            assert not fused.enabled()
            ids = np.arange(8, dtype=np.int64)[None]
            assert load(tiny).chip(1).run(ids).shape == (1, 8, 256)
        assert [w.category for w in caught if issubclass(w.category, KernelWarning)] \
            == [KernelWarning]
    finally:
        fused.library.cache_clear()


@pytest.mark.parametrize(("shape", "sizes", "per_slice", "scale"), [
    ((300, 700), [256, 256, 188], True, 1.0),  # unequal slices
    ((64, 512), [256, 256], False, 1.0),  # one scaling block per row
    ((96, 1024), [256] * 4, True, 2.0),  # pcm_scale 2
])
def test_programming_kernels_equal_numpy(shape, sizes, per_slice, scale, monkeypatch):
    """The pcm model and the prepared form on the programming kernels (runtime.fused.
    programming) give numpy's numbers bit for bit, all-zero rows included."""
    from afmc.ops.analog_linear_onnx import prepare_weights
    from afmc.runtime.fused import programming
    from afmc.runtime.noise import NoiseConfig, layer_rng, program_prepared, program_weights

    weight = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    weight[3] = 0.0
    config = NoiseConfig(model="pcm", per_slice=per_slice, pcm_scale=scale)
    attributes = {"out_res": 254.0, "inp_res": 254.0, "out_bound": 12.0}
    slices = len(sizes) if len(set(sizes)) == 1 else 1
    fast = program_weights(weight, sizes, config, layer_rng(1, 2))
    fast_prepared = program_prepared(weight, sizes, config, layer_rng(1, 2), slices, attributes)
    fast_prepare = programming.prepare(fast, slices, attributes)
    monkeypatch.setenv("AFMC_KERNELS", "0")
    assert not programming.available()
    assert program_prepared(weight, sizes, config, layer_rng(1, 2), slices,
                            attributes) is None
    slow = program_weights(weight, sizes, config, layer_rng(1, 2))
    np.testing.assert_array_equal(fast, slow)
    assert np.all(slow[3] == 0) and not np.array_equal(slow, weight)
    expected = prepare_weights(slow, slices, **attributes)
    for got in (fast_prepared, fast_prepare):
        for got_part, want_part in zip([*got[0], *got[1]], [*expected[0], *expected[1]],
                                       strict=True):
            np.testing.assert_array_equal(got_part, want_part)


def test_chip_programmed_by_kernels_equals_numpy(wide, monkeypatch):
    """A whole chip programmed on the kernels equals the chip programmed in numpy."""
    from afmc.runtime.fused import programming

    x = np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)
    assert programming.available()
    fast = load(wide).chip(7).run(x)
    monkeypatch.setattr(programming, "available", lambda: False)
    monkeypatch.setattr(programming, "_library", lambda: None)
    np.testing.assert_array_equal(load(wide).chip(7).run(x), fast)
