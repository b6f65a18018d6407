"""What `afmc eval` was asked (EvalRequest, the options as given) and what its checked
options make of it (EvalPlan: the model opened, the noise model, the drift times)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afmc.runtime.compiled import CompiledModel
    from afmc.runtime.noise import NoiseConfig


@dataclass(frozen=True)
class EvalRequest:
    """The options of afmc eval as the command line gives them (afmc.cli documents each)."""

    compiled: Path
    text: str | None = None
    inputs: Path | None = None
    labels: Path | None = None
    seeds: int = 5
    max_tokens: int = 16384
    seq_len: int = 256
    read_noise: float = 0.0
    drift: str | None = None
    noise: str | None = None
    gdc: bool | None = None
    jobs: int = 1
    json_out: Path | None = None
    task: Path | None = None
    samples: int = 8
    vote: str = "majority"
    temperature: float = 1.0
    sensitivity: bool = False
    seed: int = 0
    budget: str | None = None
    rules: Path | None = None
    weight_slices: int | None = None
    devices_per_weight: int | None = None
    profile: str | None = None

    def chip_seeds(self) -> list[int]:
        """The chips every mode evaluates: seeds 0 .. --seeds - 1, the same chips in every
        mode, so that a chip's numbers compare across modes (a digital target runs its
        stored model once instead; the evaluation that meets it says so)."""
        return list(range(self.seeds))


@dataclass(frozen=True)
class EvalPlan:
    """A checked request: the model, the evaluation's noise model, --jobs within the
    cores, the --drift times (None: no drift), the --budget fraction (None: none) and,
    with --profile, the cost of the model's chips on it (afmc.cost: its totals and the
    ratios against the digital baseline) and the lines that print it."""

    request: EvalRequest
    model: CompiledModel
    noise: NoiseConfig
    jobs: int
    times: list[float] | None
    budget: float | None
    cost: dict[str, Any] | None = None
    cost_lines: tuple[str, ...] = ()

    def settings(self, **more: Any) -> dict[str, Any]:
        """The settings that key a result file (afmc.eval.results): the data, the noise
        model, the read noise, and `more`."""
        request = self.request
        data = request.text if request.inputs is None else str(request.inputs)
        # the chips' hardware counts where not 1 (the keys of one-device chips unchanged)
        counts = {name: value for name, value in self.model.hardware_counts().items()
                  if value != 1}
        return {"data": data, "noise": self.noise.model_dump(mode="json"),
                "read_noise": request.read_noise, **counts, **more}

    def noise_label(self) -> str:
        """The noise model's name (with the bit slices and device pairs per weight where
        not 1), or the target's where chips do not vary by seed."""
        if not self.model.varies_by_seed:
            return self.model.target
        slices, devices = self.model.weight_slices, self.model.devices_per_weight
        return (self.noise.model + (f", {slices} bit slices" if slices > 1 else "")
                + (f", {devices} devices per weight" if devices > 1 else ""))

    def with_cost(self, result: dict[str, Any]) -> dict[str, Any]:
        """`result` with the --profile cost under "cost" (unchanged without --profile)."""
        return result if self.cost is None else {**result, "cost": self.cost}
