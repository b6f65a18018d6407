"""GGUF files in: dequantize a llama.cpp GGUF to a float32 Hugging Face model.

A GGUF is given as the file itself (`model.gguf`) or as a directory that holds
exactly one `*.gguf` and no `config.json`. transformers' GGUF loader (it needs
the `gguf` package) reads the architecture and hyperparameters from the file's
metadata, dequantizes every tensor to float32, and builds the tokenizer from
the vocabulary stored in the metadata, so the compiled output carries a
tokenizer like a Hugging Face directory's.

The loaded model still carries the loader's GgufConfig (`config.quantization_config`,
`model.hf_quantizer`) although its weights are plain float32; both are dropped so
the model is an ordinary float model (save_pretrained refuses it otherwise).
"""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import torch
import transformers
from transformers import PreTrainedModel

from afmc.io.user_errors import CaptureError, first_line

SUFFIX = ".gguf"
MAGIC = b"GGUF"


def find_gguf(path: Path) -> Path | None:
    """The GGUF file `path` stands for: a `*.gguf` file, or the one `*.gguf` of a directory.

    A directory with a config.json is a Hugging Face directory (None), as is one
    without any `*.gguf`.

    Raises:
        CaptureError: a directory without config.json holds several `*.gguf` files.
    """
    if path.is_file():
        return path if path.suffix.lower() == SUFFIX else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise CaptureError(f"{path}: holds {len(found)} GGUF files ({names}); name one of them")
    return found[0] if found else None


def check_gguf(path: Path) -> None:
    """Raise a one-line CaptureError unless `path` is a readable file starting with GGUF's magic."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(MAGIC))
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read the GGUF file ({first_line(exc)})") from exc
    if magic != MAGIC:
        raise CaptureError(f"{path}: not a GGUF file (it does not start with {MAGIC.decode()})")


def load_gguf_model(path: Path) -> PreTrainedModel:
    """The causal LM of the GGUF file `path`, dequantized to float32, in eval mode.

    The attention implementation is transformers' default (SDPA where supported).

    Raises:
        CaptureError: the file is not GGUF, is corrupt, or holds an architecture
            transformers' GGUF loader does not support.
    """
    from transformers import AutoModelForCausalLM, modeling_gguf_pytorch_utils

    check_gguf(path)
    transformers.utils.logging.disable_progress_bar()
    try:
        # The loader's own tqdm bar ignores transformers' progress-bar switch.
        with patch.object(modeling_gguf_pytorch_utils, "tqdm", lambda items, **_: items):
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, local_files_only=True, dtype=torch.float32)
    except Exception as exc:
        raise CaptureError(f"{path}: cannot load the GGUF model ({first_line(exc)})") from exc
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval()


def load_gguf_tokenizer(path: Path):
    """The Hugging Face tokenizer built from the vocabulary in the GGUF file's metadata.

    Raises:
        CaptureError: the file holds no tokenizer transformers can build.
    """
    from transformers import AutoTokenizer

    check_gguf(path)
    try:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name,
                                             local_files_only=True)
    except Exception as exc:
        raise CaptureError(f"{path}: cannot build the GGUF tokenizer ({first_line(exc)})") from exc
