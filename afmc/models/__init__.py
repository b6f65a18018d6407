"""Models that ship with afmc, and resolution of a model argument to a directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaConfig

_HERE = Path(__file__).resolve().parent

BUILTIN_MODELS: dict[str, Path] = {
    "afmc-tiny": _HERE / "afmc-tiny",
    "afmc-adder": _HERE / "afmc-adder",
}

# a built-in model's default calibration text (afmc compile without --calib)
BUILTIN_CALIBRATION: dict[str, str] = {
    "afmc-tiny": "stdlib:calibration",
    "afmc-adder": str(_HERE / "afmc-adder" / "calibration.txt"),
}


def resolve_model_path(name_or_path: str) -> Path:
    """The directory of a built-in model name, or ``name_or_path`` as an existing
    directory or ``*.gguf`` file.

    Raises ``FileNotFoundError`` when it is none of these.
    """
    if name_or_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[name_or_path]
    path = Path(name_or_path).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf")):
        builtins = ", ".join(sorted(BUILTIN_MODELS))
        raise FileNotFoundError(
            f"model not found: {name_or_path} is not a directory, a GGUF file (*.gguf) "
            f"nor a built-in model ({builtins})"
        )
    return path


def model_paths(model: object) -> list[Path]:
    """The paths a model argument reads: a built-in's directory, or the path given (a
    directory, a GGUF or ONNX file); none for a model object (an nn.Module)."""
    if isinstance(model, str) and model in BUILTIN_MODELS:
        return [BUILTIN_MODELS[model]]
    if isinstance(model, (str, os.PathLike)):
        return [Path(model)]
    return []


def afmc_tiny_config(**overrides: object) -> LlamaConfig:
    """afmc-tiny's architecture (a byte-level Llama), with optional field overrides."""
    from transformers import LlamaConfig

    fields: dict[str, object] = dict(
        vocab_size=256, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    return LlamaConfig(**(fields | overrides))
