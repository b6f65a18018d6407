"""The hostile-input corpus: bad files, paths and options given to the afmc command line.

Rule (every row, through the real CLI: in-process with typer's CliRunner, and a few
rows, one per area, as a subprocess of a fresh interpreter): bad input exits
non-zero with exactly one stderr line ``error: ...`` that names the problem
(file, field, tensor or option), no traceback, and leaves nothing at the output
location; suspicious but usable input exits 0 with one named ``warning: ...``
line; odd but valid input (spaces and non-ASCII in paths) just works.

Areas: configuration files and overrides, a compiled OUT directory (afmc.json,
model.onnx, context length), text files, Hugging Face directories and GGUF
files, and the options of ``afmc train``, ``afmc synth`` and ``afmc report``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from afmc.config import AfmcConfig

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from afmc.cli import app; app()"]
TEXT = "the quick brown fox jumps over the lazy dog; " * 4  # 180 byte tokens
POSITIONS = 64  # the hand-made compiled model's position table


@dataclass
class Expect:
    """What a row runs and expects: `kind` error, warning or ok; `needles` in its line."""

    args: list[str]
    needles: tuple[str, ...] = ()
    kind: str = "error"
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards


@dataclass
class Assets:
    """Inputs shared by the rows: a tiny HF directory and a text file."""

    hf_dir: Path
    text: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False))
    model.eval().save_pretrained(root / "llama")
    text = root / "text.txt"
    text.write_text(TEXT)
    return Assets(root / "llama", text)


def _hf_variant(assets: Assets, dst: Path, weights: Callable[[dict], None] | None = None,
                config: Callable[[dict], object] | None = None) -> Path:
    """A copy of the tiny HF directory with its tensors and/or config.json edited."""
    shutil.copytree(assets.hf_dir, dst)
    if weights is not None:
        tensors = load_file(dst / "model.safetensors")
        weights(tensors)
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        data = json.loads((dst / "config.json").read_text())
        edited = config(data)
        (dst / "config.json").write_text(json.dumps(data if edited is None else edited))
    return dst


def _compiled(dst: Path, *, max_positions: int | None = None, model: bytes | None = None,
              record: object = None) -> Path:
    """A hand-made compiled OUT: logits = embedding[ids] + positions[arange(seq)].

    The position table has POSITIONS rows, so a longer sequence fails inside
    onnxruntime as GPT-2's learned positions do.
    """
    dst.mkdir(parents=True)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 256])
    rng = np.random.default_rng(0)
    tables = [numpy_helper.from_array(rng.standard_normal((n, 256)).astype(np.float32), name)
              for name, n in (("embedding", 256), ("positions", POSITIONS))]
    scalars = [numpy_helper.from_array(np.array(v, dtype=np.int64), name)
               for name, v in (("one", 1), ("zero", 0))]
    nodes = [helper.make_node("Shape", ["input_ids"], ["shape"]),
             helper.make_node("Gather", ["shape", "one"], ["seq"]),
             helper.make_node("Range", ["zero", "seq", "one"], ["arange"]),
             helper.make_node("Gather", ["positions", "arange"], ["pos"]),
             helper.make_node("Gather", ["embedding", "input_ids"], ["tok"]),
             helper.make_node("Add", ["tok", "pos"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [ids], [logits], tables + scalars)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (dst / "model.onnx").write_bytes(model if model is not None else proto.SerializeToString())
    if record is None:
        record = {"target": "aimc", "runtime": "analog", "inputs": ["input_ids"],
                  "outputs": ["logits"], "config": AfmcConfig().model_dump(mode="json"),
                  "layers": [], "tokenizer": "bytes"}
        if max_positions is not None:
            record["max_positions"] = max_positions
    _write(dst / "afmc.json", record if isinstance(record, (bytes, str)) else json.dumps(record))
    return dst


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _train_config(tmp: Path, name: str, content: bytes | str) -> Expect:
    """afmc train with --config holding `content`; the output must not appear."""
    out = tmp / "ckpt"
    return Expect(["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(out), "--config",
                   str(_write(tmp / name, content))], absent=[out])


def _train_set(tmp: Path, *overrides: str) -> Expect:
    out = tmp / "ckpt"
    args = ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(out)]
    for override in overrides:
        args += ["--set", override]
    return Expect(args, absent=[out])


def _synth(tmp: Path, model: Path | str, *options: str) -> Expect:
    out = tmp / "data"
    return Expect(["synth", str(model), "-o", str(out), "--tokens", "8", "--seq-len", "4",
                   "--batch-size", "2", *options], absent=[out])


def _run(tmp: Path, out_dir: Path, text: Path | str, *options: str) -> Expect:
    return Expect(["run", str(out_dir), "--text", str(text), *options])


def _train_data(tmp: Path, data: Path | str) -> Expect:
    """afmc train on the text `data`: a bad file fails before the model loads."""
    return Expect(["train", "afmc-tiny", "--data", str(data), "-o", str(tmp / "c")],
                  absent=[tmp / "c"])


def _report(out_dir: Path, *options: str) -> Expect:
    return Expect(["report", str(out_dir), *options], absent=[out_dir / "tile_map.svg"])


def _with(expect: Expect, *needles: str, kind: str = "error") -> Expect:
    expect.needles, expect.kind = needles, kind
    return expect


def _emptied(assets: Assets, tmp: Path, name: str) -> Path:
    """A copy of the tiny HF directory whose file `name` is empty (zero bytes)."""
    model = _hf_variant(assets, tmp / "m")
    (model / name).write_bytes(b"")
    return model


def _custom_domain_onnx(path: Path) -> Path:
    """An ONNX file with a MatMul and a com.example Swish node that has no local function."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    weight = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Swish", ["h"], ["y"], name="act", domain="com.example")]
    graph = helper.make_graph(nodes, "custom", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    return _write(path, model.SerializeToString())


def _calibration(path: Path) -> Path:
    np.savez(path, x=np.ones((4, 1, 8), dtype=np.float32))
    return path


def _loop(tmp: Path) -> Path:
    (tmp / "loop").symlink_to(tmp / "loop")
    return tmp / "loop"


# Each row: (id, build(tmp, assets) -> Expect).
ROWS: list[tuple[str, Callable[[Path, Assets], Expect]]] = [
    # configuration files and overrides (afmc.config)
    ("config-not-utf8", lambda t, a: _with(
        _train_config(t, "c.yaml", b"hardware:\n  out_bound: \xff\xfe\n"),
        "c.yaml", "not UTF-8 text (byte 0xff at offset 23)")),
    ("config-binary", lambda t, a: _with(
        _train_config(t, "c.yaml", b"hardware:\0\0\0"), "c.yaml", "NUL byte at offset 9")),
    ("config-yaml-syntax", lambda t, a: _with(
        _train_config(t, "c.yaml", "hardware: [unclosed\n"), "c.yaml", "not valid YAML", "line")),
    ("config-json-syntax", lambda t, a: _with(
        _train_config(t, "c.json", '{"hardware": '), "c.json", "not valid JSON", "line 1")),
    ("config-top-level-list", lambda t, a: _with(
        _train_config(t, "c.yaml", "- hardware\n"), "c.yaml", "mapping of sections")),
    ("config-unknown-field", lambda t, a: _with(
        _train_config(t, "c.yaml", "hardware:\n  out_bund: 3\n"), "c.yaml", "hardware.out_bund")),
    ("config-inf-bound", lambda t, a: _with(
        _train_config(t, "c.yaml", "hardware:\n  out_bound: .inf\n"),
        "c.yaml", "hardware.out_bound", "finite")),
    ("config-nan-json", lambda t, a: _with(
        _train_config(t, "c.json", '{"calibration": {"kappa": NaN}}'),
        "c.json", "calibration.kappa", "finite")),
    ("config-is-directory", lambda t, a: _with(Expect(
        ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(t / "ckpt"), "--config",
         str(t)], absent=[t / "ckpt"]), str(t), "is a directory")),
    ("config-missing", lambda t, a: _with(Expect(
        ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(t / "ckpt"), "--config",
         str(t / "nope.yaml")], absent=[t / "ckpt"]), "nope.yaml", "not found")),
    ("set-out-bound-inf", lambda t, a: _with(
        _train_set(t, "hardware.out_bound=inf"), "--set hardware.out_bound=inf",
        "hardware.out_bound")),
    ("set-pcm-scale-nan", lambda t, a: _with(
        _train_set(t, "noise.pcm_scale=nan"), "noise.pcm_scale", "finite")),
    ("set-read-noise-nan", lambda t, a: _with(
        _train_set(t, "training.read_noise=nan"), "training.read_noise", "finite")),
    ("set-read-noise-negative", lambda t, a: _with(
        _train_set(t, "training.read_noise=-0.1"), "training.read_noise")),
    ("set-betas-out-of-range", lambda t, a: _with(
        _train_set(t, "training.betas=[0.9, 1.5]"), "training.betas")),
    ("set-tile-rows-zero", lambda t, a: _with(
        _train_set(t, "hardware.tile_rows=0"), "hardware.tile_rows")),
    ("set-no-field", lambda t, a: _with(_train_set(t, "hardware"), "--set 'hardware'")),
    # options of afmc train
    ("train-steps-negative", lambda t, a: _with(Expect(
        ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(t / "c"), "--steps", "-1"],
        absent=[t / "c"]), "--steps")),
    ("train-lora-rank-negative", lambda t, a: _with(Expect(
        ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(t / "c"), "--lora-rank",
         "-1"], absent=[t / "c"]), "--lora-rank")),
    ("train-max-minutes-nan", lambda t, a: _with(Expect(
        ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(t / "c"), "--max-minutes",
         "nan"], absent=[t / "c"]), "--max-minutes")),
    ("train-device-unknown", lambda t, a: _with(Expect(
        ["train", "afmc-tiny", "--data", "stdlib:train", "-o", str(t / "c"), "--device",
         "tpu"], absent=[t / "c"]), "--device 'tpu'")),
    ("train-data-missing", lambda t, a: _with(Expect(
        ["train", "afmc-tiny", "--data", str(t / "nope.txt"), "-o", str(t / "c")],
        absent=[t / "c"]), "--data", "nope.txt")),
    # options of afmc synth
    ("synth-tokens-zero", lambda t, a: _with(_synth(t, "afmc-tiny", "--tokens", "0"),
                                             "--tokens")),
    ("synth-seq-len-one", lambda t, a: _with(_synth(t, "afmc-tiny", "--seq-len", "1"),
                                             "--seq-len")),
    ("synth-temperature-inf", lambda t, a: _with(
        _synth(t, "afmc-tiny", "--temperature", "inf"), "--temperature")),
    ("synth-temperature-nan", lambda t, a: _with(
        _synth(t, "afmc-tiny", "--temperature", "nan"), "--temperature")),
    ("synth-top-k-negative", lambda t, a: _with(_synth(t, "afmc-tiny", "--top-k", "-1"),
                                                "--top-k")),
    ("synth-top-p-zero", lambda t, a: _with(_synth(t, "afmc-tiny", "--top-p", "0"), "--top-p")),
    ("synth-top-p-above-one", lambda t, a: _with(_synth(t, "afmc-tiny", "--top-p", "1.5"),
                                                 "--top-p")),
    ("synth-batch-size-zero", lambda t, a: _with(_synth(t, "afmc-tiny", "--batch-size", "0"),
                                                 "--batch-size")),
    ("synth-shard-sequences-zero", lambda t, a: _with(
        _synth(t, "afmc-tiny", "--shard-sequences", "0"), "--shard-sequences")),
    ("synth-seq-len-beyond-positions", lambda t, a: _with(
        _synth(t, a.hf_dir, "--seq-len", "65"), "--seq-len 65", "64 positions")),
    # Hugging Face directories and GGUF files (afmc.capture)
    ("hf-missing-lm-head", lambda t, a: _with(_synth(t, _hf_variant(
        a, t / "m", weights=lambda w: w.pop("lm_head.weight"))),
        str(t / "m"), "lm_head.weight", "randomly initialised")),
    ("hf-more-layers-than-weights", lambda t, a: _with(_synth(t, _hf_variant(
        a, t / "m", config=lambda c: c.update(num_hidden_layers=3))),
        str(t / "m"), "model.layers.2.")),
    ("hf-shape-mismatch", lambda t, a: _with(_synth(t, _hf_variant(
        a, t / "m", weights=lambda w: w.update({"lm_head.weight": torch.zeros(256, 16)}))),
        "lm_head.weight", "[256, 16]", "[256, 32]")),
    ("hf-vocab-size-zero", lambda t, a: _with(_synth(t, _hf_variant(
        a, t / "m", config=lambda c: c.update(vocab_size=0))), str(t / "m"))),
    ("hf-extra-tensor-warns", lambda t, a: _with(_synth(t, _hf_variant(
        a, t / "m", weights=lambda w: w.update({"bogus.weight": torch.zeros(2)}))),
        "bogus.weight", "does not use", kind="warning")),
    ("hf-zero-byte-safetensors", lambda t, a: _with(_synth(t, _emptied(a, t, "model.safetensors")),
                                                    "cannot load the model")),
    ("hf-config-is-list", lambda t, a: _with(_synth(t, _hf_variant(
        a, t / "m", config=lambda c: [c])), "config.json", "expected a JSON object")),
    ("hf-config-empty", lambda t, a: _with(_synth(t, _emptied(a, t, "config.json")),
                                           "config.json", "not a valid JSON file")),
    ("hf-model-is-a-text-file", lambda t, a: _with(_synth(t, a.text), "text.txt",
                                                   "not a directory")),
    ("hf-model-symlink-loop", lambda t, a: _with(_synth(t, _loop(t)), "loop", "model not found")),
    ("gguf-empty", lambda t, a: _with(_synth(t, _write(t / "m.gguf", b"")), "m.gguf",
                                      "not a GGUF file")),
    ("gguf-truncated", lambda t, a: _with(_synth(t, _write(t / "m.gguf", b"GGUF\3\0\0\0\1")),
                                          "m.gguf", "cannot load the GGUF model")),
    ("paths-with-spaces-and-unicode-work", lambda t, a: _with(_synth(
        t / "dir ü", shutil.copytree(a.hf_dir, t / "my models" / "tïny model ✓")), kind="ok")),
    ("onnx-custom-domain-without-function", lambda t, a: _with(Expect(
        ["compile", str(_custom_domain_onnx(t / "m.onnx")), "-o", str(t / "o"), "--calib",
         str(_calibration(t / "x.npz"))],
        absent=[t / "o"]), "m.onnx", "'act'", "'com.example'")),
    # a compiled OUT directory: afmc.json, model.onnx, context length (afmc.runtime)
    ("record-corrupt-json", lambda t, a: _with(_report(_compiled(t / "o", record="{")),
                                               "afmc.json: not valid JSON", "line 1 column 2")),
    ("record-not-utf8", lambda t, a: _with(_report(_compiled(t / "o", record=b'{"a": "\xff"}')),
                                           "afmc.json", "not UTF-8")),
    ("record-is-a-list", lambda t, a: _with(_report(_compiled(t / "o", record=[])),
                                            "afmc.json", "expected a JSON object")),
    ("record-missing-layers", lambda t, a: _with(_run(t, _compiled(t / "o", record={
        "target": "aimc", "inputs": [], "outputs": [], "config": {}, "tokenizer": "bytes"}),
        a.text), "afmc.json", "'layers'")),
    ("record-layer-missing-field", lambda t, a: _with(_report(_compiled(t / "o", record={
        "target": "aimc", "inputs": [], "outputs": [], "layers": [{"name": "x"}],
        "config": AfmcConfig().model_dump(mode="json")})), "afmc.json", "field")),
    ("model-onnx-corrupt", lambda t, a: _with(_run(t, _compiled(t / "o", model=b"\x08junk"),
                                                   a.text), "model.onnx", "not a valid ONNX")),
    # afmc run cuts the text to the context with a note (Chip.run refuses longer input)
    ("run-beyond-max-positions-is-cut", lambda t, a: _with(_run(
        t, _compiled(t / "o", max_positions=16), a.text), kind="ok")),
    ("run-beyond-positions-onnxruntime", lambda t, a: _with(_run(
        t, _compiled(t / "o"), a.text, "--max-tokens", "100"), "model.onnx",
        "onnxruntime failed")),
    ("report-on-a-file", lambda t, a: _with(Expect(["report", str(a.text)]), "text.txt",
                                            "afmc.json")),
    ("report-unknown-strategy", lambda t, a: _with(_report(_compiled(t / "o"), "--strategy",
                                                           "spiral"), "--strategy 'spiral'")),
    ("report-svg-is-a-directory", lambda t, a: _with(_report(_compiled(t / "o"), "--svg",
                                                             str(t)), str(t), "directory")),
    ("report-svg-parent-is-a-file", lambda t, a: _with(_report(
        _compiled(t / "o"), "--svg", str(a.text / "map.svg")), "text.txt", "is not a directory")),
    ("report-svg-name-too-long", lambda t, a: _with(_report(
        _compiled(t / "o"), "--svg", str(t / ("x" * 300 + ".svg"))), "File name too long")),
    # text files (afmc.data.text_source; through afmc train --data, and afmc run --text)
    ("text-random-bytes", lambda t, a: _with(_train_data(t, _write(
        t / "r.txt", bytes(np.random.default_rng(0).integers(128, 256, 64, dtype=np.uint8)))),
        "r.txt", "not UTF-8 text (byte 0x")),
    ("text-nul-bytes", lambda t, a: _with(_train_data(t, _write(
        t / "r.txt", b"text\0with nul")), "r.txt", "NUL byte at offset 4")),
    ("text-is-a-directory", lambda t, a: _with(_run(t, _compiled(t / "o"), t), str(t),
                                               "is a directory")),
    ("text-whitespace-only", lambda t, a: _with(_train_data(t, _write(
        t / "w.txt", " \n\t\n")), "w.txt", "empty")),
    ("text-unknown-builtin", lambda t, a: _with(_train_data(t, "stdlib:tarin"),
                                                "stdlib:tarin", "unknown built-in")),
    ("text-symlink-loop", lambda t, a: _with(_train_data(t, _loop(t)), "loop",
                                             "symbolic links")),
]


# One row per area also runs as a subprocess: a fresh interpreter, the real exit code.
FRESH = {"config-not-utf8", "train-steps-negative", "synth-temperature-nan", "hf-missing-lm-head",
         "onnx-custom-domain-without-function", "record-is-a-list", "report-unknown-strategy",
         "text-random-bytes", "paths-with-spaces-and-unicode-work"}
# Rows that take seconds (a compile, or a fresh interpreter importing torch): make test only.
SLOW = {"hf-missing-lm-head", "onnx-custom-domain-without-function", "record-is-a-list",
        "report-unknown-strategy", "paths-with-spaces-and-unicode-work"}


def _invoke(args: list[str], cwd: Path, fresh: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI; an uncaught exception counts as a traceback."""
    if fresh:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(CLI + args, capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=300)
        return done.returncode, done.stdout, done.stderr
    from typer.testing import CliRunner

    from afmc.cli import app

    result = CliRunner().invoke(app, args)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (in-process)\n" + "".join(
            traceback.format_exception(result.exception))
    return result.exit_code, result.stdout, stderr


@pytest.mark.parametrize("build", [
    pytest.param(build, id=name, marks=[pytest.mark.slow] if name in SLOW else [])
    for name, build in ROWS])
def test_hostile_input(build, assets, tmp_path, monkeypatch, request):
    expect = build(tmp_path, assets)
    monkeypatch.chdir(tmp_path)
    fresh = request.node.callspec.id in FRESH
    code, stdout, stderr = _invoke(expect.args, tmp_path, fresh)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    if expect.kind == "error":
        assert code != 0, stdout
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    else:
        assert code == 0, stderr
        prefix = "warning: " if expect.kind == "warning" else None
        assert len(lines) == (1 if prefix else 0), stderr
        assert prefix is None or lines[0].startswith(prefix), stderr
    for needle in expect.needles:
        assert needle in lines[0], lines[0]
    if expect.kind == "error":
        for path in expect.absent:
            assert not path.exists(), f"{path} left behind"
