"""A model path to a CapturedModel: a GGUF file, a decoder or an encoder directory.

Rule: a `*.gguf` file, or a directory with one `*.gguf` and no config.json, is a
GGUF causal LM; a directory whose config is a BERT-like encoder
(capture.encoder.is_encoder) is captured as an encoder; any other directory as
a causal LM with its KV cache (capture.hf, capture.kv_cache).
"""

from __future__ import annotations

from pathlib import Path

from afmc.capture.encoder import capture_encoder, is_encoder
from afmc.capture.gguf import find_gguf
from afmc.capture.hf import capture_causal_lm, read_config
from afmc.capture.torch_module import CapturedModel


def capture_pretrained(path: Path) -> CapturedModel:
    """Capture the model at `path` by the rule above (CaptureError when it cannot)."""
    path = Path(path)
    if path.is_dir() and find_gguf(path) is None and is_encoder(read_config(path)):
        return capture_encoder(path)
    return capture_causal_lm(path, kv_cache=True)
