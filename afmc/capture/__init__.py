"""Capture front ends: trace a PyTorch module, a Hugging Face model or a GGUF into an FX graph."""

from afmc.capture.encoder import capture_encoder
from afmc.capture.hf import CausalLMLogits, capture_causal_lm, load_causal_lm
from afmc.capture.pretrained import capture_pretrained
from afmc.capture.torch_module import CapturedModel, capture_module
from afmc.io.user_errors import CaptureError

__all__ = [
    "CaptureError",
    "CapturedModel",
    "CausalLMLogits",
    "capture_causal_lm",
    "capture_encoder",
    "capture_module",
    "capture_pretrained",
    "load_causal_lm",
]
