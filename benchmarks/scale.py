"""afmc at the scale of the paper's models: a 1.1B-parameter Llama, compile / chip / eval.

The model is built from a config (TinyLlama's shape: hidden 2048, intermediate 5632,
22 layers, 32 heads, 4 KV heads, vocab 32000; random weights saved in bfloat16 with
save_pretrained, plus a small word-level tokenizer), so nothing is downloaded. Each
step runs in its own process and is measured there (wall time, and peak RSS from
the kernel's accounting of that child), in one run of this script, so the ratios
compare like with like:

- export: plain torch.export + torch.onnx.export(dynamo=True) + save with external
  data, in one process (the FP baseline for compile);
- compile: ``afmc compile DIR --target aimc --calib ids.npz`` (token ids, no tokenizer);
- compile-lean: the same without the steps that run the model for accuracy (``--set
  calibration.method=max --set calibration.held_back=0 --skip chip-smooth-inputs
  --skip split-outliers``: max
  calibration, no smoothing, no fidelity check), the cost of the pipeline itself;
- fp-session: a plain onnxruntime session of the FP export (the baseline for chips);
- chip: ``afmc.load(OUT).chip(seed)``: programming noise sampled for every analog
  layer and the session built, then one forward pass;
- eval: ``afmc eval OUT --text t.txt --seeds 3``.

Ratios: time against the baseline of the same run; memory against the FP32 weight
bytes (parameters x 4).

    python benchmarks/scale.py [--work DIR] [--layers 22] [--steps export,compile,...]

With --steps, only those steps run (on the model and output kept in --work from an
earlier run); a ratio is printed where both of its steps ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
         "max_position_embeddings": 2048}
STEPS = ("export", "compile", "compile-lean", "fp-session", "chip", "eval")
LEAN = ("--set", "calibration.method=max", "--set", "calibration.held_back=0",
        "--skip", "chip-smooth-inputs", "--skip", "split-outliers")
CALIB_WINDOWS = 4
SEQ_LEN = 128


def build_model(model_dir: Path, layers: int) -> int:
    """Save a random-weight Llama of SHAPE (bfloat16) and a word-level tokenizer; the
    parameter count."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}, torch_dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(model_dir)
    words = sorted(set(sample_text().split()))
    vocab = {"[UNK]": 0, **{word: index + 1 for index, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def sample_text() -> str:
    """Some English text for the tokenizer and the eval (the stdlib's argparse docs)."""
    import argparse as module

    return (module.__doc__ or "") * 8


def measured(code: str, *args: str) -> tuple[float, float, str]:
    """Run `code` in a fresh interpreter: (seconds, peak RSS GB, stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                               stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: step failed (exit {status}):\n{code}")
    return seconds, usage.ru_maxrss / 1e6, out


EXPORT = """
    import sys, torch
    from pathlib import Path
    from torch.export import Dim
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
    class Logits(torch.nn.Module):
        def __init__(self, lm):
            super().__init__(); self.lm = lm
        def forward(self, input_ids):
            return self.lm(input_ids=input_ids, use_cache=False).logits
    ids = torch.randint(1000, (2, 16))
    shapes = {"input_ids": {0: Dim("batch", min=1), 1: Dim("seq", min=1, max=2048)}}
    program = torch.export.export(Logits(model), (ids,), dynamic_shapes=shapes, strict=False)
    onnx_program = torch.onnx.export(program, (ids,), dynamo=True, input_names=["input_ids"],
                                     output_names=["logits"])
    onnx_program.save(str(Path(sys.argv[2])), external_data=True)
"""

COMPILE = """
    import sys
    from afmc.cli import app
    sys.argv = ["afmc", "compile", sys.argv[1], "--target", "aimc", "--calib", sys.argv[2],
                "-o", sys.argv[3], *sys.argv[4:]]
    app()
"""

FP_SESSION = """
    import sys, time, numpy as np, onnxruntime as ort
    start = time.perf_counter()
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    loaded = time.perf_counter() - start
    session.run(None, {"input_ids": np.arange(16, dtype=np.int64)[None]})
    print(loaded)
"""

CHIP = """
    import sys, time, numpy as np, afmc
    start = time.perf_counter()
    compiled = afmc.load(sys.argv[1])
    chip = compiled.chip(int(sys.argv[2]))
    loaded = time.perf_counter() - start
    chip.run(np.arange(16, dtype=np.int64)[None])
    print(loaded)
"""

EVAL = """
    import sys
    from afmc.cli import app
    sys.argv = ["afmc", "eval", sys.argv[1], "--text", sys.argv[2], "--seeds", "3",
                "--seq-len", "128", "--max-tokens", "512"]
    app()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the model and outputs here")
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated steps to run, of {', '.join(STEPS)}")
    args = parser.parse_args()
    steps = [step.strip() for step in args.steps.split(",") if step.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown step(s) {', '.join(unknown)}; "
                     f"expected some of {', '.join(STEPS)}")
    with tempfile.TemporaryDirectory(prefix="afmc-scale-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run(work, args.layers, steps)


def run(work: Path, layers: int, steps: list[str]) -> None:
    import numpy as np

    model_dir, out, fp_onnx = work / "model", work / "out", work / "fp" / "model.onnx"
    if not (model_dir / "config.json").is_file():
        build_model(model_dir, layers)
    config = json.loads((model_dir / "config.json").read_text())
    params = _parameters(config)
    weight_gb = params * 4 / 1e9
    rng = np.random.default_rng(0)
    ids = work / "ids.npz"
    np.savez(ids, input_ids=rng.integers(config["vocab_size"], size=(CALIB_WINDOWS, SEQ_LEN)))
    text = work / "eval.txt"
    text.write_text(sample_text())
    print(f"model: {params / 1e9:.2f} B parameters, FP32 weights {weight_gb:.2f} GB")

    fp_onnx.parent.mkdir(exist_ok=True)
    rows = {}
    if "export" in steps:
        rows["export (baseline)"] = measured(EXPORT, str(model_dir), str(fp_onnx))
    if "compile" in steps:
        if out.exists():
            import shutil

            shutil.rmtree(out)
        rows["afmc compile"] = measured(COMPILE, str(model_dir), str(ids), str(out))
    if "compile-lean" in steps:
        with tempfile.TemporaryDirectory(prefix="afmc-lean-", dir=work) as lean:
            rows["afmc compile, lean"] = measured(COMPILE, str(model_dir), str(ids),
                                                  str(Path(lean) / "out"), *LEAN)
    if "fp-session" in steps:
        fp_session = measured(FP_SESSION, str(fp_onnx))
        rows["fp session (baseline)"] = (float(fp_session[2]), fp_session[1], "")
    if "chip" in steps:
        chip = measured(CHIP, str(out), "1")
        rows["afmc chip start"] = (float(chip[2]), chip[1], "")
    if "eval" in steps:
        rows["afmc eval --seeds 3"] = measured(EVAL, str(out), str(text))

    print(f"{'step':24} {'seconds':>9} {'peak RSS GB':>12} {'RSS / FP32 weights':>19}")
    for name, (seconds, rss, _) in rows.items():
        print(f"{name:24} {seconds:9.1f} {rss:12.2f} {rss / weight_gb:18.2f}x")
    for label, step, baseline in (("compile time / export time", "afmc compile",
                                   "export (baseline)"),
                                  ("lean compile time / export time", "afmc compile, lean",
                                   "export (baseline)"),
                                  ("chip start / fp session load", "afmc chip start",
                                   "fp session (baseline)")):
        if step in rows and baseline in rows:
            print(f"{label}: {rows[step][0] / rows[baseline][0]:.2f}x")


def _parameters(config: dict) -> int:
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = hidden * config["num_key_value_heads"] // config["num_attention_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    tied = config.get("tie_word_embeddings", False)
    return config["num_hidden_layers"] * per_layer + vocab * hidden * (1 if tied else 2) + hidden


if __name__ == "__main__":
    main()
