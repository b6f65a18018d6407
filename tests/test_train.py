"""afmc train: the loss, schedule and data order, exact resume after SIGKILL, LoRA, and the
compile of a trained model with its learned input ranges."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from afmc.api import compile as compile_model
from afmc.capture.hf import load_causal_lm
from afmc.compiler.trained_model import RANGES_FILE, TRAINING_RECORD
from afmc.config import config_from_dict
from afmc.models import resolve_model_path
from afmc.train.analog_layer import analog_layers, convert_to_analog
from afmc.train.data import batch_indices, micro_batches
from afmc.train.tasks import distillation_loss
from afmc.train.trainer import polynomial_schedule, train

# the module fixtures are built once, on one worker (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group(__name__)

SMALL = {"seq_len": 32, "batch_size": 4, "range_init_batches": 1}


def _config(**training):
    return config_from_dict({"training": {**SMALL, **training}})


def test_distillation_loss_is_kl_plus_cross_entropy():
    """beta T^2 KL(teacher || student) + (1 - beta) CE, against a direct computation."""
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    ids = torch.randint(7, (2, 5), generator=gen)
    settings = _config(temperature=2.0, distill_weight=0.25).training
    p_t = torch.softmax(teacher / 2, -1)
    kl = (p_t * (torch.log_softmax(teacher / 2, -1) - torch.log_softmax(student / 2, -1)))
    log_p = torch.log_softmax(student[:, :-1], -1)
    ce = -log_p.gather(-1, ids[:, 1:, None]).mean()
    expected = 0.25 * 4 * kl.sum(-1).mean() + 0.75 * ce
    torch.testing.assert_close(distillation_loss(student, teacher, ids, settings), expected)
    same = distillation_loss(teacher, teacher, ids, _config().training)
    assert abs(float(same)) < 1e-6


def test_schedule_warms_up_then_decays_to_zero():
    factor = polynomial_schedule(_config(steps=1000, warmup=0.016, schedule_power=2.0).training)
    assert factor(0) == pytest.approx(1 / 16) and factor(15) == pytest.approx(1.0)
    assert factor(16) == pytest.approx(1.0)
    assert factor(508) == pytest.approx(0.25)
    assert factor(1000) == 0.0


def test_data_order_covers_every_sequence_once_per_epoch_and_splits_evenly():
    seen = np.concatenate([batch_indices(step, 4, 10, seed=3) for step in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert not np.array_equal(seen[:10], seen[10:20])
    assert np.array_equal(batch_indices(2, 4, 10, 3), seen[8:12])
    parts = [micro_batches(np.arange(8), 2, 2, rank) for rank in (0, 1)]
    assert [p.tolist() for p in parts[0]] == [[0, 1], [4, 5]]
    assert [p.tolist() for p in parts[1]] == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="multiple of grad_accumulation x processes"):
        micro_batches(np.arange(6), 2, 2, 0)


def _afmc(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from afmc.cli import app; app()", *args],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_args(out: Path, *extra: str) -> list[str]:
    sets = {"steps": 12, "checkpoint_every": 3, "seq_len": 64, "batch_size": 8,
            "range_init_batches": 2}
    return ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(out),
            *[f"--set=training.{k}={v}" for k, v in sets.items()], *extra]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path: Path):
    """A run killed with SIGKILL after a checkpoint, then --resume'd, ends with the same
    weights, input ranges and losses as an uninterrupted run with the same seed at the
    same thread count (one here, so the three processes share the test's cores; a resume
    at another count warns, see below)."""
    full = _afmc(*_train_args(tmp_path / "full"))
    killed_dir = tmp_path / "killed"
    killed = _afmc(*_train_args(killed_dir))
    pointer = killed_dir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not pointer.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / RANGES_FILE).exists()  # killed before the end
    resumed = _afmc(*_train_args(killed_dir, "--resume"))
    for process in (full, resumed):
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    record = json.loads((killed_dir / TRAINING_RECORD).read_text())
    assert 0 < record["resumed_from"] < 12
    reference = json.loads((tmp_path / "full" / TRAINING_RECORD).read_text())
    assert record["losses"] == reference["losses"]
    for name in ("model.safetensors", RANGES_FILE):
        a, b = load_file(killed_dir / name), load_file(tmp_path / "full" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), name
    _assert_weights_trained(killed_dir)


def _assert_weights_trained(out: Path) -> None:
    """Every analog weight and the embedding moved from the FP model's (full fine-tuning)."""
    before = load_causal_lm(resolve_model_path("afmc-tiny")).state_dict()
    after = load_file(out / "model.safetensors")
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight",
                "lm_head.weight", "model.embed_tokens.weight"):
        assert not torch.equal(after[key], before[key]), key


def test_resume_refuses_another_configuration(tmp_path: Path):
    train("afmc-tiny", "stdlib:train", tmp_path / "run", _config(steps=2, checkpoint_every=1))
    with pytest.raises(ValueError, match="training.learning_rate was 2e-05"):
        train("afmc-tiny", "stdlib:train", tmp_path / "run",
              _config(steps=2, checkpoint_every=1, learning_rate=1e-4), resume=True)
    with pytest.raises(FileExistsError, match="--resume continues"):
        train("afmc-tiny", "stdlib:train", tmp_path / "run", _config(steps=2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "ckpt"
    train("afmc-tiny", "stdlib:train", out,
          _config(steps=3, learning_rate=1e-3, range_learning_rate=0.05))
    return out


@pytest.fixture(scope="module")
def trained_smoothed(tmp_path_factory) -> Path:
    """Trained from the compiler's start: smoothed inputs, outlier split, searched ranges."""
    out = tmp_path_factory.mktemp("smoothed") / "ckpt"
    train("afmc-tiny", "stdlib:train", out,
          _config(steps=2, smoothing=True, split_outliers=True, range_init="search",
                  range_init_batches=5))
    return out


@pytest.mark.slow
def test_smoothing_and_search_start_where_compile_would(trained_smoothed: Path):
    """Scales are stored beside the ranges, one per group of layers reading the same
    activation (q/k/v share theirs); outlier counts within the budget; the ranges were
    searched, so no data initialisation ran."""
    ranges = load_file(trained_smoothed / RANGES_FILE)
    scales = {k: v for k, v in ranges.items() if k.endswith(".input_scale")}
    assert scales and all((v != 1).any() for v in scales.values())
    for layer in range(2):
        attention = f"model.layers.{layer}.self_attn."
        group = [scales.get(f"{attention}{p}_proj.input_scale") for p in "qkv"]
        assert all(s is None for s in group) or all(
            s is not None and torch.equal(s, group[0]) for s in group)
    some = next(iter(scales.values()))
    torch.testing.assert_close(some.log().mean(), torch.tensor(0.0), atol=1e-4, rtol=0)
    counts = {k: int(v) for k, v in ranges.items() if k.endswith(".outliers_per_slice")}
    assert counts and all(count in (1, 2, 4, 8, 16) for count in counts.values())
    model = load_causal_lm(trained_smoothed)
    moved = sum(count * model.get_submodule(k.removesuffix(".outliers_per_slice")).out_features
                for k, count in counts.items())  # afmc-tiny: one input slice per layer
    analog = sum(module.weight.numel() for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear))
    assert moved <= 0.01 * analog
    record = json.loads((trained_smoothed / TRAINING_RECORD).read_text())
    assert record["config"]["training"]["range_init"] == "search"


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["trained", "trained_smoothed"])
def test_trained_model_compiles_with_its_learned_ranges(fixture: str, request):
    """afmc compile CKPT: the learned ranges (and input scales), no calibration, and the
    compiled program equals the trained layers in eval mode (the inference semantics)."""
    trained = request.getfixturevalue(fixture)
    result = compile_model(trained, "aimc")
    passes = [step["name"] for step in result.record["passes"]]
    assert "learned-ranges" in passes and "calibrate" not in passes
    assert "fold-norms" not in passes and "smooth-inputs" not in passes
    _assert_weights_trained(trained)
    ranges = load_file(trained / RANGES_FILE)
    assert all(layer.calibrated == "learned" for layer in result.layers)
    model = load_causal_lm(trained)
    convert_to_analog(model, config_from_dict({}))
    for name, layer in analog_layers(model):
        layer.input_range.data = ranges[name]
        if name + ".input_scale" in ranges:
            layer.input_scale.copy_(ranges[name + ".input_scale"])
        if name + ".outliers_per_slice" in ranges:
            layer.outliers.fill_(int(ranges[name + ".outliers_per_slice"]))
    ids = torch.randint(256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(input_ids=ids, use_cache=False).logits
        program = result.program(ids)
    program = program[0] if isinstance(program, (tuple, list)) else program
    assert torch.equal(program, expected)
    if fixture == "trained_smoothed":
        split = {layer.name.removeprefix("lm."): layer.outliers_per_slice
                 for layer in result.layers if layer.outliers_per_slice}
        assert split == {k.removesuffix(".outliers_per_slice"): int(v)
                         for k, v in ranges.items() if k.endswith(".outliers_per_slice")}
        return
    recalibrated = compile_model(trained, "aimc", calibration="stdlib:calibration",
                                 recalibrate=True)
    assert "calibrate" in [step["name"] for step in recalibrated.record["passes"]]


@pytest.mark.slow
def test_trained_model_compiles_for_a_digital_target(trained: Path):
    """int4 (int8 takes the same digital lowering, tested on afmc-tiny elsewhere)."""
    result = compile_model(trained, "int4", calibration="stdlib:calibration")
    assert result.record["target"] == "int4"


@pytest.mark.slow
def test_compile_refuses_ranges_for_another_slicing(trained: Path):
    config = config_from_dict({"hardware": {"max_in": 64, "tile_rows": 64}})
    with pytest.raises(ValueError, match="learned ranges but .* input slices"):
        compile_model(trained, "aimc", config)


def test_lora_trains_adapters_and_ranges_and_merges(tmp_path: Path):
    """lora_rank > 0: the base weights change only by the merged adapters (low rank), the
    input ranges are learned, and the output is a plain Hugging Face directory."""
    out = tmp_path / "lora"
    train("afmc-tiny", "stdlib:train", out,
          _config(steps=3, lora_rank=2, learning_rate=1e-2, clip_sigma=0.0))
    before = load_causal_lm(resolve_model_path("afmc-tiny")).state_dict()
    after = load_file(out / "model.safetensors")
    assert not any("lora" in key for key in after)
    delta = after["model.layers.0.self_attn.q_proj.weight"] - before[
        "model.layers.0.self_attn.q_proj.weight"]
    assert delta.abs().max() > 0
    singular = torch.linalg.svdvals(delta.double())
    assert singular[2] < 1e-3 * singular[0]  # rank 2 up to float32 rounding of W + BA
    torch.testing.assert_close(after["model.norm.weight"], before["model.norm.weight"])
    assert load_file(out / RANGES_FILE).keys()


@pytest.mark.parametrize("args, message", [
    (["no-such-model", "--data", "stdlib:train"], "model not found: no-such-model"),
    (["afmc-tiny", "--data", "missing.txt"], "--data missing.txt: no such file or directory"),
    (["afmc-tiny", "--data", "stdlib:train", "--resume"], "no checkpoint to resume from"),
    (["afmc-tiny", "--data", "stdlib:train", "--set", "training.batch_size=6",
      "--set", "training.grad_accumulation=4"], "training: Value error, batch_size (6)"),
    (["afmc-tiny", "--data", "stdlib:train", "--device", "cuda:7"], "--device cuda:7"),
    (["afmc-tiny", "--data", "stdlib:train", "--steps", "-1"], "--steps must be at least 0"),
])
def test_train_command_rejects_bad_input_in_one_line(tmp_path: Path, args, message):
    from typer.testing import CliRunner

    from afmc.cli import app

    result = CliRunner().invoke(app, ["train", *args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {result.output.strip()[7:]}"]
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_time_budget_stops_after_a_step_and_writes_the_result(tmp_path: Path):
    result = train("afmc-tiny", "stdlib:train", tmp_path / "budget",
                   _config(steps=50, checkpoint_every=20), max_seconds=0.0)
    assert result.steps == 1
    record = json.loads((tmp_path / "budget" / TRAINING_RECORD).read_text())
    assert record["steps"] == 1 and record["planned_steps"] == 50
    assert (tmp_path / "budget" / "checkpoints" / "step-0000001").is_dir()


def _tied_llama() -> torch.nn.Module:
    """A one-layer Llama whose LM head is its embedding table (as SmolLM2's and
    Llama-3.2-1B's), with one outlier hidden channel that 2.5-sigma clipping cuts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=100, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 3] *= 40
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def test_a_tied_lm_head_is_untied_so_clipping_leaves_the_embedding_table():
    from afmc.train.analog_layer import clip_weights
    from afmc.train.trainer import build_student

    teacher = _tied_llama()
    table = teacher.model.embed_tokens.weight.detach().clone()
    student, untied = build_student(teacher, _config())
    assert untied == {"lm_head": "model.embed_tokens.weight"}
    assert student.config.tie_word_embeddings is False
    clip_weights(student, 2.5)
    torch.testing.assert_close(student.model.embed_tokens.weight, table, rtol=0, atol=0)
    head = student.lm_head.weight.detach()
    # the outlier column was clipped at 2.5 std of its row, about |outlier| / 3
    assert head.abs().max() < table.abs().max() / 2.5
    assert torch.equal(teacher.model.embed_tokens.weight, table)  # the teacher untouched


@pytest.mark.slow
def test_a_trained_tied_model_saves_and_loads_untied(tmp_path: Path):
    source = tmp_path / "tied"
    _tied_llama().save_pretrained(source)
    out = tmp_path / "run"
    train(source, "stdlib:train", out, _config(steps=1))
    record = json.loads((out / TRAINING_RECORD).read_text())
    assert record["untied"] == {"lm_head": "model.embed_tokens.weight"}
    loaded = load_causal_lm(out)
    assert loaded.config.tie_word_embeddings is False
    head, table = loaded.lm_head.weight, loaded.model.embed_tokens.weight
    assert head.data_ptr() != table.data_ptr()
    assert table[:, 3].abs().max() > 2.5 * head[:, 3].abs().max()  # only the head is clipped


@pytest.mark.slow
def test_gradient_checkpointing_replays_the_noise_and_changes_nothing(tmp_path: Path):
    """Weight noise on, ranges initialised from data in the first steps: the recompute of
    each block replays its noise and takes no statistics again, so losses, weights and
    ranges equal those of the run that keeps every activation."""
    settings = {"steps": 3, "range_init_batches": 2, "learning_rate": 1e-3}
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    train("afmc-tiny", "stdlib:train", plain, _config(**settings))
    train("afmc-tiny", "stdlib:train", checkpointed,
          _config(**settings, gradient_checkpointing=True))
    a = json.loads((plain / TRAINING_RECORD).read_text())["losses"]
    b = json.loads((checkpointed / TRAINING_RECORD).read_text())["losses"]
    np.testing.assert_allclose(b, a, rtol=1e-5)
    for name in ("model.safetensors", RANGES_FILE):
        x, y = load_file(plain / name), load_file(checkpointed / name)
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=1e-6, msg=key)


def test_bfloat16_training_keeps_float32_weights_and_ranges(tmp_path: Path):
    """training.dtype=bfloat16: the first loss (before any update, the same noise) is the
    float32 one to bfloat16's precision; the saved weights and ranges are float32 and
    trained."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        result = train("afmc-tiny", "stdlib:train", out,
                       _config(steps=2, learning_rate=1e-3, dtype=dtype))
        losses[dtype] = result.losses
    assert abs(losses["bfloat16"][0] - losses["float32"][0]) < 0.15 * losses["float32"][0]
    weights = load_file(tmp_path / "bfloat16" / "model.safetensors")
    assert all(value.dtype == torch.float32 for value in weights.values())
    assert all(value.dtype == torch.float32
               for value in load_file(tmp_path / "bfloat16" / RANGES_FILE).values())
    _assert_weights_trained(tmp_path / "bfloat16")


def test_zero_steps_write_the_prepared_start(tmp_path: Path):
    """training.steps=0: the control of what training adds: the prepared start (searched
    ranges, outlier counts) and the FP weights unchanged, compilable as a trained model."""
    out = tmp_path / "start"
    result = train("afmc-tiny", "stdlib:train", out,
                   _config(steps=0, split_outliers=True, range_init="search", clip_sigma=0.0))
    assert result.steps == 0 and result.losses == []
    before = load_causal_lm(resolve_model_path("afmc-tiny")).state_dict()
    after = load_file(out / "model.safetensors")
    assert all(torch.equal(after[key], before[key]) for key in after)
    ranges = load_file(out / RANGES_FILE)
    assert any(key.endswith(".outliers_per_slice") for key in ranges)
    searched = [value for key, value in ranges.items()
                if not key.endswith((".input_scale", ".outliers_per_slice"))]
    assert searched and all((value != 1).all() for value in searched)  # not the initial 1


def test_lora_noise_acts_on_the_effective_weight():
    """The weight noise of a LoRA layer scales with the row max of W + scaling B A, not
    of W: a row whose large weight comes from the adapters alone gets that noise."""
    from afmc.train.analog_layer import AnalogTrainingLinear

    config = _config(weight_noise=0.1, clip_sigma=0.0, range_init_batches=0, range_decay=0.0)
    layer = AnalogTrainingLinear(torch.nn.Linear(8, 2, bias=False), config.hardware,
                                 config.training)
    with torch.no_grad():
        layer.weight.fill_(1e-3)
    layer.add_lora(1, 1.0)
    with torch.no_grad():
        layer.lora_A.zero_()
        layer.lora_A[0, 0] = 1.0
        layer.lora_B.zero_()
        layer.lora_B[0, 0] = 0.5  # row 0 holds 0.5 at column 0: its max |w|
        layer.input_range.fill_(1.0)
    x = torch.full((1, 8), 0.5)  # on the DAC grid of range 1
    torch.manual_seed(0)
    layer.train()
    with torch.no_grad():
        out = torch.cat([layer(x) for _ in range(2000)])  # fresh noise every forward
    expected = 0.1 * 0.5 * 0.5 * math.sqrt(8)  # sum over 8 weights of N(0, 0.05^2) * 0.5
    assert out[:, 0].std().item() == pytest.approx(expected, rel=0.1)
    assert out[:, 1].std().item() < 0.01 * expected  # row 1: max |w| 1e-3


def test_lora_merge_writes_the_clipped_effective_weight():
    """merge_lora writes what the forward computed with: W + scaling B A, each row clamped
    to +-clip_sigma * std of that row (the rule of clip_weights)."""
    from afmc.train.analog_layer import AnalogTrainingLinear, merge_lora

    config = _config(clip_sigma=2.5)
    layer = AnalogTrainingLinear(torch.nn.Linear(64, 4, bias=False), config.hardware,
                                 config.training)
    layer.add_lora(2, 4.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(4, 2, generator=generator))
        layer.lora_A[:, 0] = 3.0  # column 0: an outlier in every row
        effective = layer.weight + 2.0 * layer.lora_B @ layer.lora_A
    bound = 2.5 * effective.std(dim=1)
    assert bool((effective.abs().amax(dim=1) > bound).any())  # the adapters cross the bound
    seen = layer.programmed_weight().detach()
    merge_lora(torch.nn.Sequential(layer))
    assert layer.lora_A is None and torch.equal(layer.weight, seen)
    assert bool((layer.weight.abs().amax(dim=1) <= bound + 1e-6).all())


def test_resume_with_another_thread_count_warns(tmp_path: Path):
    out = tmp_path / "run"
    train("afmc-tiny", "stdlib:train", out, _config(steps=2, checkpoint_every=1),
          max_seconds=0.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        with pytest.warns(UserWarning, match=f"used {threads} CPU threads, this one "
                                             f"{threads + 1}.*OMP_NUM_THREADS={threads}"):
            train("afmc-tiny", "stdlib:train", out, _config(steps=2, checkpoint_every=1),
                  resume=True)
    finally:
        torch.set_num_threads(threads)


def test_zero_steps_with_data_ranges_initialise_them_and_clip(tmp_path: Path):
    """kappa-std ranges (AFM's start) get their data initialisation, and the weights
    are clipped at clip_sigma as after a step: the original model, clipped, as a
    trained checkpoint (the control row of benchmarks/reproduce_afm.py)."""
    out = tmp_path / "clipped"
    train("afmc-tiny", "stdlib:train", out, _config(steps=0, range_init_batches=2,
                                                    clip_sigma=2.5))
    ranges = load_file(out / RANGES_FILE)
    assert all((value != 1).all() for value in ranges.values())
    after = load_file(out / "model.safetensors")
    weight = after["model.layers.0.mlp.down_proj.weight"]
    before = load_causal_lm(resolve_model_path("afmc-tiny")).state_dict()[
        "model.layers.0.mlp.down_proj.weight"]
    bound = 2.5 * before.std(dim=1, keepdim=True)
    torch.testing.assert_close(weight, before.clamp(-bound, bound))
