"""The analog linear layer in training mode (HARDWARE.md "Training-time behaviour").

A trained model keeps its nn.Linear layers' places: convert_to_analog swaps each
analog-placed nn.Linear for an AnalogTrainingLinear that shares its weight and
bias Parameters (tied weights stay tied) and adds the learned input ranges.

- eval mode computes exactly what compile and the simulator compute: the afmc
  op ``torch.ops.afmc.analog_linear`` (8-bit DAC per input slice, MVM, 8-bit
  ADC with the bound out_bound * r * max|W row slice|, read noise
  hardware.out_noise) plus the digital bias;
- training mode computes, per input slice s with range r_s, the same path with
  fresh weight noise N(0, (weight_noise * max|W[j, s]|)^2) on each row j,
  optional read noise, and straight-through gradients (AnalogTrainingFunction);
  over the first range_init_batches forwards r_s is instead set from the data,
  the running mean of range_kappa * std(x_s) over the global batch (all
  processes);
- a layer with ``outliers`` m > 0 (training.split_outliers) computes, in both
  modes, what compile's split-outliers computes: the m largest |w| of every row
  of every input slice (of the weight as the crossbar sees it, W diag(s)) leave
  the crossbar, which holds the rest with those entries 0 (its noise, ADC bound
  and clipping follow that dense part), and are added back by an exact digital
  product. The set is taken afresh in every forward, as compile takes it from
  the final weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from afmc.config import AfmcConfig, HardwareConfig, TrainingConfig
from afmc.ops.analog_linear import ANALOG_LINEAR, slice_sizes
from afmc.ops.sparse_outliers import SPARSE_OUTLIERS
from afmc.passes.layer_score import split_indices
from afmc.passes.learned_ranges import OUTLIERS_SUFFIX, SCALE_SUFFIX
from afmc.passes.name_rules import PlacementRules

_TINY = torch.finfo(torch.float32).tiny
WRAPPER_PREFIX = "lm."  # the FX layer names of a captured causal LM (capture.hf.CausalLMLogits)


class AnalogTrainingFunction(torch.autograd.Function):
    """Training-mode analog forward over input slices, with straight-through gradients.

    Per slice s (x_s the slice of the last dim, W_s the weight columns, r = r_s):
      x_q = round(clamp(x_s, -r, r) / (2r / inp_res)) * (2r / inp_res)       (DAC)
      W_n = W_s + weight_noise * w_max * N(0, 1),  w_max[j] = max |W_s[j]|  (fresh)
      y   = x_q @ W_n^T  (+ read_noise * r / sqrt(n) * w_max * N(0, 1))
      b   = out_bound * r * w_max;  y_q = round(y / (2b / out_res)) * (2b / out_res)
      out = sum_s clamp(y_q, -b, b)                                        (ADC)
    Backward (aihwkit-lightning's rules): the roundings pass gradients unchanged, the
    ADC clamp blocks where |y_q| > b, the input clamp where |x| > r (|x| == r passes);
    d r = r * (sum of the negative input gradients clipped at +r - sum of the positive
    ones clipped at -r); the decay term is added once per optimizer step
    (apply_range_decay). W gets the gradient of the noisy product.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, input_range: torch.Tensor,
                sizes: Sequence[int], hardware: HardwareConfig, weight_noise: float,
                read_noise: float) -> torch.Tensor:
        sizes = list(sizes)
        x2 = x.reshape(-1, x.shape[-1])
        ranges = input_range.detach().clamp_min(_TINY)
        limits = _limits(ranges, x2)
        out: torch.Tensor | None = None
        noisy_weights, masks, clipping = [], [], []
        for index, (x_s, w_s) in enumerate(zip(_split(x2, sizes), _split(weight, sizes),
                                               strict=True)):
            r, limit = ranges[index], limits[index]
            clips = _may_clip(x_s, limit)
            step = 2 * r / hardware.inp_res
            x_q = _quantize(x_s.clamp(-limit, limit) if clips else x_s / step, step, clips)
            w_max = torch.maximum(w_s.amax(dim=1), w_s.amin(dim=1).neg_()).clamp_min_(_TINY)
            if weight_noise > 0:  # w_s + (weight_noise * w_max) * N(0, 1)
                w_s = torch.randn_like(w_s).mul_((weight_noise * w_max).unsqueeze(1)).add_(w_s)
            y = x_q @ w_s.T
            if read_noise > 0:
                scale = (read_noise * r / math.sqrt(len(sizes))) * w_max
                y.add_(torch.randn_like(y).mul_(scale))
            bound = hardware.out_bound * r * w_max
            out_step = 2 * bound / hardware.out_res
            y_q = y.div_(out_step).round_().mul_(out_step)
            y_q, mask = _adc_clamp(y_q, bound)
            if out is None:
                out = y_q
            else:
                out += y_q
            noisy_weights.append(w_s)
            masks.append(mask)
            clipping.append(clips)
        ctx.save_for_backward(x2, input_range, *noisy_weights, *masks)
        ctx.setup = (sizes, hardware.inp_res, x.shape, clipping)
        assert out is not None
        return out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        sizes, inp_res, x_shape, clipping = ctx.setup
        x2, input_range, *rest = ctx.saved_tensors
        noisy_weights, masks = rest[:len(sizes)], rest[len(sizes):]
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        ranges = input_range.detach().clamp_min(_TINY)
        limits = _limits(ranges, x2)
        single = len(sizes) == 1
        grad_x = grad.new_empty(x2.shape) if want_x and not single else None
        grad_w = grad.new_empty(grad.shape[1], x2.shape[1]) if want_w and not single else None
        grad_r = torch.zeros_like(input_range)
        # three [rows, slice] temporaries, shared by the slices
        scratch = grad.new_empty(3, x2.shape[0] * max(sizes)) if any(clipping) else None
        start = 0
        for index, x_s in enumerate(_split(x2, sizes)):
            cols = slice(start, start + sizes[index])
            start = cols.stop
            r, limit, clips, mask = ranges[index], limits[index], clipping[index], masks[index]
            step = 2 * r / inp_res
            if clips:
                assert scratch is not None
                clamped, passed, side = (buffer[:x_s.numel()].view(x_s.shape)
                                         for buffer in scratch)
                torch.clamp(x_s, -limit, limit, out=clamped)
                torch.eq(clamped, x_s, out=passed)  # |x| <= r: the gradient passes
                # side: +1 where x >= r, -1 where x <= -r, +-0 inside (|c / r| < 1 for |c| < r);
                # r in x's dtype, as the comparisons x >= r see it
                torch.div(clamped, r.to(x_s.dtype), rounding_mode="trunc", out=side)
            # grad * mask; a bool tensor seen as uint8 converts to float several times faster
            g_y = grad if mask is None else grad * mask.view(torch.uint8).to(grad.dtype)
            if want_w:
                x_q = (_quantize(clamped, step, True) if clips
                       else _quantize(x_s / step, step, False))
                if single:
                    grad_w = g_y.T @ x_q
                else:
                    torch.mm(g_y.T, x_q, out=grad_w[:, cols])
            g_q = g_y @ noisy_weights[index]
            if clips:  # else no |x| >= r: nothing blocked, no range gradient
                # sum of min(g, 0) over x >= r minus the sum of max(g, 0) over x <= -r
                value = torch.mul(g_q, side, out=side).clamp_(max=0).sum()
                grad_r[index] = input_range[index] * value
                if want_x:
                    g_q = g_q.mul_(passed) if single else torch.mul(g_q, passed,
                                                                      out=grad_x[:, cols])
            elif want_x and not single:
                grad_x[:, cols] = g_q
            if want_x and single:
                grad_x = g_q
        grad_x = None if grad_x is None else grad_x.reshape(x_shape)
        return grad_x, grad_w, grad_r, None, None, None, None


def _recomputing() -> bool:
    """Whether this forward runs inside a backward pass: gradient checkpointing
    recomputing a block (torch.utils.checkpoint replays it from the backward)."""
    return torch._C._current_graph_task_id() != -1


def _split(tensor: torch.Tensor, sizes: list[int]) -> Sequence[torch.Tensor]:
    """The input slices of the last dim (no split op for one slice)."""
    return (tensor,) if len(sizes) == 1 else tensor.split(sizes, dim=-1)


def _on_host(tensor: torch.Tensor) -> bool:
    """Whether the CPU shortcuts apply: they read values back (a sync on an accelerator)."""
    return tensor.device.type == "cpu"


def _limits(ranges: torch.Tensor, x: torch.Tensor) -> list[float] | list[torch.Tensor]:
    """The ranges as clamp bounds: Python floats on the CPU (where clamp with 0-d tensor
    bounds is several times slower than with numbers), 0-d tensors elsewhere (no sync).
    The floats are the ranges in x's dtype, the values x is compared with and clamped to."""
    return ranges.to(x.dtype).tolist() if _on_host(x) else list(ranges)


def _may_clip(x_s: torch.Tensor, limit: float | torch.Tensor) -> bool:
    """Whether some |x| >= r, or a NaN (on the CPU one min/max pass decides; elsewhere
    always, to avoid a device sync). On the full path a NaN input blocks its own gradient
    and makes the range gradient NaN."""
    if not isinstance(limit, float):
        return True
    # amax and amin, not aminmax: that one copies a strided slice first
    return not (float(x_s.amax()) < limit and float(x_s.amin()) > -limit)


def _quantize(scaled_or_clamped: torch.Tensor, step: torch.Tensor, clamped: bool
              ) -> torch.Tensor:
    """DAC: round(clamp(x, -r, r) / step) * step from the clamped x (a temporary, divided
    in place) or from x / step when nothing clips (clamp is the identity there)."""
    scaled = scaled_or_clamped.div_(step) if clamped else scaled_or_clamped
    return scaled.round_().mul_(step)


def _adc_clamp(y_q: torch.Tensor, bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ADC clamp of the rounded output to +-bound (per output channel) and the mask of the
    entries it leaves alone (|y_q| <= bound, where the gradient passes); None when that is
    every entry (on the CPU, two column max / min passes show it in the common case)."""
    if _on_host(y_q) and bool((y_q.amax(dim=0) <= bound).all()) and bool(
            (y_q.amin(dim=0) >= -bound).all()):
        return y_q, None
    clamped = torch.clamp(y_q, -bound, bound)
    # a float comparison then a cast: several times faster on the CPU than a bool comparison
    return clamped, torch.eq(clamped, y_q, out=torch.empty_like(y_q)).bool()


class AnalogTrainingLinear(nn.Linear):
    """An analog-placed nn.Linear for hardware-aware training (see the module docstring).

    It is an nn.Linear (weight [out, in], optional bias), so tools that act on linear
    layers (FSDP wrapping policies) see it as one. Extra state:
    ``input_range`` (one learned range per input slice), ``range_init_steps`` (how
    many forwards have initialised each range from data) and ``outliers`` (the outlier
    weights per row slice kept off the crossbar, 0: none); ``clip_counts`` (per slice, the
    inputs at or beyond their range and all inputs since the last apply_range_decay) is a
    plain attribute, out of DDP's buffer broadcast. With LoRA (add_lora) the crossbar
    holds the effective weight W + (alpha / rank) B A, clipped by the rule of clip_weights
    in every forward: its noise, quantization and clipping act on what merge_lora writes.
    """

    def __init__(self, linear: nn.Linear, hardware: HardwareConfig,
                 training: TrainingConfig) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.hardware, self.training_config = hardware, training
        self.sizes = slice_sizes(linear.in_features, hardware.max_in)
        device = linear.weight.device
        self.input_range = nn.Parameter(torch.ones(len(self.sizes), device=device))
        self.register_buffer("range_init_steps",
                             torch.zeros(len(self.sizes), dtype=torch.long, device=device))
        # digital per-input-channel scale s: the crossbar computes (x / s) @ (W diag(s))^T
        self.register_buffer("input_scale", torch.ones(linear.in_features, device=device))
        self.register_buffer("outliers", torch.zeros((), dtype=torch.long, device=device))
        self.clip_counts: torch.Tensor | None = None
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.lora_scaling = 0.0

    def add_lora(self, rank: int, alpha: float) -> None:
        """Train adapters instead of W: A [rank, in] Kaiming-uniform and B [out, rank] zeros
        (peft's initialisation, so the start is W), scaling alpha / rank; W is frozen."""
        device = self.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device))
        self.lora_scaling = alpha / rank
        self.weight.requires_grad_(False)

    def programmed_weight(self) -> torch.Tensor:
        """The crossbar's weight in float32: W diag(input_scale), or with LoRA (W + scaling
        B A) diag(input_scale) clipped as clip_weights clips (differentiable where not
        clipped)."""
        weight = self.weight
        if self.lora_A is not None:
            weight = weight + self.lora_scaling * (self.lora_B @ self.lora_A)
        if bool((self.input_scale != 1).any()):
            weight = weight * self.input_scale
        sigma = self.training_config.clip_sigma
        if self.lora_A is not None and sigma > 0:
            weight = clipped_rows(weight, self.sizes, int(self.outliers), sigma)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw, train = self.hardware, self.training_config
        kind = x.device.type
        if torch.is_autocast_enabled(kind):  # training.dtype: the crossbar path in that dtype
            x = x.to(torch.get_autocast_dtype(kind))
        weight = self.programmed_weight()  # outliers are chosen from it in float32
        if bool((self.input_scale != 1).any()):
            x = x / self.input_scale.to(x.dtype)
        outliers = None
        if int(self.outliers):
            indices = split_indices(weight.detach(), self.sizes, int(self.outliers))
            outliers = indices, weight.gather(1, indices).to(x.dtype)
            weight = weight.scatter(1, indices, 0.0)
        weight = weight.to(x.dtype)
        if self.training:
            if not _recomputing():  # else the statistics were taken when it first ran
                if int(self.range_init_steps.min()) < train.range_init_batches:
                    self._initialise_ranges(x)
                if train.range_decay > 0:
                    self._count_clipped(x)
            with torch.autocast(kind, enabled=False):
                out = AnalogTrainingFunction.apply(
                    x, weight, self.input_range, self.sizes, hw, train.weight_noise,
                    train.read_noise)
        else:
            out = ANALOG_LINEAR(x, weight, self.input_range.detach(), self.sizes, hw.inp_res,
                                hw.out_res, hw.out_bound, hw.out_noise)
        if outliers is not None:  # the compiled program's op, so eval mode equals it
            out = out + SPARSE_OUTLIERS(x, *outliers)
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def _count_clipped(self, x: torch.Tensor) -> None:
        """Add this forward's (inputs with |x| >= r, inputs) per slice to clip_counts."""
        counts = torch.stack([
            torch.stack([(part.abs() >= self.input_range[index]).sum().double(),
                         torch.tensor(float(part.numel()), dtype=torch.float64,
                                      device=part.device)])
            for index, part in enumerate(x.detach().reshape(-1, x.shape[-1])
                                         .split(self.sizes, dim=1))])
        self.clip_counts = counts if self.clip_counts is None else self.clip_counts + counts

    @torch.no_grad()
    def _initialise_ranges(self, x: torch.Tensor) -> None:
        """r_s <- running mean of kappa * std(x_s): std over the global batch, unbiased."""
        slices = x.detach().reshape(-1, x.shape[-1]).split(self.sizes, dim=1)
        stats = torch.stack([torch.stack([torch.tensor(float(s.numel()), dtype=torch.float64),
                                          s.double().sum().cpu(), s.double().square().sum().cpu()])
                             for s in slices])
        if dist.is_available() and dist.is_initialized():
            stats = stats.to(self.input_range.device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        count, total, squares = stats.unbind(dim=1)
        std = ((squares - total.square() / count) / (count - 1).clamp_min(1)).clamp_min(0).sqrt()
        kappa = self.training_config.range_kappa
        for index in range(len(self.sizes)):
            seen = int(self.range_init_steps[index])
            if seen >= self.training_config.range_init_batches or std[index] <= 0:
                continue
            value = (float(self.input_range[index]) * seen + kappa * float(std[index])) / (seen + 1)
            self.input_range[index] = abs(value)
            self.range_init_steps[index] += 1

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, slices={self.sizes}")


def convert_to_analog(model: nn.Module, config: AfmcConfig,
                      prefix: str = WRAPPER_PREFIX) -> list[str]:
    """Swap every analog-placed nn.Linear of `model` for an AnalogTrainingLinear, in place.

    Placement follows config.placement on the names compile sees (``prefix`` + module
    name), so a checkpoint compiles with the same layers analog. Returns their names.
    """
    rules = PlacementRules(config.placement)
    converted = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not nn.Linear:
                continue
            full = f"{name}.{child_name}" if name else child_name
            placement, _ = rules.decide([prefix + full], "linear")
            if placement == "analog":
                setattr(module, child_name,
                        AnalogTrainingLinear(child, config.hardware, config.training))
                converted.append(full)
    rules.check_all_used()
    if not converted:
        raise ValueError("the model has no analog-placed nn.Linear layer to train")
    return converted


def untie_analog_weights(model: nn.Module) -> dict[str, str]:
    """Give every analog layer whose weight is shared with another parameter (a tied LM
    head and input embedding) its own copy, so noise and clipping reach the analog copy
    alone and the digital table keeps its values; a Hugging Face model's config then
    says its embeddings are not tied (``tie_word_embeddings`` false), so the saved
    checkpoint loads as trained. Returns {analog layer: the parameter it was tied to}.
    Called before LoRA adapters are added."""
    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)
    untied = {}
    for name, layer in analog_layers(model):
        others = [owner for owner in owners[id(layer.weight)] if owner != f"{name}.weight"]
        if others:
            weight = layer.weight
            layer.weight = nn.Parameter(weight.detach().clone(),
                                        requires_grad=weight.requires_grad)
            untied[name] = others[0]
    config = getattr(model, "config", None)
    if untied and config is not None:
        for section in (config, config.get_text_config()):  # a multimodal model's text part
            if hasattr(section, "tie_word_embeddings"):
                section.tie_word_embeddings = False
    return untied


def analog_layers(model: nn.Module) -> Iterator[tuple[str, AnalogTrainingLinear]]:
    """(name, layer) of every AnalogTrainingLinear in `model`."""
    for name, module in model.named_modules():
        if isinstance(module, AnalogTrainingLinear):
            yield name, module


@torch.no_grad()
def apply_range_decay(model: nn.Module, decay: float, min_unclipped: float) -> None:
    """Once per optimizer step: add decay * r to the gradient of each input range whose
    slice had more than `min_unclipped` of its inputs unclipped over the step (all
    micro-batches, all processes: one all-reduce); then reset the counts."""
    layers = [layer for _, layer in analog_layers(model) if layer.clip_counts is not None]
    if not layers:
        return
    counts = torch.cat([layer.clip_counts for layer in layers])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    offset = 0
    for layer in layers:
        share = counts[offset:offset + len(layer.sizes)]
        offset += len(layer.sizes)
        unclipped = 1.0 - share[:, 0] / share[:, 1].clamp_min(1.0)
        ranges = layer.input_range
        term = decay * ranges.detach() * (unclipped > min_unclipped).to(ranges.dtype)
        ranges.grad = term if ranges.grad is None else ranges.grad + term
        layer.clip_counts = None


def clipped_rows(programmed: torch.Tensor, sizes: list[int], outliers: int,
                 sigma: float) -> torch.Tensor:
    """`programmed` [N, K] with every row clamped to +-sigma * std(row); the `outliers`
    largest |w| of each row slice are off the crossbar: they keep their values, and the
    std is that of the row without them. Gradients pass where nothing is clamped."""
    if outliers:
        indices = split_indices(programmed.detach(), sizes, outliers)
        values = programmed.gather(1, indices)
        programmed = programmed.scatter(1, indices, 0.0)
    bound = sigma * programmed.detach().std(dim=1, keepdim=True)
    clipped = torch.clamp(programmed, -bound, bound)
    return clipped.scatter(1, indices, values) if outliers else clipped


@torch.no_grad()
def clip_weights(model: nn.Module, sigma: float) -> None:
    """After an optimizer step: clamp every programmed weight row (W diag(input_scale))
    by the rule of clipped_rows (sigma 0: no clipping). A layer with LoRA is clipped in
    its forward instead (its W is frozen)."""
    if sigma <= 0:
        return
    for _, layer in analog_layers(model):
        if layer.lora_A is not None:
            continue
        scale = layer.input_scale
        weight = local_rows(layer.weight)  # a sharded weight's rows on this process
        programmed = clipped_rows(weight * scale, layer.sizes, int(layer.outliers), sigma)
        weight.copy_(programmed / scale)


def local_rows(weight: torch.Tensor) -> torch.Tensor:
    """The rows of `weight` this process holds: a weight sharded by rows (training.engine
    fsdp, afmc.train.engine) gives its local shard of whole rows, any other weight itself;
    in-place writes reach the weight."""
    from torch.distributed.tensor import DTensor

    return weight.to_local() if isinstance(weight, DTensor) else weight


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Write each LoRA layer's programmed weight (divided by its input scale) into W and
    drop the adapters: the crossbar then holds exactly what training saw."""
    for _, layer in analog_layers(model):
        if layer.lora_A is not None:
            layer.weight.copy_(layer.programmed_weight() / layer.input_scale)
            layer.lora_A = layer.lora_B = None


def learned_ranges(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: input ranges} of every analog layer, {module name + SCALE_SUFFIX:
    input scales} of the layers whose digital input scale is not 1, and {module name +
    OUTLIERS_SUFFIX: [m]} of the layers with outlier weights."""
    learned = {}
    for name, layer in analog_layers(model):
        learned[name] = layer.input_range.detach().float().cpu().clone()
        if bool((layer.input_scale != 1).any()):
            learned[name + SCALE_SUFFIX] = layer.input_scale.detach().float().cpu().clone()
        if int(layer.outliers):
            learned[name + OUTLIERS_SUFFIX] = layer.outliers.detach().cpu().reshape(1).clone()
    return learned


def restore_linears(model: nn.Module) -> None:
    """Swap every AnalogTrainingLinear back for a plain nn.Linear sharing its parameters."""
    for _, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, AnalogTrainingLinear):
                linear = nn.Linear(child.in_features, child.out_features, bias=False,
                                   device="meta")
                linear.weight, linear.bias = child.weight, child.bias
                setattr(module, child_name, linear)
