"""A compiled output opened once: ``afmc.load(OUT)``.

Rule: OUT/afmc.json and the graph of OUT/model.onnx are read once, when the
output is opened (the weights stay in the file until a session needs them); the
object then hands out any number of chips and FP views without reading either
again. How a target's output runs is the target's choice, written into the record
as "runtime" at compile time (afmc.targets.Target.runtime) and looked up here:

- "analog" (aimc): runtime.analog, one programming-noise draw per seed;
- "stored" (int8, int4, fp): runtime.stored, one noiseless chip.

Callers ask the object, never the record: ``varies_by_seed`` says whether seeds
give different chips.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx

from afmc.io.layout import MODEL_FILE, RECORD_FILE
from afmc.runtime.analog import AnalogRuntime
from afmc.runtime.bit_slicing import slicing_problem
from afmc.runtime.chip import Chip, load_model_file, load_record
from afmc.runtime.noise import NoiseConfig
from afmc.runtime.stored import StoredRuntime

if TYPE_CHECKING:
    from afmc.data.calibration import ModelSignature
    from afmc.data.tokenizer import Tokenizer
    from afmc.runtime.generation import Generation, GenerationOptions


class Runtime(Protocol):
    """How one target's compiled output runs."""

    varies_by_seed: bool

    def __init__(self, out_dir: Path, record: dict[str, Any],
                 graph: onnx.ModelProto) -> None: ...

    def chip(self, seed: int | None, *, read_noise: float = 0.0,
             noise: NoiseConfig | None = None, threads: int | None = None,
             analog_layers: Collection[str] | None = None) -> Chip: ...

    def fp_view(self, threads: int | None = None) -> Chip: ...


RUNTIMES: dict[str, type[Runtime]] = {"analog": AnalogRuntime, "stored": StoredRuntime}


class CompiledModel:
    """A compiled model: its record, its graph, and chips of it on ONNX Runtime.

    ``chip(seed)`` is one chip instance (seed None: the stored weights, no
    programming noise); ``fp_view()`` the floating-point model it was compiled
    from; ``run(*inputs, seed=0)`` runs chip `seed`, opened on first use and kept;
    ``generate(prompt_ids, options, seed=0)`` continues a prompt on that chip.
    """

    def __init__(self, out_dir: str | Path, *, weight_slices: int | None = None,
                 devices_per_weight: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.record = load_record(self.out_dir)
        self._override_hardware(weight_slices, devices_per_weight)
        kind = self.record.get("runtime")
        if kind not in RUNTIMES:
            raise ValueError(f"{self.out_dir / RECORD_FILE}: field 'runtime' is {kind!r}, "
                             f"expected one of {', '.join(RUNTIMES)} (compiled by an older "
                             "afmc? compile it again)")
        self.graph = load_model_file(self.out_dir / MODEL_FILE, weights=False)
        self.runtime: Runtime = RUNTIMES[kind](self.out_dir, self.record, self.graph)
        self._chips: dict[int | None, Chip] = {}

    def _override_hardware(self, slices: int | None, devices: int | None) -> None:
        """Chips with `slices` bit slices and `devices` device pairs per weight instead of
        the compiled hardware.weight_slices and devices_per_weight (None: as compiled), in
        this object's record only; the file is not touched. ValueError naming the option
        for a count below 1 or slices that do not fit the ADC."""
        hardware = self.record["config"]["hardware"]
        for name, value in (("weight_slices", slices), ("devices_per_weight", devices)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            hardware[name] = value
        problem = slicing_problem(self.weight_slices, int(hardware.get("weight_bits", 8)),
                                  float(hardware.get("out_res", 254.0)))
        if problem:
            raise ValueError(problem)

    @property
    def weight_slices(self) -> int:
        """Bit slices per weight of its chips (runtime.bit_slicing; 1: unsliced)."""
        return int(self.record["config"]["hardware"].get("weight_slices", 1))

    @property
    def devices_per_weight(self) -> int:
        """Device pairs per weight of its chips, averaged (runtime.noise; 1: one pair)."""
        return int(self.record["config"]["hardware"].get("devices_per_weight", 1))

    def hardware_counts(self) -> dict[str, int]:
        """The counts that load's overrides set: weight_slices and devices_per_weight."""
        return {"weight_slices": self.weight_slices,
                "devices_per_weight": self.devices_per_weight}

    @property
    def target(self) -> str:
        return self.record["target"]

    @property
    def varies_by_seed(self) -> bool:
        """Whether chips of different seeds differ (analog programming noise)."""
        return self.runtime.varies_by_seed

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model takes, when it is a language model that says so."""
        return self.record.get("max_positions")

    @property
    def has_analog_layers(self) -> bool:
        """Whether any layer was compiled onto analog tiles."""
        return bool(self.record.get("summary", {}).get("analog_layers"))

    @property
    def noise(self) -> NoiseConfig:
        """The programming-noise model the output was compiled with (chip's default)."""
        return NoiseConfig.model_validate(self.record["config"]["noise"])

    @property
    def has_tokenizer(self) -> bool:
        return bool(self.record.get("tokenizer"))

    def chip(self, seed: int | None = 0, *, read_noise: float = 0.0,
             noise: NoiseConfig | None = None, threads: int | None = None,
             analog_layers: Collection[str] | None = None) -> Chip:
        """Chip `seed`; `noise` replaces the record's programming-noise model and
        `read_noise` (relative std) adds fresh output noise on every inference.
        `analog_layers` (layer names of the record, aimc only): only those layers are
        analog, the others computed in floating point on the stored weights (None: all)."""
        if read_noise < 0:
            raise ValueError(f"read noise must be >= 0, got {read_noise}")
        return self.runtime.chip(seed, read_noise=read_noise, noise=noise, threads=threads,
                                 analog_layers=analog_layers)

    def fp_view(self, threads: int | None = None) -> Chip:
        """The floating-point model of the same output."""
        return self.runtime.fp_view(threads)

    def run(self, *inputs: np.ndarray, seed: int | None = 0) -> np.ndarray:
        """The first output of chip `seed` for `inputs` (in the order of the graph inputs)."""
        return self._kept_chip(seed).run(*inputs)

    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions | None = None, *,
                 seed: int | None = 0, read_noise: float = 0.0, fp: bool = False) -> Generation:
        """Continue `prompt_ids` on chip `seed` (fp=True: the FP view) with KV-cache
        decoding (runtime.generation: greedy by default, seeded sampling by `options`).
        Chip `seed` without read noise is the one `run` keeps."""
        from afmc.runtime.generation import GenerationOptions, generate

        if fp:
            chip = self.fp_view()
        elif read_noise > 0:
            chip = self.chip(seed, read_noise=read_noise)
        else:
            chip = self._kept_chip(seed)
        return generate(chip, self.record, prompt_ids, options or GenerationOptions())

    def _kept_chip(self, seed: int | None) -> Chip:
        """Chip `seed` without read noise, opened on first use and kept for run/generate."""
        if seed not in self._chips:
            self._chips[seed] = self.chip(seed)
        return self._chips[seed]

    def signature(self) -> ModelSignature:
        """The data inputs the model takes, read from its graph (data.onnx_signature): the
        graph inputs that are not initializers or a KV cache's pasts (filled empty when
        not given), and the vocabulary when an embedding reads input_ids; each float input
        with the max |x| of the calibration data (afmc.json's calibration_inputs)."""
        from dataclasses import replace

        import onnx_ir as ir

        from afmc.data.kv_cache import is_cache_name
        from afmc.data.onnx_signature import onnx_signature

        signature = onnx_signature(ir.from_proto(self.graph))
        calibrated = self.record.get("calibration_inputs", {})
        inputs = tuple(replace(spec, calibrated=calibrated.get(spec.name))
                       for spec in signature.inputs if not is_cache_name(spec.name))
        return replace(signature, inputs=inputs)

    def tokenizer(self) -> Tokenizer:
        """The tokenizer the model was compiled with; ValueError if it has none."""
        from afmc.data.tokenizer import compiled_tokenizer

        return compiled_tokenizer(self.out_dir, self.record)


def load(out_dir: str | Path, *, weight_slices: int | None = None,
         devices_per_weight: int | None = None) -> CompiledModel:
    """Open a compiled model (OUT of afmc compile): its record and graph, read once, hand
    out chips (`.chip(seed, read_noise=...)`), the FP view (`.fp_view()`) and `.run(...)`.
    `weight_slices` and `devices_per_weight` replace the compiled hardware's for its chips
    (and its cost: afmc.cost.estimate_record(model.record, ...)); the compile's choices
    (ranges, smoothing, split) stay those made for the compiled hardware."""
    return CompiledModel(out_dir, weight_slices=weight_slices,
                         devices_per_weight=devices_per_weight)
