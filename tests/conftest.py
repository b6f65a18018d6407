"""Shared fixtures: tiny random Hugging Face causal LMs built in the tests (no hub), and
afmc-tiny compiled for aimc with its defaults (once per worker).

Threads: under pytest-xdist (make test: -n 2) each worker takes its share of the cores
for torch's intra-op pool (OMP_NUM_THREADS, also for the processes the tests start) and
for ONNX Runtime's (a session's default intra_op_num_threads; a test that sets its own
keeps it). Two workers each running on every core oversubscribe them, and the spinning
threads then make a compile several times slower (afmc-tiny: ~70 s instead of ~20 s on
2 cores, with another process busy). A value of OMP_NUM_THREADS set by the caller is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))
    _THREADS = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(_THREADS)

    class _WorkerSessionOptions(ort.SessionOptions):
        """ONNX Runtime's session options with this worker's share of the cores."""

        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = _THREADS

    ort.SessionOptions = _WorkerSessionOptions

VOCAB = 256  # byte-level: the byte tokenizer applies, no tokenizer files needed


def tiny_model(architecture: str) -> torch.nn.Module:
    """A seeded random 2-layer model of `architecture` (hidden 64, byte vocabulary)."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=100, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256, tie_word_embeddings=False)
    if architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2))
    if architecture == "phi3":
        return Phi3ForCausalLM(Phi3Config(**common, num_key_value_heads=4, pad_token_id=0,
                                          bos_token_id=1, eos_token_id=2))
    if architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=2))
    if architecture == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                          n_positions=256, bos_token_id=0, eos_token_id=0))
    raise ValueError(architecture)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved directories of the four tiny architectures."""
    root = tmp_path_factory.mktemp("hf")
    dirs = {}
    for architecture in ("llama", "phi3", "qwen2", "gpt2"):
        dirs[architecture] = root / architecture
        tiny_model(architecture).eval().save_pretrained(dirs[architecture])
    return dirs


@pytest.fixture(scope="session")
def calibration_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration text file (4000 characters of this repository's source, frozen in
    tests/data so that editing the code does not change the tests' data)."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((Path(__file__).resolve().parent / "data" / "calibration.txt").read_text())
    return path


@pytest.fixture(scope="session")
def compiled_tiny(tmp_path_factory: pytest.TempPathFactory):
    """afmc-tiny compiled for aimc with its defaults, once per worker (a compile takes
    ~20 s). Shared by every module that reads it: a test that writes into the output
    directory (afmc eval's OUT/eval, afmc report) works on a copy."""
    import afmc

    return afmc.compile("afmc-tiny", "aimc", output=tmp_path_factory.mktemp("afmc-tiny") / "tiny")


