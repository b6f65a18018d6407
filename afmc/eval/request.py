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


@dataclass(frozen=True)
class EvalPlan:
    """A checked request: the model, the evaluation's noise model, --jobs within the
    cores, the --drift times (None: no drift) and the --budget fraction (None: none)."""

    request: EvalRequest
    model: CompiledModel
    noise: NoiseConfig
    jobs: int
    times: list[float] | None
    budget: float | None

    def settings(self, **more: Any) -> dict[str, Any]:
        """The settings that key a result file (afmc.eval.results): the data, the noise
        model, the read noise, and `more`."""
        request = self.request
        data = request.text if request.inputs is None else str(request.inputs)
        return {"data": data, "noise": self.noise.model_dump(mode="json"),
                "read_noise": request.read_noise, **more}

    def noise_label(self) -> str:
        """The noise model's name, or the target's where chips do not vary by seed."""
        return self.noise.model if self.model.varies_by_seed else self.model.target
