"""Cost of hardware-aware training: analog training step over FP training step, same model.

A training step is what afmc's distillation trainer does per batch: forward of the student
on a batch of token ids [batch, seq], the loss T^2 * KL(teacher || student) over all tokens
(T = training.temperature; the teacher's log-probabilities are computed once beforehand,
so the teacher's cost is in neither variant), backward, gradient-norm clipping
(training.grad_clip), one AdamW step (training.learning_rate, betas, eps, weight_decay;
the analog input ranges in a second group with range_learning_rate and no weight decay)
and, in the analog step only, ``clip_weights`` (every analog weight row clamped to
+-clip_sigma * std(row), as the trainer does after each optimizer step; ``--no-clip``
leaves it out).

Variants, per workload, both built from the same weights:

- fp: the plain model (every nn.Linear a torch linear);
- analog: a copy passed through ``convert_to_analog`` with the default placement (every
  nn.Linear analog, lm_head included), training.weight_noise 0.03 (``--weight-noise``),
  range_init_batches 0 and every input range set to ``--range`` (3.0), so that every
  measured step is in the learned-range regime (8-bit DAC and ADC, out_bound 14, 512-row
  slices: the defaults). The printout gives the median fraction of inputs at or beyond
  their range (the inputs that get a range gradient).

Workloads:

1. afmc-tiny (hidden 256, 4 layers, intermediate 704, vocab 256, 3.3 M parameters) on
   batch 8 x seq 256; the built-in weights when they exist, else random weights;
2. llama-100m (skipped with ``--quick``): a random LlamaForCausalLM with hidden 768,
   intermediate 2048, 12 layers, 12 heads, vocab 32000 and tied embeddings (110 M
   parameters) on batch 2 x seq 256.

Time: both variants live in one process and are timed round-robin (one step each per
round, the order alternating every round) after ``--warmup`` rounds. Printed: the median
wall-clock step of each, the ratio of the medians (``ratio``), the median of the per-round
ratios analog / fp (``med(r)``, robust to load that drifts between rounds on a shared
machine) and, on the CPU, the median per-round ratio of the process CPU time
(``cpu(r)``, which leaves out the time the process waits for a core). On CUDA every step
ends with a synchronize. ``--threads`` sets torch's intra-op threads, default 1: on a
machine whose cores are shared with other jobs, two threads that wait for each other at
every op's barrier measure the load more than the step (seen on 2 shared cores: an FP
step of afmc-tiny at 0.8-1.2 s with one thread, 1.6-9 s with two).

Peak memory (``--no-memory`` skips it): every variant runs again in a fresh subprocess
that builds the model, the teacher log-probabilities, the batch and the optimizer, then
records its resident set size (CPU) or allocated CUDA memory, resets the peak (Linux
``/proc/self/clear_refs``; CUDA ``reset_peak_memory_stats``) and runs ``--memory-steps``
steps. ``peak MB`` is the peak during those steps minus the memory before them:
gradients, the AdamW state (allocated in the first step), the activations saved for
backward (for the analog layers also the noisy weights and the ADC masks) and the
temporaries, not the weights nor the data. On CPU the subprocess runs with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc maps every tensor of 64 KiB or more on its
own and returns it to the OS when freed: the resident size then follows the live tensors
instead of the allocator's cache.

    python benchmarks/train_step.py [--quick] [--device cpu|cuda] [--threads 1]
        [--repeats 7] [--warmup 2] [--range 3.0] [--weight-noise 0.03] [--no-clip]
        [--no-memory] [--memory-steps 2] [--profile] [--json PATH]

``--profile`` prints torch.profiler's operator table (self CPU time) of three analog steps
of each workload. Goal (issue): analog step <= 1.5x the FP step.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from afmc.config import AfmcConfig, config_from_dict
from afmc.train.analog_layer import (
    analog_layers,
    apply_range_decay,
    clip_weights,
    convert_to_analog,
)

TINY_CONFIG = {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
               "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 256,
               "max_position_embeddings": 1024}
LLAMA_100M = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
              "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000,
              "max_position_embeddings": 1024, "tie_word_embeddings": True}
WORKLOADS = {"afmc-tiny": (8, 256), "llama-100m": (2, 256)}  # name: (batch, seq)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclass
class Row:
    """One workload's numbers (seconds, MB)."""

    workload: str
    params_m: float
    batch: int
    seq: int
    fp_s: float
    analog_s: float
    ratio: float
    ratio_per_round: float
    clipped_inputs: float = 0.0
    cpu_ratio: float | None = None
    fp_peak_mb: float | None = None
    analog_peak_mb: float | None = None
    peak_ratio: float | None = None


def build_model(workload: str, device: str, seed: int = 0) -> nn.Module:
    """The workload's causal LM in float32, eval mode (dropout is 0 in Llama anyway)."""
    if workload == "afmc-tiny":
        from afmc.capture.hf import load_causal_lm
        from afmc.models import resolve_model_path

        path = resolve_model_path("afmc-tiny")
        if (path / "model.safetensors").exists():
            return load_causal_lm(path).to(device)
        config = LlamaConfig(**TINY_CONFIG)
    else:
        config = LlamaConfig(**LLAMA_100M)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(device).eval()


def analog_config(weight_noise: float) -> AfmcConfig:
    """Default hardware and placement; noise on, ranges not initialised from data."""
    return config_from_dict({"training": {"weight_noise": weight_noise,
                                          "range_init_batches": 0}})


class Step:
    """One distillation training step of `student` (callable; returns nothing)."""

    def __init__(self, student: nn.Module, ids: torch.Tensor, teacher_logp: torch.Tensor,
                 config: AfmcConfig, analog: bool, clip: bool = True) -> None:
        train = config.training
        self.student, self.ids, self.teacher_logp = student.train(), ids, teacher_logp
        self.temperature, self.analog = train.temperature, analog
        self.clip_sigma = train.clip_sigma if clip else 0.0
        self.range_decay, self.range_min_unclipped = (train.range_decay,
                                                      train.range_min_unclipped)
        ranges = [layer.input_range for _, layer in analog_layers(student)]
        range_ids = {id(p) for p in ranges}
        weights = [p for p in student.parameters() if id(p) not in range_ids]
        self.grad_clip, self.trainable = train.grad_clip, weights + ranges
        groups: list[dict[str, Any]] = [{"params": weights}]
        if ranges:
            groups.append({"params": ranges, "lr": train.range_learning_rate,
                           "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=train.learning_rate, betas=train.betas,
                                           eps=train.eps, weight_decay=train.weight_decay)
        self.sync = ids.device.type == "cuda"

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.student(input_ids=self.ids, use_cache=False).logits
        t = self.temperature
        student_logp = F.log_softmax(logits.float() / t, dim=-1).flatten(0, 1)
        loss = t * t * F.kl_div(student_logp, self.teacher_logp, reduction="batchmean",
                                log_target=True)
        loss.backward()
        if self.analog:
            apply_range_decay(self.student, self.range_decay, self.range_min_unclipped)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.grad_clip)
        self.optimizer.step()
        if self.analog:
            clip_weights(self.student, self.clip_sigma)
        if self.sync:
            torch.cuda.synchronize()


def make_steps(workload: str, device: str, variants: tuple[str, ...], range_value: float,
               weight_noise: float, clip: bool = True) -> tuple[dict[str, Step], int]:
    """The steps of the requested variants on one batch, and the model's parameter count."""
    batch, seq = WORKLOADS[workload]
    model = build_model(workload, device)
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    config = analog_config(weight_noise)
    with torch.no_grad():
        teacher = model(input_ids=ids, use_cache=False).logits
        teacher_logp = F.log_softmax(teacher.float() / config.training.temperature, dim=-1)
        teacher_logp = teacher_logp.flatten(0, 1)
        del teacher
    params = sum(p.numel() for p in model.parameters())
    steps = {}
    for name in variants:
        student = model if name == variants[-1] else copy.deepcopy(model)
        if name == "analog":
            convert_to_analog(student, config)
            with torch.no_grad():
                for _, layer in analog_layers(student):
                    layer.input_range.fill_(range_value)
        steps[name] = Step(student, ids, teacher_logp, config, analog=name == "analog",
                           clip=clip)
    return steps, params


def _memory_now(device: str) -> int:
    if device == "cuda":
        return torch.cuda.memory_allocated()
    return _proc_status_kb("VmRSS") * 1024


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(workload: str, variant: str, device: str, threads: int, steps: int,
                 range_value: float, weight_noise: float, clip: bool) -> None:
    """Print {"peak_mb", "before_mb"} of `steps` training steps in this (fresh) process."""
    torch.set_num_threads(threads)
    step = make_steps(workload, device, (variant,), range_value, weight_noise,
                      clip)[0][variant]
    import gc

    gc.collect()
    before = _memory_now(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM <- VmRSS
    for _ in range(steps):
        step()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else _proc_status_kb("VmHWM") * 1024)
    print(json.dumps({"peak_mb": (peak - before) / 2**20, "before_mb": before / 2**20}))


def measure_memory(workload: str, variant: str, args: argparse.Namespace) -> float | None:
    """Peak step memory (MB above the loaded model and data) from a fresh subprocess."""
    command = [sys.executable, __file__, "--_memory-child", workload, variant,
               "--device", args.device, "--threads", str(args.threads),
               "--memory-steps", str(args.memory_steps), "--range", str(args.range),
               "--weight-noise", str(args.weight_noise)] + (["--no-clip"] if args.no_clip else [])
    env = {**os.environ, **(MALLOC_ENV if args.device == "cpu" else {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(f"memory run failed ({workload}, {variant}):\n{done.stderr[-2000:]}")
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


def profile_analog(step: Callable[[], None], rows: int = 25) -> None:
    """torch.profiler's operator table of three analog steps (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def timed_rounds(steps: dict[str, Step], repeats: int, warmup: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Wall and process CPU seconds per step of each variant, round-robin with the order
    alternating every round, after `warmup` untimed rounds."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return ({name: np.asarray(v) for name, v in wall.items()},
            {name: np.asarray(v) for name, v in cpu.items()})


def clipped_inputs(step: Step) -> float:
    """Median over analog input slices of the fraction of inputs with |x| >= r (one forward)."""
    fractions: list[float] = []

    def hook(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1])
        for x_s, r in zip(x.split(layer.sizes, dim=1), layer.input_range.detach(), strict=True):
            fractions.append(float((x_s.abs() >= r).float().mean()))

    handles = [layer.register_forward_pre_hook(hook) for _, layer in analog_layers(step.student)]
    with torch.no_grad():
        step.student(input_ids=step.ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return float(np.median(fractions))


def run_workload(workload: str, args: argparse.Namespace) -> Row:
    steps, params = make_steps(workload, args.device, ("fp", "analog"), args.range,
                               args.weight_noise, clip=not args.no_clip)
    batch, seq = WORKLOADS[workload]
    wall, cpu = timed_rounds(steps, repeats=args.repeats, warmup=args.warmup)
    fp_s, analog_s = float(np.median(wall["fp"])), float(np.median(wall["analog"]))
    row = Row(workload, params / 1e6, batch, seq, fp_s, analog_s, analog_s / fp_s,
              float(np.median(wall["analog"] / wall["fp"])),
              clipped_inputs=clipped_inputs(steps["analog"]))
    if args.device == "cpu":
        row.cpu_ratio = float(np.median(cpu["analog"] / cpu["fp"]))
    if args.profile:
        print(f"\n{workload}: analog step, torch.profiler")
        profile_analog(steps["analog"])
    del steps
    if not args.no_memory:
        row.fp_peak_mb = measure_memory(workload, "fp", args)
        row.analog_peak_mb = measure_memory(workload, "analog", args)
        if row.fp_peak_mb and row.analog_peak_mb is not None:
            row.peak_ratio = row.analog_peak_mb / row.fp_peak_mb
    return row


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    width = int(spec.split(".")[0]) + len(suffix)
    return f"{'-':>{width}}" if value is None else format(value, spec) + suffix


def print_table(rows: list[Row]) -> None:
    header = (f"{'workload':<12} {'params':>7} {'batch x seq':>11} {'FP step s':>9} "
              f"{'analog s':>9} {'ratio':>6} {'med(r)':>6} {'cpu(r)':>6} {'FP peak MB':>10} "
              f"{'analog MB':>10} {'ratio':>6}")
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.workload:<12} {r.params_m:>6.1f}M {f'{r.batch} x {r.seq}':>11} "
              f"{r.fp_s:>9.3f} {r.analog_s:>9.3f} {r.ratio:>5.2f}x {r.ratio_per_round:>5.2f}x "
              f"{_fmt(r.cpu_ratio, '5.2f', 'x')} {_fmt(r.fp_peak_mb, '10.0f')} "
              f"{_fmt(r.analog_peak_mb, '10.0f')} {_fmt(r.peak_ratio, '5.2f', 'x')}")
    for r in rows:
        print(f"{r.workload}: median fraction of analog inputs with |x| >= r: "
              f"{r.clipped_inputs:.2%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="afmc-tiny only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per workload")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--range", type=float, default=3.0, help="every analog input range")
    parser.add_argument("--weight-noise", type=float, default=0.03)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--no-clip", action="store_true",
                        help="leave clip_weights out of the analog step")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--_memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args._memory_child:
        memory_child(*args._memory_child, args.device, args.threads, args.memory_steps,
                     args.range, args.weight_noise, not args.no_clip)
        return
    torch.set_num_threads(args.threads)
    workloads = ["afmc-tiny"] if args.quick else list(WORKLOADS)
    machine = (torch.cuda.get_device_name() if args.device == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"torch {torch.__version__}, {args.device} ({machine}), {args.threads} threads, "
          f"{args.repeats} rounds after {args.warmup} warm-up")
    rows = []
    for workload in workloads:
        start = time.perf_counter()
        rows.append(run_workload(workload, args))
        print(f"{workload}: done in {time.perf_counter() - start:.0f} s")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "machine": machine,
                                         "threads": args.threads, "torch": torch.__version__,
                                         "repeats": args.repeats, "warmup": args.warmup,
                                         "rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
