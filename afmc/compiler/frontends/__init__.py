"""Front ends: a model argument to the Frontend the compile driver runs (frontends.base)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from afmc.compiler.frontends.base import Frontend
from afmc.compiler.frontends.onnx_graph import OnnxFrontend, is_onnx_file
from afmc.compiler.frontends.torch_program import StaticBatchWarning, TorchFrontend, open_torch
from afmc.data.tokenizer import Tokenizer


def open_frontend(model: Any, example_inputs: tuple | None = None, *,
                  tokenizer: Tokenizer | None = None, recalibrate: bool = False,
                  verify: bool = False) -> Frontend:
    """An ONNX file (*.onnx) opens the ONNX front end; anything else (built-in name,
    Hugging Face directory, GGUF file, nn.Module, CapturedModel) the torch front end."""
    if is_onnx_file(model):
        return OnnxFrontend(Path(model), tokenizer, verify, recalibrate=recalibrate)
    return open_torch(model, example_inputs, tokenizer=tokenizer, recalibrate=recalibrate,
                      verify=verify)


__all__ = ["Frontend", "OnnxFrontend", "StaticBatchWarning", "TorchFrontend", "is_onnx_file",
           "open_frontend"]
