"""afmc train: hardware-aware training of a causal LM by distillation (the AFM recipe).

Rule of one optimizer step (configuration section ``training``):
- the global batch (batch_size sequences, afmc.train.data.batch_indices) is split
  into grad_accumulation micro-batches, each shared among the processes;
- the student is the model with its analog-placed nn.Linear layers in training
  mode (afmc.train.analog_layer: weight noise, learned input ranges, DAC/ADC with
  straight-through gradients), optionally with LoRA adapters on the effective
  crossbar weight W + B A (noise, quantization and clipping act on it);
- loss = beta * T^2 * KL(teacher || student) at temperature T + (1 - beta) *
  next-token cross-entropy, the teacher being the original FP model;
- before the first step, optionally (training.smoothing, training.range_init =
  search) the student starts where compile would put it (afmc.train.prepare);
- AdamW (weights: learning_rate, weight_decay; input ranges: no decay, each layer's
  at range_learning_rate times its mean range, a relative rate), gradient-norm
  clipping, a linear warm-up over the first `warmup`
  share of the steps then polynomial decay to 0, and after the step every analog
  weight row is clipped to +-clip_sigma * std(row);
- training.dtype=bfloat16 holds the teacher in bfloat16 and runs the student's
  forward under bfloat16 autocast (weights, gradients, optimizer state, ranges and
  the loss stay float32); training.gradient_checkpointing recomputes each decoder
  block in the backward (the same noise; no statistics taken twice).

Under torchrun the student is wrapped in DistributedDataParallel (gloo on CPU,
nccl on CUDA), or with training.engine=fsdp sharded by FSDP2 (afmc.train.engine);
input-range initialisation statistics are reduced over all
processes, so every process holds the same weights and ranges. The result in
OUT is a Hugging Face directory (the trained weights, LoRA merged) plus the
learned input ranges (afmc_ranges.safetensors, by module name) and the training
record (afmc_training.json); ``afmc compile OUT`` compiles it with those ranges.
OUT may not be, hold or lie inside the model or the training data, nor be the
current directory (afmc.io.output_dir.check_output; checked before any work).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from afmc.compiler.frontends.onnx_graph import is_onnx_file
from afmc.compiler.trained_model import RANGES_FILE, TRAINING_RECORD
from afmc.config import AfmcConfig, TrainingConfig, config_from_dict
from afmc.io.output_dir import check_output
from afmc.models import model_paths
from afmc.train import checkpoint
from afmc.train.analog_layer import (
    analog_layers,
    apply_range_decay,
    clip_weights,
    merge_lora,
)
from afmc.train.data import batch_indices, micro_batches
from afmc.train.engine import Engine, check_engine, make_engine
from afmc.train.prepare import needs_preparation, prepare_student
from afmc.train.tasks import (
    CausalLMTask,
    OnnxTask,
    TrainingTask,
    convert_causal_lm,
)

# Options that may change between a run and its resume without changing its result.
_RESUMABLE_CHANGES = ("training.checkpoint_every",)

Progress = Callable[[int, int, float, float], None]  # step, steps, loss, tokens or samples/s


@dataclass
class TrainResult:
    """What train() returns."""

    output: Path
    steps: int
    seen: int  # tokens (a causal LM) or samples (an ONNX model) trained on in this run
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    unit: str = "tokens"


def polynomial_schedule(settings: TrainingConfig) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then (1 - progress)^power down to 0."""
    warmup = round(settings.warmup * settings.steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        remaining = (settings.steps - step) / max(1, settings.steps - warmup)
        return max(0.0, remaining) ** settings.schedule_power

    return factor


def build_student(teacher: nn.Module, config: AfmcConfig,
                  task: TrainingTask | None = None) -> tuple[nn.Module, dict[str, str]]:
    """A trainable copy of `teacher` with its analog layers converted (and LoRA adapters),
    and the analog layers untied from a shared parameter ({layer: parameter}). `task`
    converts the layers (default: a causal LM's analog-placed nn.Linear modules)."""
    student = copy.deepcopy(teacher)
    for parameter in student.parameters():  # the teacher's are frozen
        parameter.requires_grad_(parameter.is_floating_point())
    untied = task.convert(student, config) if task else convert_causal_lm(student, config)
    settings = config.training
    if settings.lora_rank > 0:
        student.requires_grad_(False)
        for _, layer in analog_layers(student):
            layer.add_lora(settings.lora_rank, settings.lora_alpha)
            layer.input_range.requires_grad_(True)
    return student.train(), untied


def build_optimizer(student: nn.Module, settings: TrainingConfig) -> torch.optim.AdamW:
    """AdamW: one group of the trainable weights (learning_rate, weight_decay), then one
    group per analog layer of its input ranges (no decay; learning rates set every step
    by set_range_learning_rates)."""
    layers = [layer for _, layer in analog_layers(student)]
    ranges = {id(layer.input_range) for layer in layers}
    weights = [p for p in student.parameters() if p.requires_grad and id(p) not in ranges]
    return torch.optim.AdamW(
        [{"params": weights, "lr": settings.learning_rate,
          "weight_decay": settings.weight_decay}]
        + [{"params": [layer.input_range], "lr": settings.range_learning_rate,
            "weight_decay": 0.0} for layer in layers],
        betas=settings.betas, eps=settings.eps)


@torch.no_grad()
def set_range_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Before each step: the learning rate of a layer's ranges is range_learning_rate times
    the schedule's `factor` times the layer's mean |range|. Adam's step is about its
    learning rate whatever the gradient's scale, so each range moves by about
    range_learning_rate of its own value per step: ranges of 0.5 and of 20 learn alike."""
    for group in optimizer.param_groups[1:]:
        (ranges,) = group["params"]
        group["lr"] = group["initial_lr"] * factor * float(ranges.abs().mean())


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) of this process; joins the torchrun group if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return dist.get_rank(), world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_resume_config(saved: dict[str, Any], config: AfmcConfig, folder: Path) -> None:
    before = _flatten(config_from_dict(saved).model_dump(mode="json"))
    now = _flatten(config.model_dump(mode="json"))
    for key in sorted(before):
        if key not in _RESUMABLE_CHANGES and before[key] != now.get(key):
            raise ValueError(f"{folder}: {key} was {before[key]!r} in the interrupted run, now "
                             f"{now.get(key)!r}; resume with the same configuration")


class ResumeThreadsWarning(UserWarning):
    """A resume with another CPU thread count than the interrupted run's."""


def _check_resume_threads(threads: int | None, folder: Path) -> None:
    """Warn when this process computes with another thread count than the run that wrote
    `folder`: CPU kernels then sum in another order (measured: losses equal to about
    1e-9, not bit for bit), so the result is not exactly an uninterrupted run's."""
    if threads is not None and threads != torch.get_num_threads():
        warnings.warn(ResumeThreadsWarning(
            f"{folder}: the interrupted run used {threads} CPU threads, this one "
            f"{torch.get_num_threads()}; the result may differ from an uninterrupted run in "
            f"the last bits (set OMP_NUM_THREADS={threads} for an exact resume)"), stacklevel=3)


def _prepare_output(output: Path, resume: bool, force: bool, rank: int, world: int) -> None:
    exists = output.exists() and any(output.iterdir())
    if resume and checkpoint.latest_checkpoint(output) is None:
        raise FileNotFoundError(f"{output}: no checkpoint to resume from")
    if exists and not (resume or force):
        raise FileExistsError(f"{output} exists; --resume continues its training, --force "
                              "starts over")
    _barrier(world)
    if rank == 0:
        if force and not resume and output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True, exist_ok=True)
    _barrier(world)


def train(model: str | Path, data: str | Path, output: str | Path,
          config: AfmcConfig | None = None, *, resume: bool = False, force: bool = False,
          device: str = "cpu", progress: Progress | None = None,
          max_seconds: float | None = None) -> TrainResult:
    """Hardware-aware training of `model` on `data` into `output` (see the module docstring).

    `model`: afmc-tiny, a Hugging Face directory or a GGUF file; `data`: an afmc synth
    directory, a text file or stdlib:train. `resume` continues from the newest checkpoint
    in `output` and ends with the weights an uninterrupted run would have. `max_seconds`
    is a time budget: training stops after the first step that ends past it (the schedule
    stays the one of training.steps), checkpoints and writes the result as at the end.
    """
    check_output(output, [*model_paths(model), Path(str(data))])
    config = config or AfmcConfig()
    settings = config.training
    rank, world, device = _distributed(device)
    check_engine(settings.engine, world)
    output = Path(output)
    task = open_task(model, data, config, device)
    teacher = task.teacher
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    _check_micro_batches(task, settings, world)
    _prepare_output(output, resume, force, rank, world)
    # every process builds the student alike where it is sharded, not broadcast (fsdp)
    sharded = settings.engine == "fsdp"
    torch.manual_seed(settings.seed * 1000 + (0 if sharded else rank))
    student, untied = build_student(teacher, config, task)
    if sharded and rank:
        torch.manual_seed(settings.seed * 1000 + rank)
    student = student.to(device)
    if settings.gradient_checkpointing:
        _checkpoint_blocks(student)
    autocast = _autocast(settings.dtype, device)
    step, losses, training_state = 0, [], None
    if resume:
        folder = checkpoint.latest_checkpoint(output)
        training_state, state = checkpoint.restore(folder, student)
        _check_resume_config(state["config"], config, folder)
        checkpoint.load_rng(folder, rank)
        step, losses = state["step"], state["losses"]
        _check_resume_threads(state.get("threads"), folder)
    elif needs_preparation(config):
        prepare_student(student, task, config, device)
    if settings.steps == 0:
        _start_only(student, task, settings, device)
    resumed_from = step
    if settings.dtype == "bfloat16":  # once the student's start is taken from it in float32
        teacher.to(torch.bfloat16)
    engine = make_engine(student, settings.engine, world)  # fsdp replaces the parameters
    optimizer = build_optimizer(student, settings)
    schedule = polynomial_schedule(settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if training_state is not None:
        engine.load_optimizer_state(optimizer, training_state["optimizer"])
        scheduler.load_state_dict(training_state["scheduler"])
    trainable = [p for p in student.parameters() if p.requires_grad]
    started, units = time.perf_counter(), 0
    while step < settings.steps:
        indices = batch_indices(step, settings.batch_size, task.count, settings.seed)
        parts = micro_batches(indices, settings.grad_accumulation, world, rank)
        step_loss = torch.zeros((), dtype=torch.float64)
        for index, part in enumerate(parts):
            batch = task.batch(part, device)
            with torch.no_grad():
                teacher_outputs = task.outputs(teacher, batch).float()
            with engine.sync(index == len(parts) - 1):
                with autocast:
                    outputs = task.outputs(engine.module, batch)
                loss = task.loss(outputs.float(), teacher_outputs, batch,
                                 settings) / len(parts)
                loss.backward()
            step_loss += loss.detach().double().cpu()
        engine.after_backward()
        apply_range_decay(student, settings.range_decay, settings.range_min_unclipped)
        if settings.grad_clip > 0:
            engine.clip_grad_norm(trainable, settings.grad_clip)
        set_range_learning_rates(optimizer, schedule(step))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clip_weights(student, settings.clip_sigma)
        step += 1
        if world > 1:
            dist.all_reduce(step_loss)
            step_loss /= world
        losses.append(float(step_loss))
        units += settings.batch_size * task.per_sample
        if progress is not None and rank == 0:
            progress(step, settings.steps, losses[-1], units / (time.perf_counter() - started))
        out_of_time = max_seconds is not None and _elapsed(started, world) > max_seconds
        if step % settings.checkpoint_every == 0 or step == settings.steps or out_of_time:
            _checkpoint(output, step, engine, optimizer, scheduler, losses, config, str(data),
                        rank, world)
        if out_of_time:
            break
    seconds = time.perf_counter() - started
    host = engine.host()
    if rank == 0:
        _save_result(host, task, output, config, {
            "source": str(model), "data": str(data), "steps": step, "processes": world,
            "planned_steps": settings.steps,
            task.unit: step * settings.batch_size * task.per_sample,
            "losses": losses, "seconds_this_run": seconds, "resumed_from": resumed_from,
            "untied": untied,
        })
    _barrier(world)
    return TrainResult(output, step, units, seconds, losses, resumed_from, task.unit)


def open_task(model: str | Path, data: str | Path, config: AfmcConfig,
              device: str) -> TrainingTask:
    """The training task of `model`: an ONNX file's, else a causal LM's."""
    if is_onnx_file(model):
        return OnnxTask(model, data, config, device)
    return CausalLMTask(model, data, config.training, device)


def _check_micro_batches(task: TrainingTask, settings: TrainingConfig, world: int) -> None:
    """A model that fixes its batch size B takes micro-batches of exactly B samples."""
    size = settings.batch_size // (settings.grad_accumulation * world)
    if task.micro_size is not None and size != task.micro_size:
        raise ValueError(f"training.batch_size ({settings.batch_size}) / (grad_accumulation x "
                         f"processes) = {size}, but the model takes batches of exactly "
                         f"{task.micro_size}: set training.batch_size to {task.micro_size} "
                         "times grad_accumulation x processes")


@torch.no_grad()
def _start_only(student: nn.Module, task: TrainingTask, settings: TrainingConfig,
                device: str) -> None:
    """training.steps = 0, the control of what training adds: the student as its first
    step would find it, with no update: input ranges still to be initialised from data
    (kappa-std) get their range_init_batches forwards over the first batches, then the
    weights are clipped as after a step."""
    for step in range(settings.range_init_batches if settings.range_init == "kappa-std" else 0):
        indices = batch_indices(step, settings.batch_size, task.count, settings.seed)
        task.outputs(student, task.batch(indices, device))
    clip_weights(student, settings.clip_sigma)


def _checkpoint_blocks(student: nn.Module) -> None:
    """Gradient checkpointing per decoder block (transformers' own, non-reentrant, so the
    random state and with it the weight noise is replayed in the recompute)."""
    if not getattr(student, "supports_gradient_checkpointing", False):
        raise ValueError(f"training.gradient_checkpointing: {type(student).__name__} does not "
                         "support gradient checkpointing")
    student.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False})
    student.config.use_cache = False


def _autocast(dtype: str, device: str) -> contextlib.AbstractContextManager:
    """The student's forward context: bfloat16 autocast on `device`, or nothing."""
    if dtype == "float32":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"training.dtype=bfloat16: {torch.cuda.get_device_name()} has no "
                         "bfloat16")
    return torch.autocast(kind, dtype=torch.bfloat16)


def _elapsed(started: float, world: int) -> float:
    """Seconds since `started`, the largest over the processes (so all stop together)."""
    elapsed = torch.tensor(time.perf_counter() - started, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def _checkpoint(output: Path, step: int, engine: Engine, optimizer, scheduler,
                losses: list[float], config: AfmcConfig, data: str, rank: int,
                world: int) -> None:
    folder = checkpoint.checkpoint_root(output) / f".step-{step:07d}.tmp"
    if rank == 0:
        folder = checkpoint.staging_folder(output, step)
    _barrier(world)
    checkpoint.save_rng(folder, rank)
    host, optimizer_state = engine.host(), engine.optimizer_state(optimizer)  # collective
    _barrier(world)
    if rank == 0:
        checkpoint.publish(output, folder, step, host,
                           {"optimizer": optimizer_state,
                            "scheduler": scheduler.state_dict()},
                           {"step": step, "losses": losses, "data": data, "processes": world,
                            "threads": torch.get_num_threads(),
                            "config": config.model_dump(mode="json")})
    _barrier(world)


def _save_result(student: nn.Module, task: TrainingTask, output: Path, config: AfmcConfig,
                 record: dict[str, Any]) -> None:
    """OUT: the task's model files, the learned ranges and the training record."""
    merge_lora(student)
    staging = output / ".result.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    ranges = task.save(student, staging)
    save_file({name: value.contiguous() for name, value in ranges.items()}, staging / RANGES_FILE)
    record = {**record, "config": config.model_dump(mode="json"),
              "analog_layers": {name: value.tolist() for name, value in ranges.items()},
              "final_loss": record["losses"][-1] if record["losses"] else math.nan}
    (staging / TRAINING_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    for item in staging.iterdir():
        target = output / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()
