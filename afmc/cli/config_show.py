"""`afmc config show [--target T]`: the default configuration as commented YAML.

Every section and field carries its description as a comment, and the text loads back
with `afmc compile --config FILE` into the same configuration. With a target, only the
sections that `afmc compile --target T` reads are printed (the others keep their
defaults; `training` is read by `afmc train`).
"""

from __future__ import annotations

import textwrap
from typing import Literal, get_args, get_origin

import yaml
from pydantic import BaseModel

from afmc.config import AfmcConfig

WIDTH = 88
# The sections each target's passes, lowering and fidelity check read.
TARGET_SECTIONS: dict[str, tuple[str, ...]] = {
    "aimc": ("hardware", "calibration", "smoothing", "outliers", "noise", "placement"),
    "int8": ("calibration", "smoothing", "placement", "digital"),
    "int4": ("calibration", "placement", "digital"),
    "fp": (),
}


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(" ".join(text.split()), WIDTH - len(indent) - 2,
                         initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _section(name: str, section: BaseModel) -> list[str]:
    """One section: its docstring's first line, then every field under its description."""
    doc = (type(section).__doc__ or "").strip().split("\n\n")[0]
    lines = [*_comment(doc, ""), f"{name}:"]
    values = section.model_dump(mode="json")
    for field, info in type(section).model_fields.items():
        choices = get_args(info.annotation) if get_origin(info.annotation) is Literal else ()
        lines += _comment(" ".join(filter(None, (
            info.description, f"One of: {', '.join(map(str, choices))}." if choices else ""))),
            "  ")
        dumped = yaml.safe_dump({field: values[field]}, sort_keys=False,
                                default_flow_style=False, width=WIDTH)
        lines += [f"  {line}" for line in dumped.splitlines()]
    return lines


def config_yaml(config: AfmcConfig | None = None, target: str | None = None) -> str:
    """The configuration (default: the defaults) as commented YAML; with `target`, only the
    sections it reads. An unknown target is an error naming the known ones."""
    config = config or AfmcConfig()
    if target is None:
        names = list(AfmcConfig.model_fields)
        lines = ["# afmc configuration (afmc config show): use with afmc compile --config FILE"]
    else:
        from afmc.targets import get_target

        names = list(TARGET_SECTIONS[get_target(target).name])
        lines = [f"# afmc config show --target {target}: the sections afmc compile --target "
                 f"{target} reads", "# (the others keep their defaults); use with --config FILE"]
    for name in names:
        lines += ["", *_section(name, getattr(config, name))]
    if not names:
        lines += ["", "{}  # this target reads no section"]
    return "\n".join(lines) + "\n"
