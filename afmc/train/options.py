"""The ranges of ``afmc train``'s own options, checked before anything loads.

Rules: --steps >= 0, --lora-rank >= 0, --max-minutes positive and finite,
--device cpu, cuda or cuda:N, and --data an afmc synth directory, a built-in
text (stdlib:...) or a text file that read_text accepts (read here, so a bad
file fails before the model loads); for an ONNX model, an existing tensor file
(.npy, .npz, .pt), whose arrays the trainer checks against the model's inputs.
Each violation is a ValueError (or OSError) naming the option or the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from afmc.data.tensors import SUFFIXES
from afmc.data.text_source import BUILTIN_TEXTS, read_text

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_train_options(*, model: str, data: str, steps: int | None, lora_rank: int | None,
                        max_minutes: float | None, device: str) -> None:
    """Raise naming the first option of ``afmc train`` that is out of range."""
    if steps is not None and steps < 0:
        raise ValueError(f"--steps must be at least 0 (0: the start only), got {steps}")
    if lora_rank is not None and lora_rank < 0:
        raise ValueError(f"--lora-rank must be >= 0 (0: full fine-tuning), got {lora_rank}")
    if max_minutes is not None and not (math.isfinite(max_minutes) and max_minutes > 0):
        raise ValueError(f"--max-minutes must be positive and finite, got {max_minutes}")
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if model.lower().endswith(".onnx"):
        if Path(data).suffix not in SUFFIXES or not Path(data).is_file():
            raise ValueError(f"--data {data}: an ONNX model trains on its inputs, a tensor file "
                             f"({', '.join(SUFFIXES)}) that exists")
        return
    if data in BUILTIN_TEXTS or Path(data).is_dir():
        return
    if not data.startswith("stdlib:") and not Path(data).is_symlink() and \
            not Path(data).exists():
        raise FileNotFoundError(f"--data {data}: no such file or directory (expected afmc "
                                f"synth output, a text file or one of {', '.join(BUILTIN_TEXTS)})")
    read_text(data)
