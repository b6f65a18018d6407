"""Cost of simulating analog hardware: analog model latency over FP latency, same runtime.

What is measured (one process, CPU):

1. ONNX Runtime, read noise off: latency of the compiled aimc model (8-bit DAC and ADC,
   ``pcm`` programming noise of chip 0 swapped in by ``load(out).chip(0)``) divided
   by the latency of the FP view of the same file (``load(out).fp_view()``), for
   (a) afmc-tiny on one batch of 128 tokens (``input_ids`` [1, 128]) and
   (b) one 2048x2048 linear layer (``nn.Linear`` in a tiny module, compiled with
   ``afmc.api.compile(module, "aimc", example_inputs=..., calibration=...)``) at batch 64
   (input [64, 2048]).
   Each chip twice, in the same interleaved rounds: with afmc's fused runtime kernels
   (``aimc kernels``: afmc.runtime.fused, when they build here) and with the stock ONNX
   bodies (``aimc stock``: ``AFMC_KERNELS=0``).
2. The same with read noise on: ``load(out).chip(0, read_noise=0.04)``, i.e. every
   analog node becomes ``afmc.NoisyAnalogLinear`` with out_noise 0.04 (a fresh draw on every
   run).
3. When aihwkit-lightning is installed: the forward time of its ``AnalogLinear`` (torch
   path, 2048x2048, batch 64, 8-bit in/out, out_bound 14, 512-row slices, static
   per-slice input ranges, per-channel ADC bound, as in afmc's conformance test) divided
   by that of torch's ``nn.Linear`` with the same weights, under ``torch.no_grad()``:
   without noise in eval mode, and with noise. "Noise on" for aihwkit-lightning means
   ``forward.out_noise = 0.04`` with ``out_noise_per_channel`` and the layer in *training*
   mode, the only mode in which it adds read noise; input-range updates from data
   (``init_from_data = 0``), range decay and weight modifiers are off, so the forward is
   the eval one plus Gaussian output noise per slice (the closest equivalent of afmc's
   NoisyAnalogLinear).

How: every group of variants (FP baseline first) is timed round-robin, one call of each
variant per round with the order rotated every round, after warm-up calls; each variant
gets ``--repeats`` samples. Printed per variant: the median latency, its 10th-90th
percentile spread, the ratio of the medians (``ratio``), the median of the per-round
ratios variant / baseline (``med(r)``, robust to load that drifts between rounds; the
targets are judged on it) and the ratio of the fastest calls (``min-r``, an estimate for
an otherwise idle machine). ONNX Runtime runs with ``--threads`` intra-op threads (default
2) for every session, and torch with the same number of threads.

ORT's worker threads are told not to spin-wait (``session.intra_op.allow_spinning = 0``,
all sessions alike) unless ``--spin`` is given: every session has its own thread pool, and
on a machine with as few cores as threads, the workers of the session that just ran keep
spinning and slow down the next one (and any other process), so interleaved timings with
spinning mostly measure that contention (seen on 2 shared cores, FP linear layer at 2
threads: 3-23 ms from 10th to 90th percentile with spinning, 1.6-1.7 ms without).

afmc-tiny is compiled from the built-in model when its weights
(``afmc/models/afmc-tiny/model.safetensors``) exist; otherwise a randomly initialised
LlamaForCausalLM of the same architecture (hidden 256, 4 layers, 4 heads, intermediate
704, vocab 256) is saved to a temporary directory and compiled with the calibration
text ``stdlib:train``. The compile time is reported.

A sanity check is printed as well: whether chip 0's output differs from the output on the
stored weights (``seed=None``); if it does not, the programming noise did not reach the
computation (onnxruntime folds weight-only subgraphs from the file's initializers before
the ``add_initializer`` weights replace them).

    python benchmarks/sim_overhead.py [--threads 2] [--repeats 100] [--warmup 10] [--spin]
        [--skip tiny linear aihwkit] [--json PATH]

Targets: <= 1.15x without read noise, <= 1.6x with read noise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import afmc.api
import afmc.runtime.analog
import afmc.runtime.fused
import afmc.runtime.sessions
import afmc.runtime.stored
from afmc.api import load
from afmc.eval.timing import interleaved_samples
from afmc.runtime.chip import Chip

TARGET_NO_READ_NOISE = 1.15
TARGET_READ_NOISE = 1.6
READ_NOISE = 0.04
TINY_TOKENS = 128
LINEAR_FEATURES = 2048
LINEAR_BATCH = 64


@dataclass
class VariantResult:
    """Timing of one variant against its group's baseline."""

    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int
    ratio_of_medians: float
    median_of_ratios: float
    ratio_of_minima: float
    target: float | None

    @property
    def verdict(self) -> str:
        """Against the target, judged on the median of the per-round ratios."""
        if self.target is None:
            return ""
        return "meets" if self.median_of_ratios <= self.target else "MISSES"


def summarize(
    times: dict[str, np.ndarray], baseline: str, targets: dict[str, float | None]
) -> list[VariantResult]:
    """Per variant: median, ratio of medians, median of per-round ratios, ratio of minima."""
    base = times[baseline]
    results = []
    for name, values in times.items():
        results.append(
            VariantResult(
                name=name,
                median_ms=float(np.median(values) * 1e3),
                p10_ms=float(np.percentile(values, 10) * 1e3),
                p90_ms=float(np.percentile(values, 90) * 1e3),
                samples=int(values.size),
                ratio_of_medians=float(np.median(values) / np.median(base)),
                median_of_ratios=float(np.median(values / base)),
                ratio_of_minima=float(values.min() / base.min()),
                target=targets.get(name),
            )
        )
    return results


def print_group(title: str, results: Sequence[VariantResult]) -> None:
    print(f"\n{title}")
    print(
        f"  {'variant':34} {'median ms':>10} {'p10-p90 ms':>15} {'ratio':>7} "
        f"{'med(r)':>7} {'min-r':>7}  target"
    )
    for r in results:
        target = f"<= {r.target:.2f}x  {r.verdict}" if r.target is not None else ""
        spread = f"{r.p10_ms:.2f}-{r.p90_ms:.2f}"
        print(
            f"  {r.name:34} {r.median_ms:10.3f} {spread:>15} {r.ratio_of_medians:6.3f}x "
            f"{r.median_of_ratios:6.3f}x {r.ratio_of_minima:6.3f}x  {target}",
            flush=True,
        )


# ------------------------------------------------------------------ models


class OneLinear(nn.Module):
    """One nn.Linear(2048, 2048): the single-layer workload."""

    def __init__(self, features: int = LINEAR_FEATURES) -> None:
        super().__init__()
        self.fc = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def compile_timed(model: Any, out: Path, **kwargs: Any) -> float:
    """afmc.api.compile(model, "aimc", output=out, **kwargs); returns wall seconds."""
    start = time.perf_counter()
    afmc.api.compile(model, "aimc", output=out, **kwargs)
    return time.perf_counter() - start


def chip_sessions(out: Path, threads: int) -> dict[str, Chip]:
    """FP view, chip 0 (pcm programming noise), chip 0 with read noise, each chip with
    afmc's fused kernels (when they build here) and with the stock ONNX bodies
    (AFMC_KERNELS=0); same threads."""
    sessions = {"fp": load(out).fp_view(threads=threads)}
    kernels = afmc.runtime.fused.enabled()
    for suffix, setting in ((" kernels", "1"), (" stock", "0")):
        if setting == "1" and not kernels:
            continue
        previous = os.environ.get("AFMC_KERNELS")
        os.environ["AFMC_KERNELS"] = setting
        try:
            sessions[f"aimc{suffix}"] = load(out).chip(0, threads=threads)
            sessions[f"aimc{suffix} + read noise"] = load(out).chip(
                0, read_noise=READ_NOISE, threads=threads)
        finally:
            if previous is None:
                del os.environ["AFMC_KERNELS"]
            else:
                os.environ["AFMC_KERNELS"] = previous
    return sessions


def programming_noise_applied(out: Path, chip: Chip, inputs: np.ndarray, threads: int) -> bool:
    """Whether chip 0 computes something else than the stored weights do."""
    stored = load(out).chip(None, threads=threads).run(inputs)
    return not np.array_equal(stored, chip.run(inputs))


def bench_onnx(
    label: str, out: Path, inputs: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    chips = chip_sessions(out, args.threads)
    applied = programming_noise_applied(out, chips["aimc stock"], inputs, args.threads)
    times = interleaved_samples(
        {name: (lambda chip=chip: chip.run(inputs)) for name, chip in chips.items()},
        args.repeats,
        args.warmup,
    )
    del chips
    gc.collect()
    targets = {f"aimc{kind}": TARGET_NO_READ_NOISE for kind in (" kernels", " stock")} | {
        f"aimc{kind} + read noise": TARGET_READ_NOISE for kind in (" kernels", " stock")}
    results = summarize(times, "fp", targets)
    print_group(f"{label}: ONNX Runtime, {args.threads} intra-op threads", results)
    if not applied:
        print(
            "  WARNING: chip 0 gives the same output as the stored weights: the programming "
            "noise swapped in with add_initializer did not reach the computation."
        )
    return {
        "programming_noise_applied": applied,
        "variants": [asdict(r) | {"verdict": r.verdict} for r in results],
    }


# ------------------------------------------------------------- aihwkit-lightning


def peer_config(out_noise: float) -> Any:
    """aihwkit-lightning configured as afmc's layer (see tests/test_conformance_...)."""
    from aihwkit_lightning.simulator.configs import (
        TorchInferenceRPUConfig,
        WeightClipType,
        WeightModifierParameter,
        WeightNoiseInjectionType,
        WeightQuantizationType,
    )

    config = TorchInferenceRPUConfig()
    config.forward.inp_res = 254.0
    config.forward.out_res = 254.0
    config.forward.out_bound = 14.0
    config.forward.out_noise = out_noise
    config.forward.out_noise_per_channel = True
    config.mapping.max_input_size = 512
    ranges = config.pre_post.input_range
    ranges.enable = True
    ranges.dynamic = False
    ranges.fast_mode = False
    ranges.learn_input_range = True
    ranges.init_from_data = 0
    ranges.decay = 0.0
    config.clip.type = WeightClipType.LAYER_GAUSSIAN_PER_CHANNEL
    config.clip.sigma = 2.5
    config.modifier = WeightModifierParameter()
    config.modifier.noise_type = WeightNoiseInjectionType.NONE
    config.modifier.quantization_type = WeightQuantizationType.NONE
    return config


def bench_aihwkit(args: argparse.Namespace) -> dict[str, Any] | None:
    try:
        from aihwkit_lightning.nn import AnalogLinear
    except ImportError:
        print("\naihwkit-lightning not installed: skipped")
        return None
    torch.manual_seed(0)
    digital = OneLinear().fc.eval()
    x = torch.randn(LINEAR_BATCH, LINEAR_FEATURES)
    layers = {}
    for name, noise, training in (
        ("aihwkit-lightning eval (no noise)", 0.0, False),
        ("aihwkit-lightning train-mode noise", READ_NOISE, True),
    ):
        layer = AnalogLinear.from_digital(digital, peer_config(noise))
        layer.input_range.data.fill_(float(x.abs().max()) * 0.9)
        layers[name] = layer.train(training)
    variants: dict[str, Callable[[], Any]] = {"torch nn.Linear": lambda: digital(x)}
    for name, layer in layers.items():
        variants[name] = lambda layer=layer: layer(x)
    with torch.no_grad():
        times = interleaved_samples(variants, args.repeats, args.warmup)
    targets = {
        "aihwkit-lightning eval (no noise)": TARGET_NO_READ_NOISE,
        "aihwkit-lightning train-mode noise": TARGET_READ_NOISE,
    }
    results = summarize(times, "torch nn.Linear", targets)
    print_group(
        f"aihwkit-lightning AnalogLinear vs torch nn.Linear, {LINEAR_FEATURES}x"
        f"{LINEAR_FEATURES}, batch {LINEAR_BATCH}, torch {torch.get_num_threads()} "
        "threads",
        results,
    )
    return {"variants": [asdict(r) | {"verdict": r.verdict} for r in results]}


# ------------------------------------------------------------------- main


def disable_spinning() -> None:
    """Make every session of a chip or FP view block instead of spin-wait between parallel
    work.

    Each session has its own intra-op thread pool, whose workers keep spinning for a while
    after a run; with sessions interleaved on few cores, those spinning workers slow down the
    next session. The runtimes (afmc.runtime.analog, afmc.runtime.stored) take their
    options from session_options.
    """
    make_options = afmc.runtime.sessions.session_options

    def options_without_spinning(threads: int | None = None) -> ort.SessionOptions:
        options = make_options(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    afmc.runtime.analog.session_options = options_without_spinning
    afmc.runtime.stored.session_options = options_without_spinning


def main() -> None:
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="ORT intra-op threads (and torch threads) for every variant",
    )
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per variant")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["tiny", "linear", "aihwkit"],
        help="parts to leave out",
    )
    parser.add_argument(
        "--spin",
        action="store_true",
        help="keep ORT's default spin-waiting worker threads (default: off for all sessions)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.spin:
        disable_spinning()
    report: dict[str, Any] = {
        "threads": args.threads,
        "ort_spinning": args.spin,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "targets": {"no_read_noise": TARGET_NO_READ_NOISE, "read_noise": TARGET_READ_NOISE},
        "environment": {
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    print(
        f"sim_overhead: {args.threads} threads (ORT spinning {'on' if args.spin else 'off'}), "
        f"{args.repeats} interleaved repeats, "
        f"{args.warmup} warm-up; ratio = median(variant) / median(baseline), "
        "med(r) = median of per-round ratios, min-r = ratio of fastest calls"
    )
    with tempfile.TemporaryDirectory(prefix="afmc-sim-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        if "tiny" not in args.skip:
            description = "built-in afmc-tiny"
            seconds = compile_timed("afmc-tiny", tmp / "tiny")
            print(f"\nafmc-tiny: {description}; compile for aimc took {seconds:.1f} s")
            ids = np.random.default_rng(0).integers(0, 256, (1, TINY_TOKENS), dtype=np.int64)
            report["afmc_tiny"] = {
                "model": description,
                "compile_seconds": seconds,
                "input": [1, TINY_TOKENS],
            }
            report["afmc_tiny"] |= bench_onnx(
                f"afmc-tiny, input_ids [1, {TINY_TOKENS}]", tmp / "tiny", ids, args
            )
        if "linear" not in args.skip:
            torch.manual_seed(0)
            example = torch.randn(LINEAR_BATCH, LINEAR_FEATURES)
            try:
                seconds = compile_timed(
                    OneLinear().eval(),
                    tmp / "linear",
                    example_inputs=(example,),
                    calibration=[(torch.randn(LINEAR_BATCH, LINEAR_FEATURES),)],
                )
            except Exception as error:  # report the failure of this path and go on
                traceback.print_exc()
                report["linear"] = {"error": f"{type(error).__name__}: {error}"}
                print(f"\ncompile of nn.Module failed: {report['linear']['error']}")
            else:
                print(
                    f"\nlinear {LINEAR_FEATURES}x{LINEAR_FEATURES}: compile of nn.Module "
                    f"took {seconds:.1f} s"
                )
                x = (
                    np.random.default_rng(1)
                    .standard_normal((LINEAR_BATCH, LINEAR_FEATURES))
                    .astype(np.float32)
                )
                report["linear"] = {
                    "compile_seconds": seconds,
                    "input": [LINEAR_BATCH, LINEAR_FEATURES],
                }
                report["linear"] |= bench_onnx(
                    f"linear {LINEAR_FEATURES}x{LINEAR_FEATURES}, input [{LINEAR_BATCH}, "
                    f"{LINEAR_FEATURES}]",
                    tmp / "linear",
                    x,
                    args,
                )
    if "aihwkit" not in args.skip:
        report["aihwkit_lightning"] = bench_aihwkit(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
