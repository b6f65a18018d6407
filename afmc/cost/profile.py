"""Hardware profiles for the cost model: what one conversion, MAC, byte and tile costs.

Rules:
- A profile is a YAML mapping validated by HardwareProfile (pydantic, frozen, no unknown
  fields). `kind: analog` needs `tile`, `cores`, `adc`, `dac` and `crossbar`; `kind:
  digital` (a plain digital baseline: every layer as digital MACs) must have none of them.
  Every number is finite and >= 0; tile rows, cols, cores, clock, MAC and byte rates and
  weight bits are > 0.
- `sources` maps each field (dotted, as ``adc.energy_pj``) to where its number comes
  from; the built-in profiles cite every numeric field (a test holds this).
- `load_profile(name_or_path)`: a built-in name (afmc/cost/profiles/NAME.yaml) or a YAML
  file. An unknown name, a file that does not parse, or a missing, negative or unknown
  field is a ConfigError naming the profile and the field (``adc.energy_pj: ...``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from afmc.config import ConfigError

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
PROFILE_DIR = "profiles"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TileSpec(_Section):
    """One crossbar tile (one core): its weight rows x columns and its silicon area."""

    rows: int = Field(gt=0, description="Crossbar rows: inputs of one tile read.")
    cols: int = Field(gt=0, description="Crossbar columns: outputs (one ADC each).")
    area_mm2: NonNegative = Field(description="Area of one tile with its periphery (mm^2).")


class Converter(_Section):
    """One ADC or DAC: energy and time of one conversion. A tile's converters work in
    parallel, so a tile read takes dac.time_ns + adc.time_ns whatever its size."""

    energy_pj: NonNegative = Field(description="Energy of one conversion (pJ).")
    time_ns: NonNegative = Field(description="Time of one conversion (ns).")


class Crossbar(_Section):
    energy_pj_per_mac: NonNegative = Field(
        description="Array read energy per analog MAC (one weight cell read, pJ).")


class DigitalUnit(_Section):
    """The digital MAC engine: digital layers and the sparse outlier path."""

    mac_energy_pj: NonNegative = Field(description="Energy of one digital MAC (pJ).")
    macs_per_cycle: Positive = Field(description="MACs the engine completes per clock cycle.")
    weight_bits: int = Field(gt=0, description="Bits of one digital weight read from memory.")


class Memory(_Section):
    """Where digital weights live: energy and bandwidth of weight traffic."""

    energy_pj_per_byte: NonNegative = Field(description="Energy to read one byte (pJ).")
    bytes_per_cycle: Positive = Field(description="Bytes read per clock cycle.")


class HardwareProfile(_Section):
    """A named hardware profile (module rules)."""

    name: str
    kind: Literal["analog", "digital"]
    description: str = ""
    clock_ghz: Positive = Field(description="Clock of the digital unit and the memory (GHz).")
    pipelining: Literal["sequential", "dataflow"] = Field(
        description="sequential: layers one after another; dataflow: a layer starts when the "
        "layers it depends on are done (docs/cost.md).")
    digital: DigitalUnit
    memory: Memory
    tile: TileSpec | None = None
    cores: int | None = Field(None, gt=0, description="Tiles (cores) on one chip.")
    adc: Converter | None = None
    dac: Converter | None = None
    crossbar: Crossbar | None = None
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sections_of_kind(self) -> HardwareProfile:
        analog = ("tile", "cores", "adc", "dac", "crossbar")
        for name in analog:
            present = getattr(self, name) is not None
            if self.kind == "analog" and not present:
                raise ValueError(f"{name}: required for an analog profile")
            if self.kind == "digital" and present:
                raise ValueError(f"{name}: not allowed in a digital profile")
        return self

    @property
    def tile_read_ns(self) -> float:
        """Time of one tile read: the DACs drive the rows, then the ADCs convert."""
        if self.adc is None or self.dac is None:
            return 0.0
        return self.dac.time_ns + self.adc.time_ns

    def numeric_fields(self) -> list[str]:
        """The dotted names of every number in the profile (those `sources` should cite)."""
        names = []
        for field, value in self:
            if isinstance(value, _Section):
                names += [f"{field}.{sub}" for sub, number in value
                          if isinstance(number, (int, float))]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                names.append(field)
        return names


def builtin_profiles() -> list[str]:
    """The names of the built-in profiles, sorted."""
    folder = resources.files("afmc.cost") / PROFILE_DIR
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir()
                  if entry.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A built-in profile by name, or the profile in a YAML file (module rules)."""
    text = str(name_or_path)
    if text in builtin_profiles():
        return _builtin(text)
    path = Path(text)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        raise ConfigError(f"unknown hardware profile {text!r} (built in: "
                          f"{', '.join(builtin_profiles())}; or a YAML file)")
    from afmc.io.input_files import read_utf8_text

    return parse_profile(read_utf8_text(path, "hardware profile"), str(path))


@cache
def _builtin(name: str) -> HardwareProfile:
    text = (resources.files("afmc.cost") / PROFILE_DIR / f"{name}.yaml").read_text("utf-8")
    return parse_profile(text, f"profile {name}")


def parse_profile(text: str, source: str) -> HardwareProfile:
    """Validate the YAML `text` of a profile; errors name `source` and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a profile must be a mapping of fields")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "<root>"
        message = first["msg"].removeprefix("Value error, ")
        if message.startswith(tuple(f"{name}:" for name in ("tile", "cores", "adc", "dac",
                                                            "crossbar"))):
            raise ConfigError(f"{source}: {message}") from None
        raise ConfigError(f"{source}: {field}: {message}") from None
