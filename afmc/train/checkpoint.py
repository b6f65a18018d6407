"""Training checkpoints: written atomically, read back for an exact resume.

A checkpoint is the directory CKPT/checkpoints/step-NNNNNNN holding
``model.safetensors`` (every student tensor: weights, LoRA adapters, learned input
ranges and their initialisation counters), ``optimizer.pt`` (optimizer and
scheduler state), ``rng-R.pt`` (the torch random state of process R: weight noise
is drawn from it) and ``state.json`` (step, losses, configuration). It is written
under a temporary name and renamed; CKPT/checkpoints/latest names the newest one
and is replaced atomically, so a run killed at any moment leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def _write_text(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def checkpoint_root(output: Path) -> Path:
    return output / CHECKPOINTS


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint of a run writing to `output`, or None."""
    pointer = checkpoint_root(output) / LATEST
    if not pointer.is_file():
        return None
    path = checkpoint_root(output) / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "state.json").is_file() else None


def save_rng(folder: Path, rank: int) -> None:
    """This process's random state (torch CPU, and CUDA when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, folder / f"rng-{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no random state for process {rank} (the run had "
                                "another number of processes)")
    state = torch.load(path, weights_only=False)
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def staging_folder(output: Path, step: int) -> Path:
    """An empty temporary folder for the checkpoint of `step` (every process writes its RNG)."""
    folder = checkpoint_root(output) / f".step-{step:07d}.tmp"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def publish(output: Path, folder: Path, step: int, model: nn.Module, training_state: dict,
            state: dict[str, Any], keep: int = 2) -> Path:
    """Write the model, optimizer and state into `folder`, rename it, point `latest` at it."""
    save_model(model, str(folder / "model.safetensors"))
    torch.save(training_state, folder / "optimizer.pt")
    (folder / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    final = checkpoint_root(output) / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(folder, final)
    _write_text(checkpoint_root(output) / LATEST, final.name)
    for old in sorted(checkpoint_root(output).glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(folder: Path, model: nn.Module) -> tuple[dict, dict[str, Any]]:
    """Load the model tensors of `folder` into `model`; (optimizer state, state.json)."""
    missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
    if missing or unexpected:
        kind, names = ("missing", missing) if missing else ("unexpected", unexpected)
        raise ValueError(f"{folder}: checkpoint does not fit the model ({kind} "
                         f"{', '.join(names[:3])})")
    training_state = torch.load(folder / "optimizer.pt", weights_only=False)
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return training_state, state
