"""Checks of the options of `afmc run`, `afmc eval` and `afmc generate`, before any work.

Every check raises a ValueError naming the option (one `error:` line at the command
line). An option that asks for more than the machine or the model has is cut, with
a `note:` line: --jobs to the cores, a sequence length to the model's context.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from afmc.runtime.compiled import CompiledModel
    from afmc.runtime.noise import NoiseModel

_MINIMUM = {"seeds": 1, "max_tokens": 1, "seq_len": 2, "top_k": 1, "max_new_tokens": 1,
            "jobs": 1}


def check_options(**options: float) -> None:
    """A ValueError naming the first option out of range: --seeds, --max-tokens,
    --max-new-tokens, --top-k and --jobs at least 1, --seq-len at least 2, --read-noise a finite
    number >= 0."""
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "read_noise":
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
        elif value < _MINIMUM[name]:
            raise ValueError(f"{flag} must be at least {_MINIMUM[name]}, got {value}")


def within_cores(jobs: int, out: Console) -> int:
    """--jobs, or the machine's core count when it has fewer, with a note: more processes
    than cores only share them."""
    cores = os.cpu_count() or 1
    if jobs <= cores:
        return jobs
    out.print(f"note: --jobs {jobs} cut to {cores}, the cores of this machine")
    return cores


def within_context(model: CompiledModel, length: int, option: str, out: Console) -> int:
    """`length`, or the model's context (record max_positions) when it is shorter: a
    sequence option is cut to what the model reads, with a note."""
    limit = model.max_positions
    if limit is None or length <= limit:
        return length
    out.print(f"note: {option} {length} cut to {limit}, the model's context "
              "(max_position_embeddings)")
    return limit


def noise_model(name: str | None) -> NoiseModel | None:
    """--noise as a NoiseModel name (None: not given); ValueError for an unknown one."""
    from typing import get_args

    from afmc.runtime.noise import NoiseModel

    known = get_args(NoiseModel)
    if name is not None and name not in known:
        raise ValueError(f"--noise {name!r}: unknown noise model (known: {', '.join(known)})")
    return name


def sensitivity_budget(sensitivity: bool, seed: int, budget: str | None,
                       rules: Path | None) -> float | None:
    """--budget as a fraction (None: not given); ValueError for a bad --seed or --budget,
    or for --budget/--rules without --sensitivity (--rules without --budget)."""
    from afmc.eval.sensitivity import parse_budget

    if not sensitivity:
        if budget is not None or rules is not None:
            raise ValueError("--budget and --rules go with --sensitivity")
        return None
    if seed < 0:
        raise ValueError(f"--seed must be at least 0, got {seed}")
    if rules is not None and budget is None:
        raise ValueError("--rules needs --budget (the keep-digital suggestion)")
    if rules is not None and not rules.parent.is_dir():
        raise ValueError(f"--rules {rules}: directory does not exist")
    return None if budget is None else parse_budget(budget)


def tensor_source(model: CompiledModel, text: str | None, inputs: Path | None) -> Path | None:
    """The --inputs file, or None for --text; exactly one of the two, and --text only for a
    model compiled with a tokenizer."""
    if text is not None and inputs is not None:
        raise ValueError("give either --text or --inputs, not both")
    if text is None and inputs is None:
        raise ValueError("give --text FILE (language models, encoders) or --inputs FILE "
                         "(tensors keyed by input name)")
    if text is not None and not model.has_tokenizer:
        raise ValueError(f"{model.out_dir}: compiled model has no tokenizer; give --inputs FILE "
                         "(tensors keyed by input name)")
    return inputs
