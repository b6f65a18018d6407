"""Start the student where the aimc compile would put it: smoothed inputs, outlier split,
searched input ranges, each chosen as compile chooses it.

Rule (before the first step of a run, never on resume), on the FP teacher's
activations over the first calibration sequences of the training data (per analog
layer: max |x_k| per input channel and two afmc.passes.row_sample samples of input
rows, uniform plus the extreme ones: outliers.sample_rows of them score smoothing and
the split, calibration.search_rows the range search, as in compile; layers whose
first input is the same tensor form one group, as q/k/v or gate/up read one
activation):

- ``training.smoothing``: each group gets the SmoothQuant scale at the alpha among
  ``smoothing.alphas``, or none, of lowest expected chip error
  (afmc.passes.smoothing_choice, as chip-smooth-inputs); each layer of the group keeps
  it as its digital per-input-channel scale s: the crossbar computes
  (x / s) @ (W diag(s))^T, which equals x @ W^T in floating point. The stored weight
  stays W, so the Hugging Face output is the FP model as trained; the scales travel
  beside the learned ranges and compile puts them back.
- ``training.split_outliers``: each layer's outlier count m (per row and input slice)
  is given out by the chip objective within ``outliers.budget``
  (afmc.passes.outlier_allocation over afmc.passes.layer_score, as split-outliers).
- ``training.range_init = "search"``: each slice's input range is the one that
  minimises the layer's expected output error on a chip (calibration.objective; the
  whole DAC + crossbar + ADC path of the crossbar's part of the weight,
  afmc.passes.range_search, as calibration.method=search), and the data
  initialisation of the first range_init_batches steps is skipped. With
  "kappa-std" (AFM) the ranges are initialised during the first steps instead.

The chip objective scores ``noise.model`` with ``hardware.devices_per_weight``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from afmc.config import AfmcConfig
from afmc.passes.layer_score import LayerScore, dense_part, split_indices
from afmc.passes.outlier_allocation import allocate, candidates, importance
from afmc.passes.range_search import ChipNoise, search_layer
from afmc.passes.row_sample import RowSampler, WeightedRows
from afmc.passes.smoothing_choice import choose_smoothing
from afmc.train.analog_layer import AnalogTrainingLinear, analog_layers
from afmc.train.tasks import TrainingTask


class _Observer:
    """Per-channel max |x| and two RowSampler samples of the input rows of one layer (for
    the chip scores and for the range search); the layer's first input tensor is held
    until the groups are formed."""

    def __init__(self, config: AfmcConfig) -> None:
        self.scoring = RowSampler(config.outliers.sample_rows)
        self.search = RowSampler(config.calibration.search_rows)
        self.maximum: torch.Tensor | None = None
        self.first: torch.Tensor | None = None
        self.watch_first = True

    def __call__(self, _module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        if self.watch_first:
            self.first, self.watch_first = inputs[0], False
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).cpu()
        peak = x.abs().amax(dim=0)
        self.maximum = peak if self.maximum is None else torch.maximum(self.maximum, peak)
        self.scoring.add(x)
        self.search.add(x)


def needs_preparation(config: AfmcConfig) -> bool:
    settings = config.training
    return settings.smoothing or settings.split_outliers or settings.range_init == "search"


@torch.no_grad()
def prepare_student(student: nn.Module, task: TrainingTask, config: AfmcConfig,
                    device: str) -> None:
    """Set the input scales, outlier counts and/or searched ranges of every analog layer
    of `student` (rule above), on the teacher of `task`."""
    layers = dict(analog_layers(student))
    observers, groups = _observe(task, layers, config, device)
    samples = {name: observer.scoring.sample() for name, observer in observers.items()}
    noise = ChipNoise.of(config)
    if config.training.smoothing:
        for group in groups:
            _smooth_group([layers[name] for name in group], observers[group[0]].maximum,
                          samples[group[0]], config, noise)
    if config.training.split_outliers:
        _allocate_outliers({name: layers[name] for name in samples}, samples, config, noise,
                           task)
    if config.training.range_init == "search":
        for name, observer in observers.items():
            _search_ranges(layers[name], observer.search.sample(), config)


def _observe(task: TrainingTask, layers: dict[str, AnalogTrainingLinear],
             config: AfmcConfig, device: str) -> tuple[dict[str, _Observer], list[list[str]]]:
    """The observers of the layers the first task.calibration_count samples reach, and
    their groups."""
    teacher_modules = dict(task.teacher.named_modules())
    observers, handles = {}, []
    for name in layers:
        observers[name] = _Observer(config)
        handles.append(teacher_modules[name].register_forward_hook(observers[name]))
    try:
        size = task.micro_size or config.calibration.batch_size
        count = task.calibration_count(config)
        for start in range(0, count, size):
            task.outputs(task.teacher, task.batch(np.arange(start, min(count, start + size)),
                                                  device))
    finally:
        for handle in handles:
            handle.remove()
    observers = {name: observer for name, observer in observers.items()
                 if observer.maximum is not None}
    groups: list[list[str]] = []
    for name, observer in observers.items():
        group = next((g for g in groups if observers[g[0]].first is observer.first), None)
        if group is None:
            groups.append([name])
        else:
            group.append(name)
    for observer in observers.values():
        observer.first = None
    return observers, groups


def _smooth_group(layers: list[AnalogTrainingLinear], maximum: torch.Tensor,
                  rows: WeightedRows, config: AfmcConfig, noise: ChipNoise | None) -> None:
    weights = [layer.weight.detach().float().cpu() for layer in layers]
    choice = choose_smoothing(maximum, rows, weights, config.smoothing.alphas, config.hardware,
                              noise, config.outliers.budget)
    if choice.scale is not None:
        for layer in layers:
            layer.input_scale.copy_(choice.scale.to(layer.input_scale))


def _crossbar_view(layer: AnalogTrainingLinear, rows: WeightedRows
                   ) -> tuple[list[WeightedRows], torch.Tensor]:
    """The layer's input slices of `rows` and its weight as the crossbar sees them."""
    scale = layer.input_scale.detach().float().cpu()
    scaled = WeightedRows(rows.x / scale, rows.weights)
    return scaled.split(layer.sizes), layer.weight.detach().float().cpu() * scale


def _allocate_outliers(layers: dict[str, AnalogTrainingLinear], samples: dict[str, WeightedRows],
                       config: AfmcConfig, noise: ChipNoise | None, task: TrainingTask) -> None:
    hardware = config.hardware
    errors, per_count = {}, {}
    for name, layer in layers.items():
        slices, weight = _crossbar_view(layer, samples[name])
        errors[name] = LayerScore(
            slices, weight, layer.sizes, (hardware.inp_res, hardware.out_res, hardware.out_bound),
            noise, candidates(config.outliers.max_per_slice, layer.sizes)).errors
        per_count[name] = weight.shape[0] * len(layer.sizes)
    total = sum(layer.weight.numel() for layer in layers.values())
    weights = importance({name: task.compile_name(name) for name in layers})
    chosen = allocate(errors, per_count, int(config.outliers.budget * total), weights)
    for name, count in chosen.items():
        layers[name].outliers.fill_(count)


def _search_ranges(layer: AnalogTrainingLinear, rows: WeightedRows, config: AfmcConfig) -> None:
    hardware, calibration = config.hardware, config.calibration
    slices, weight = _crossbar_view(layer, rows)
    if int(layer.outliers):
        weight = dense_part(weight, split_indices(weight, layer.sizes, int(layer.outliers)))
    choice = search_layer(slices, weight, layer.sizes, hardware.inp_res, hardware.out_res,
                          hardware.out_bound, clip_weights=False,
                          outputs=calibration.search_outputs, chip=ChipNoise.of(config))
    layer.input_range.data.copy_(torch.tensor(choice.input_ranges))
    layer.range_init_steps.fill_(config.training.range_init_batches)
