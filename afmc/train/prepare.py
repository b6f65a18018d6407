"""Start the student where the compiler would: smoothed inputs and searched input ranges.

Rule (before the first step of a run, never on resume), on the FP teacher's
activations over the first calibration sequences of the training data:

- ``training.smoothing``: each analog layer gets a digital per-input-channel
  scale s = x_max^alpha / w_max^(1 - alpha) (smoothing.alpha; geometric mean 1;
  afmc.passes.fx.smooth_inputs.smoothing_scale): the crossbar computes
  (x / s) @ (W diag(s))^T, which equals x @ W^T in floating point. The stored
  weight stays W, so the Hugging Face output is the FP model as trained; the
  scales travel beside the learned ranges and compile puts them back.
- ``training.range_init = "search"``: each slice's input range is the one that
  minimises the layer's output error under the whole DAC + crossbar + ADC path
  (afmc.passes.range_search, as calibration.method=search), and the data
  initialisation of the first range_init_batches steps is skipped. With
  "kappa-std" (AFM) the ranges are initialised during the first steps instead.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from afmc.config import AfmcConfig
from afmc.passes.fx.smooth_inputs import smoothing_scale
from afmc.passes.range_search import search_layer
from afmc.passes.row_sample import WeightedRows
from afmc.train.analog_layer import AnalogTrainingLinear, analog_layers


class _Observer:
    """Per-channel max |x| and a uniform sample of input rows of one layer."""

    def __init__(self, rows: int, generator: torch.Generator) -> None:
        self.rows, self.generator = rows, generator
        self.maximum: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []

    def __call__(self, _module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).cpu()
        peak = x.abs().amax(dim=0)
        self.maximum = peak if self.maximum is None else torch.maximum(self.maximum, peak)
        pick = torch.randperm(x.shape[0], generator=self.generator)[:self.rows]
        self.samples.append(x[pick])

    def sample(self) -> torch.Tensor:
        rows = torch.cat(self.samples)
        return rows[torch.randperm(rows.shape[0], generator=self.generator)[:self.rows]]


def needs_preparation(config: AfmcConfig) -> bool:
    return config.training.smoothing or config.training.range_init == "search"


@torch.no_grad()
def prepare_student(student: nn.Module, teacher: nn.Module, sequences: np.ndarray,
                    config: AfmcConfig, device: str) -> None:
    """Set input scales and/or searched ranges of every analog layer of `student` (rule above)."""
    generator = torch.Generator().manual_seed(0)
    layers = dict(analog_layers(student))
    teacher_modules = dict(teacher.named_modules())
    observers, handles = {}, []
    for name in layers:
        observers[name] = _Observer(config.calibration.search_rows, generator)
        handles.append(teacher_modules[name].register_forward_hook(observers[name]))
    try:
        size = config.calibration.batch_size
        count = max(1, min(len(sequences), config.calibration.max_tokens // sequences.shape[1]))
        for start in range(0, count, size):
            ids = torch.from_numpy(sequences[start:min(count, start + size)])
            teacher(input_ids=ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in layers.items():
        observer = observers[name]
        if observer.maximum is None:
            continue
        _prepare_layer(layer, observer, config)


def _prepare_layer(layer: AnalogTrainingLinear, observer: _Observer,
                   config: AfmcConfig) -> None:
    hardware = config.hardware
    weight = layer.weight.detach().float().cpu()
    if config.training.smoothing:
        scale = smoothing_scale(observer.maximum, weight.abs().amax(dim=0),
                                config.smoothing.alpha)
        layer.input_scale.copy_(scale.to(layer.input_scale))
    if config.training.range_init == "search":
        scale = layer.input_scale.detach().float().cpu()
        samples = [WeightedRows.uniform(x)
                   for x in (observer.sample() / scale).split(layer.sizes, dim=1)]
        choice = search_layer(samples, weight * scale, layer.sizes, hardware.inp_res,
                              hardware.out_res, hardware.out_bound, clip_weights=False,
                              outputs=config.calibration.search_outputs)
        layer.input_range.data.copy_(torch.tensor(choice.input_ranges))
        layer.range_init_steps.fill_(config.training.range_init_batches)
