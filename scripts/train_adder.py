"""Train ``afmc-adder``, afmc's built-in byte-level Llama that adds numbers, on CPU.

Task: multi-digit addition written as text, ``"123+456=579\\n"``. Training windows
of 64 bytes are problems packed one after another, each window starting with a
problem at position 0 (so a prompt alone, ``"123+456="``, is in distribution); each
operand has 1 to 3 digits (number of digits uniform, then the value uniform), and
the loss is taken on the answer bytes only (the digits after ``=`` and the newline).
The held-out task is ``HELDOUT`` problems with two 3-digit operands (sums of 3 or
4 digits), drawn with their own seed and never seen in training; it is written as
``addition.jsonl`` (one ``{"prompt": "123+456=", "answer": "579"}`` a line) beside the
model, and a calibration text of training-distribution problems (16 KB) as
``calibration.txt`` (afmc compile's default calibration for this model).

Architecture: Llama, hidden 128, 4 layers, 4 heads (head dim 32), SwiGLU 352,
vocab 256 (UTF-8 bytes), untied embeddings, 256 positions: 0.87 M parameters,
weights stored in float16 (1.7 MB). Training: scripts/builtin_training.py (AdamW,
warmup then cosine decay, clipping); all seeds fixed. The default step count is chosen
so that FP greedy accuracy on the held-out problems is well above chance but below
100%, leaving room for test-time compute (docs/test-time-compute.md); the script prints
it at the end.

From the repository root (``PYTHONPATH=.`` is not needed once afmc is installed):

    PYTHONPATH=. python scripts/train_adder.py              # train, save, evaluate
    PYTHONPATH=. python scripts/train_adder.py --eval-only  # evaluate the saved model
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from builtin_training import save_model, train_model
from transformers import LlamaForCausalLM

from afmc.models import afmc_tiny_config

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "afmc" / "models" / "afmc-adder"
WINDOW = 64
MAX_POSITIONS = 256
HELDOUT = 200
CALIBRATION_BYTES = 16384
TRAIN_SEED, HELDOUT_SEED, CALIBRATION_SEED = 0, 1, 2
NEWLINE = ord("\n")


def adder_config():
    """afmc-adder's architecture: afmc-tiny's byte-level Llama, narrower and shorter."""
    return afmc_tiny_config(hidden_size=128, intermediate_size=352,
                            max_position_embeddings=MAX_POSITIONS)


def operand(rng: np.random.Generator, max_digits: int) -> int:
    """A number whose digit count is uniform in 1..max_digits, then uniform in that range."""
    digits = int(rng.integers(1, max_digits + 1))
    return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits))


def heldout_problems(count: int) -> list[tuple[int, int]]:
    """`count` distinct pairs of 3-digit operands (the held-out task)."""
    rng = np.random.default_rng(HELDOUT_SEED)
    pairs: dict[tuple[int, int], None] = {}
    while len(pairs) < count:
        pairs[(int(rng.integers(100, 1000)), int(rng.integers(100, 1000)))] = None
    return list(pairs)


def training_window(rng: np.random.Generator, exclude: set[tuple[int, int]]
                    ) -> tuple[list[int], list[int]]:
    """One window of WINDOW bytes of packed problems and its labels (-100 off the answers)."""
    ids: list[int] = []
    labels: list[int] = []
    while len(ids) < WINDOW:
        a, b = operand(rng, 3), operand(rng, 3)
        if (a, b) in exclude:
            continue
        prompt, answer = f"{a}+{b}=".encode(), f"{a + b}\n".encode()
        ids += [*prompt, *answer]
        labels += [-100] * len(prompt) + list(answer)
    return ids[:WINDOW], labels[:WINDOW]


@torch.no_grad()
def greedy_accuracy(model: LlamaForCausalLM, problems: list[tuple[int, int]]) -> float:
    """Share of problems whose greedy answer (bytes up to the newline) is the sum."""
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([list(f"{a}+{b}=".encode()) for a, b in problems], device=device)
    for _ in range(6):  # a 3-digit sum has at most 4 digits, then the newline
        logits = model(input_ids=ids, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    model.train()
    answers = [bytes(row[8:].tolist()).split(b"\n")[0].decode(errors="replace").strip()
               for row in ids]
    return float(np.mean([answer == str(a + b)
                          for answer, (a, b) in zip(answers, problems, strict=True)]))


def save_task(out: Path, problems: list[tuple[int, int]]) -> None:
    """Write the held-out task (addition.jsonl) and the calibration text (calibration.txt)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "addition.jsonl", "w") as file:
        for a, b in problems:
            file.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    rng = np.random.default_rng(CALIBRATION_SEED)
    lines: list[str] = []
    while sum(map(len, lines)) < CALIBRATION_BYTES:
        a, b = operand(rng, 3), operand(rng, 3)
        lines.append(f"{a}+{b}={a + b}\n")
    (out / "calibration.txt").write_text("".join(lines))


def train(out: Path, steps: int, batch_size: int, peak_lr: float, log_every: int,
          device: str) -> None:
    """Train from scratch on `device` and save the model and the task files to ``out``."""
    torch.manual_seed(TRAIN_SEED)
    rng = np.random.default_rng(TRAIN_SEED)
    problems = heldout_problems(HELDOUT)
    exclude = set(problems)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        windows = [training_window(rng, exclude) for _ in range(batch_size)]
        return (torch.tensor([w[0] for w in windows], device=device),
                torch.tensor([w[1] for w in windows], device=device))

    model = LlamaForCausalLM(adder_config()).float().to(device)
    train_model(model, batch, steps, peak_lr, log_every, lambda model: (
        f"held-out greedy accuracy {greedy_accuracy(model, problems):.3f}"))
    save_model(model, out)
    save_task(out, problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--log-every", type=int, default=100, help="steps between log lines")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device to train on")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.eval_only:
        train(args.out, args.steps, args.batch_size, args.lr, args.log_every, args.device)
    model = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    accuracy = greedy_accuracy(model, heldout_problems(HELDOUT))
    print(f"FP greedy accuracy on {HELDOUT} held-out 3-digit + 3-digit problems: {accuracy:.3f}")


if __name__ == "__main__":
    main()
