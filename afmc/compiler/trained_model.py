"""What `afmc train` leaves beside the Hugging Face files, and how compile reads it.

OUT/afmc_ranges.safetensors holds the learned input ranges of every analog layer
by module name (one value per input slice); OUT/afmc_training.json the training
record, whose ``config`` is the afmc configuration the model was trained with
(hardware, placement, noise, training). Compiling such a directory for aimc uses
the learned ranges instead of calibrating, and the trained configuration unless
another is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

TRAINING_RECORD = "afmc_training.json"
RANGES_FILE = "afmc_ranges.safetensors"


def read_learned_ranges(model_dir: Path | None) -> dict[str, torch.Tensor] | None:
    """The learned ranges of a trained model directory, or None when it has none."""
    if model_dir is None or not (Path(model_dir) / RANGES_FILE).is_file():
        return None
    path = Path(model_dir) / RANGES_FILE
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"{path}: unreadable learned ranges ({error})") from None


def trained_config(model_dir: str | Path | None) -> dict[str, Any] | None:
    """The configuration (as a dict) a model directory was trained with, or None."""
    if model_dir is None:
        return None
    path = Path(model_dir) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["config"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not an afmc training record ({error})") from None
