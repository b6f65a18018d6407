"""Capture front ends: trace a PyTorch module or a Hugging Face causal LM into an FX graph."""

from afmc.capture.errors import CaptureError
from afmc.capture.hf import CausalLMLogits, capture_causal_lm, load_causal_lm
from afmc.capture.onnx_export import export_onnx
from afmc.capture.torch_module import CapturedModel, capture_module

__all__ = [
    "CaptureError",
    "CapturedModel",
    "CausalLMLogits",
    "capture_causal_lm",
    "capture_module",
    "export_onnx",
    "load_causal_lm",
]
