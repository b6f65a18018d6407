"""The one validated configuration object of afmc.

Every knob of the analog forward path (shared/HARDWARE.md, `afm` profile), the
calibration and the programming-noise model is a field here. Configurations
load from YAML or JSON and take CLI overrides of the form ``section.field=value``;
unknown or invalid values are rejected with a message naming the file (or the
override) and the field. Numbers must be finite (no inf or nan); ranges, bounds,
resolutions, sizes and counts must be positive, noise and decay strengths >= 0.
A configuration file must be UTF-8 and parse as YAML (JSON for ``*.json``);
errors name the file and the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from afmc.runtime.bit_slicing import slicing_problem
from afmc.runtime.noise import NoiseConfig


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HardwareConfig(_Section):
    """The analog crossbar forward path of one linear layer (HARDWARE.md steps 1-7)."""

    max_in: int = Field(
        512, description="Crossbar rows: the input dimension is split into slices of at most "
        "this size; -1 disables splitting."
    )
    inp_res: float = Field(254.0, gt=1, description="DAC steps over [-r, r] (254: 8 bit).")
    out_res: float = Field(254.0, gt=1, description="ADC steps over [-b, b] (254: 8 bit).")
    out_bound: float = Field(14.0, gt=0, description="ADC bound b = out_bound * r * w_max.")
    out_noise: float = Field(
        0.0, ge=0, description="Read noise std on the output, relative to r * w_max / sqrt(n)."
    )
    tile_rows: int = Field(512, gt=0, description="Rows of one physical crossbar tile.")
    tile_cols: int = Field(512, gt=0, description="Columns of one physical crossbar tile.")
    tile_strategy: Literal["one-per-tile", "packed", "diagonal"] = Field(
        "one-per-tile", description="How analog weight blocks are assigned to tiles "
        "(docs/tile-mapping.md).")
    devices_per_weight: int = Field(
        1, ge=1, description="Device pairs each weight is programmed on; the read-out "
        "averages them, so programming noise variance / d; costs d times the tiles "
        "(docs/evaluation.md).")
    weight_slices: int = Field(
        1, ge=1, le=8, description="Bit slices per weight (CrossSim's bit slicing): the "
        "weight, quantized to weight_bits, spread over this many device pairs of different "
        "significance, each with its own programming noise, range and ADC, recombined "
        "digitally; costs that many times the tiles and conversions (docs/cost.md). 1: "
        "one device pair, no quantization.")
    weight_bits: int = Field(
        8, ge=2, le=16, description="With weight_slices > 1: signed bits of the quantized "
        "weight that the slices hold (bits per slice: weight_bits / weight_slices, rounded "
        "up as CrossSim does).")

    @model_validator(mode="after")
    def _slices_fit_tiles(self) -> HardwareConfig:
        if self.max_in > self.tile_rows:
            raise ValueError(f"max_in ({self.max_in}) must be <= tile_rows ({self.tile_rows}): "
                             "an input slice must fit a tile's rows")
        return self

    @model_validator(mode="after")
    def _bit_slices_fit_adc(self) -> HardwareConfig:
        problem = slicing_problem(self.weight_slices, self.weight_bits, self.out_res)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def copies(self) -> int:
        """Device blocks per weight block: devices_per_weight x weight_slices (the tile
        map's and the cost model's copies)."""
        return self.devices_per_weight * self.weight_slices

    @field_validator("max_in")
    @classmethod
    def _max_in_positive_or_off(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("max_in must be a positive row count, or -1 for no split")
        return value

    @field_validator("inp_res", "out_res")
    @classmethod
    def _even_resolution(cls, value: float) -> float:
        if value != int(value) or int(value) % 2:
            raise ValueError("resolution must be an even number of steps (254 for 8 bit)")
        return value


class CalibrationConfig(_Section):
    """How static input ranges are initialised from sample data."""

    # search measured best on SmolLM2-135M and afmc-tiny (benchmarks/real_llm.py,
    # benchmarks/calibration_methods.py; docs/real-models.md).
    method: Literal["max", "percentile", "kappa-std", "search"] = "search"
    percentile: float = Field(99.995, gt=0, le=100)
    kappa: float = Field(18.0, gt=0, description="kappa-std: r = running mean of kappa*std(x).")
    max_tokens: int = Field(8192, gt=0, description="Tokens of calibration text to run.")
    seq_len: int = Field(256, gt=1)
    batch_size: int = Field(8, gt=0)
    held_back: int = Field(
        2, ge=0, description="Token windows of calibration text held back from calibration "
        "for the fidelity check that ends a compile (0: no check).")
    search_rows: int = Field(
        256, gt=0, description="search: uniform input rows per layer on which each slice's "
        "range is chosen by its output error, with an eighth as many extreme rows (largest "
        "max |x|, afmc.passes.row_sample) weighted by their frequency.")
    search_outputs: int | None = Field(
        512, gt=0, description="search: weight rows (output channels) per slice, evenly "
        "spaced, whose output error chooses the range (null: every row). The search's cost "
        "is one [search_rows, k] x [k, search_outputs] product per candidate range.")
    objective: Literal["chip", "noise-free"] = Field(
        "chip", description="search (and the chip-aware passes): score the expected output "
        "error on a chip of noise.model (quantization plus the programming noise's closed-form "
        "variance), or the noise-free error only.")
    clip_weights: bool = Field(
        False, description="search: also choose a clipping bound per weight row (multiples of "
        "the row's std) with the range. The clipped weights are programmed and stored, so "
        "the file's FP view then computes with them, not with the original weights.")


class SmoothingConfig(_Section):
    """The smooth-inputs pass: input-channel scales x_max^alpha / w_max^(1 - alpha)."""

    # 0.85 measured best without programming noise on SmolLM2-135M; 0.5 is 2.4x better on
    # pcm chips but 1.3x worse without noise (docs/real-models.md).
    alpha: float = Field(0.85, ge=0, le=1, description="Migration strength: 0 leaves the "
                         "inputs as they are, 1 moves their whole range into the weights.")
    alphas: tuple[float, ...] = Field(
        (0.3, 0.5, 0.7, 0.85), min_length=1, description="chip-smooth-inputs (the aimc "
        "target): the strengths among which each layer group's is chosen by its expected chip "
        "error, besides no smoothing.")

    @field_validator("alphas")
    @classmethod
    def _alphas_in_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= alpha <= 1 for alpha in value):
            raise ValueError("every alpha must be in [0, 1]")
        return value


class OutlierConfig(_Section):
    """The split-outliers pass: each crossbar row slice's largest weights in an exact digital
    sparse path (afmc/passes/fx/split_outliers.py)."""

    budget: float = Field(
        0.01, ge=0, le=0.25, description="Fraction of all analog weights that may move to the "
        "digital sparse path, given out by the chip objective (0: no split).")
    max_per_slice: int = Field(
        16, ge=1, description="Most outlier weights per row and input slice of one layer.")
    sample_rows: int = Field(
        128, gt=0, description="Uniform calibration input rows per layer that score the "
        "split and chip-smooth-inputs, with an eighth as many extreme rows weighted by their "
        "frequency (afmc.passes.row_sample).")


class PlacementRule(_Section):
    """One placement rule: layers it matches go `place`. Give exactly one of name, regex, op."""

    place: Literal["analog", "digital"]
    name: str | None = Field(None, description="Exact layer (module) name.")
    regex: str | None = Field(None, description="Regular expression searched in the name.")
    op: str | None = Field(None, description="Op type: linear, addmm, mm, matmul (torch); "
                           "matmul, gemm, conv (ONNX); case-insensitive.")

    @model_validator(mode="after")
    def _one_selector(self) -> PlacementRule:
        given = [key for key in ("name", "regex", "op") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("a placement rule needs exactly one of name, regex, op")
        return self


class PlacementConfig(_Section):
    """Which static-weight layers go analog: ordered rules, first match wins, default analog.

    Order: `lm_head: digital` (the one flag), then `digital` (regexes, CLI --digital),
    then `rules`.
    """

    lm_head: Literal["analog", "digital"] = "analog"
    digital: tuple[str, ...] = ()
    rules: tuple[PlacementRule, ...] = ()
    grouped_convs: Literal["analog", "digital"] = Field(
        "digital", description="Grouped and depthwise convolutions on crossbars: digital "
        "(default), or analog as a block-diagonal weight (each input slice holds whole or "
        "partial groups, its tiles only the columns of those groups; docs/vision.md).")


class DigitalConfig(_Section):
    """The digital targets int8 and int4: how ONNX Runtime's quantizers store each layer."""

    int8_format: Literal["qdq", "qoperator"] = Field(
        "qdq", description="qdq: QuantizeLinear/DequantizeLinear around each MatMul, which ONNX "
        "Runtime fuses into MatMulIntegerToFloat; qoperator: QLinearMatMul in the file (its "
        "output is re-quantized to 8 bit)."
    )
    int8_per_channel: bool = Field(
        True, description="int8 weight scales per output channel (False: one scale per layer)."
    )
    int8_calibration: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="How the static 8-bit activation ranges are set from the "
        "calibration data (ONNX Runtime's MinMax, Percentile or Entropy calibrator)."
    )
    int8_percentile: float = Field(
        99.999, gt=0, le=100, description="Percentile of |x| kept by int8_calibration=percentile."
    )
    int4_block_size: Literal[32, 128] = Field(
        32, description="int4 weights, and quantized embedding tables of both targets, share "
        "one scale per block of this many input values."
    )
    int4_symmetric: bool = Field(
        False, description="int4 weights symmetric (no zero points); False (the default) "
        "gives each block a float zero point, so its grid runs from its minimum to its "
        "maximum: skewed blocks fit better, and weights read from a GGUF Q4_1 file keep "
        "their own grid exactly."
    )
    int4_accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="MatMulNBits compute type: 4 quantizes activations to int8 on the fly "
        "(the fast CPU path); 0 dequantizes weights to float (not faster than FP32 on CPU)."
    )
    int4_algorithm: Literal["rtn", "gptq"] = Field(
        "rtn", description="rtn: afmc's round-to-nearest on each block's grid; gptq: ONNX "
        "Runtime's GPTQ on the calibration data."
    )
    int4_keep_8bit: tuple[str, ...] = Field(
        (), description="Regular expressions on layer names (and quantized embedding tables): "
        "matches are stored at 8 bit in the int4 target (e.g. lm_head)."
    )
    quantize_embeddings: bool = Field(
        False, description="Store embedding tables (Gather of a 2-D weight) at the target's "
        "precision with GatherBlockQuantized; False keeps them float."
    )


class TrainingConfig(_Section):
    """Hardware-aware training (HARDWARE.md "Training-time behaviour"; AFM values as defaults)."""

    weight_noise: float = Field(
        0.03, ge=0, description="Weight noise injected in every training forward: std relative "
        "to each row's max |W| (per input slice), fresh every forward; 0 disables.")
    read_noise: float = Field(
        0.0, ge=0, description="Read noise on the crossbar output in training, relative to "
        "r * w_max / sqrt(n) as hardware.out_noise; 0 disables.")
    clip_sigma: float = Field(
        2.5, ge=0, description="After every optimizer step each analog weight row is clamped to "
        "+-clip_sigma * std(row); 0 disables.")
    range_init_batches: int = Field(
        500, ge=0, description="Training batches over which each input range is the running "
        "mean of range_kappa * std(x) before it is learned.")
    range_kappa: float = Field(18.0, gt=0, description="kappa of the range initialisation.")
    range_init: Literal["kappa-std", "search"] = Field(
        "kappa-std", description="kappa-std (AFM): ranges from the data of the first "
        "range_init_batches steps; search: before the first step, each slice's range that "
        "minimises the layer's output error on the teacher's activations (as "
        "calibration.method=search), with no data initialisation afterwards.")
    smoothing: bool = Field(
        False, description="Before the first step, give each group of analog layers reading "
        "the same activation a digital per-input-channel scale x_max^alpha / w_max^(1 - alpha) "
        "at the alpha among smoothing.alphas (or none) of lowest expected chip error, exact in "
        "floating point, as the aimc compile's chip-smooth-inputs does (not in AFM).")
    split_outliers: bool = Field(
        False, description="Model the compile's outlier split: before the first step each "
        "analog layer gets its count m of outlier weights per row slice by the chip objective "
        "within outliers.budget (as split-outliers), and every forward takes the m largest "
        "|w| of each row slice out of the crossbar (no noise, no clipping, an exact digital "
        "product); compile splits the trained model with the same m (not in AFM).")
    range_decay: float = Field(
        0.01, ge=0, description="Input-range decay: decay * r is added to the range gradient "
        "when more than range_min_unclipped of the inputs are not clipped.")
    range_min_unclipped: float = Field(0.95, gt=0, le=1)
    temperature: float = Field(1.0, gt=0, description="Distillation temperature T.")
    distill_weight: float = Field(
        1.0, ge=0, le=1, description="beta: loss = beta * T^2 * KL(teacher || student) + "
        "(1 - beta) * next-token cross-entropy (AFM: 1, pure distillation).")
    objective: Literal["auto", "kl", "mse"] = Field(
        "auto", description="The loss of a model trained from an ONNX file, on its first "
        "output: kl, T^2 * KL(teacher || student) over the last axis (logits); mse, the mean "
        "squared error over the teacher's mean square (embeddings); auto: kl for a [samples, "
        "classes] output, else mse. A causal LM always uses distill_weight's loss.")
    learning_rate: float = Field(2e-5, gt=0, description="AdamW learning rate of the weights.")
    range_learning_rate: float = Field(
        1e-3, gt=0, description="Relative AdamW learning rate of the input ranges (no weight "
        "decay): each layer's is this times its mean range, so a range moves by about this "
        "share of its value per step.")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.016, ge=0, lt=1, description="Warm-up fraction of the steps.")
    schedule_power: float = Field(1.0, gt=0, description="Polynomial decay power to 0.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clipping; 0 disables.")
    seq_len: int = Field(256, gt=1, description="Tokens per training sequence.")
    batch_size: int = Field(8, gt=0, description="Sequences per step, over all processes.")
    grad_accumulation: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    steps: int = Field(1000, ge=0, description="Optimizer steps; 0 writes the student's start "
                       "(the control of what training adds: the same preparation and range "
                       "initialisation, the weights clipped, no update).")
    checkpoint_every: int = Field(100, gt=0, description="Steps between checkpoints.")
    seed: int = 0
    lora_rank: int = Field(0, ge=0, description="LoRA adapters of this rank on the "
                           "analog layers instead of full fine-tuning; 0: full fine-tuning.")
    lora_alpha: float = Field(16.0, gt=0)
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="bfloat16: the teacher is held in bfloat16 and the student's "
        "forward and backward run under bfloat16 autocast (activations in bfloat16); the "
        "student's weights, their gradients, the optimizer state, the input ranges and the "
        "loss stay float32.")
    gradient_checkpointing: bool = Field(
        False, description="Keep only each decoder block's input in the forward and "
        "recompute the block in the backward (the same weight noise: the random state is "
        "replayed): activation memory of one block instead of all.")
    engine: Literal["ddp", "fsdp"] = Field(
        "ddp", description="How processes under torchrun share the work: ddp replicates the "
        "student on every process; fsdp (FSDP2, torch.distributed.fsdp.fully_shard) shards "
        "its weights, gradients and optimizer state by rows over the processes (each decoder "
        "block and the rest), the input ranges replicated; needs at least 2 processes.")

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainingConfig:
        if self.batch_size % self.grad_accumulation:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of "
                             f"grad_accumulation ({self.grad_accumulation})")
        return self


class AfmcConfig(_Section):
    """The whole configuration: hardware, calibration, noise, placement, digital targets,
    training."""

    hardware: HardwareConfig = HardwareConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    smoothing: SmoothingConfig = SmoothingConfig()
    outliers: OutlierConfig = OutlierConfig()
    noise: NoiseConfig = NoiseConfig()
    placement: PlacementConfig = PlacementConfig()
    digital: DigitalConfig = DigitalConfig()
    training: TrainingConfig = TrainingConfig()


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "<root>"
    return f"{field}: {first['msg']}"


def config_from_dict(data: dict[str, Any], source: str = "configuration") -> AfmcConfig:
    """Validate a nested dict into an AfmcConfig; errors name the source and field."""
    try:
        return AfmcConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None


def load_config(path: Path | None, overrides: list[str] | tuple[str, ...] = (),
                base: dict[str, Any] | None = None) -> AfmcConfig:
    """Load a YAML/JSON file (or `base`, or the defaults) and apply ``section.field=value``
    overrides; an invalid value's error names the override that set it, else the file."""
    data: dict[str, Any] = dict(base or {})
    source = "trained configuration" if base else "defaults"
    if path is not None:
        source = str(path)
        data = _read_config_file(Path(path))
    for override in overrides:
        _apply_override(data, override)
    try:
        return AfmcConfig.model_validate(data)
    except ValidationError as error:
        field = [str(part) for part in error.errors()[0]["loc"][:2]]
        named = [o for o in overrides if o.partition("=")[0].strip().split(".") == field]
        where = f"--set {named[-1]}" if named else source
        raise ConfigError(f"{where}: {_describe(error)}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    """The mapping of sections in the YAML/JSON file `path` (see the module rules)."""
    from afmc.io.input_files import parse_json, read_utf8_text

    try:
        text = read_utf8_text(path, "configuration file")
        loaded = parse_json(text, path) if path.suffix == ".json" else yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    except (OSError, ValueError) as error:
        from afmc.io.user_errors import user_message

        raise ConfigError(user_message(error)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {override!r}: expected section.field=value")
    section, field = parts
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    data.setdefault(section, {})
    if not isinstance(data[section], dict):
        raise ConfigError(f"--set {override!r}: {section} is not a section")
    data[section][field] = value
