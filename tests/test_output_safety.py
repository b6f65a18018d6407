"""Never lose data: where afmc writes an output directory, and how it publishes it.

Rules under test (afmc.io.output_dir, afmc.io.interrupts):
- OUT may not be, hold or lie inside the input model (a Hugging Face directory,
  an ONNX file and its external data), nor be or hold the current directory;
  refused before any work with one `error:` line naming both paths, the input
  left byte for byte as it was. The same holds for `afmc train` (model, data)
  and `afmc synth` (teacher).
- Without --force nothing is overwritten, even an OUT (an empty directory too)
  that appeared while compiling; the staged result is removed.
- SIGTERM and SIGINT during a compile remove the staging directory and exit
  non-zero (143, 130); a signal during publishing waits until OUT is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
from conftest import tiny_model
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import afmc
from afmc.cli import app
from afmc.io import output_dir
from afmc.io.output_dir import OutputExistsError

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from afmc.cli import app; app()"]
runner = CliRunner()


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Llama (copy it before a test that could damage it)."""
    path = tmp_path_factory.mktemp("hf") / "llama"
    tiny_model("llama").eval().save_pretrained(path)
    return path


@pytest.fixture
def model(hf_dir: Path, tmp_path: Path) -> Path:
    """This test's own copy of the tiny Llama directory, in tmp_path/model."""
    return Path(shutil.copytree(hf_dir, tmp_path / "model"))


def _onnx_with_external_data(folder: Path) -> Path:
    """folder/model.onnx (a MatMul) whose weight lives in folder/model.onnx.data."""
    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((64, 64), np.float32), "w")])
    model = ir.from_proto(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10))
    path = folder / "model.onnx"
    ir.save(model, path, external_data="model.onnx.data")
    assert (folder / "model.onnx.data").is_file()
    return path


def _mlp() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                 torch.nn.Linear(16, 4)).eval()
    return module, (torch.zeros(2, 8),)


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under `root` (or `root` itself, a file): content hash and mtime."""
    paths = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
    return {str(path): (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                        else "dir", path.stat().st_mtime_ns) for path in paths}


def _listing(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _leftovers(folder: Path) -> list[str]:
    """Staging (`.OUT.tmp-*`) and set-aside (`.OUT.old-*`) directories in `folder`."""
    return [name for name in _listing(folder) if ".tmp-" in name or ".old-" in name]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ OUT vs the input


@pytest.mark.slow
def test_compile_onto_the_input_directory_with_force_is_refused(model, tmp_path):
    before, listing = _snapshot(model), _listing(tmp_path)
    result = _run_cli("compile", "model", "--target", "fp", "-o", "model", "--force",
                      cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert line == "error: model: is the input model; choose an output outside it"
    assert _snapshot(model) == before
    assert _listing(tmp_path) == listing


@pytest.mark.parametrize(("output", "force", "message"), [
    ("model", False, "{out}: is the input {model}"),
    ("model/compiled", True, "{out}: lies inside the input {model}"),
    ("model/compiled", False, "{out}: lies inside the input {model}"),
    (".", True, "{out}: holds the input {model}"),
])
def test_output_over_the_input_directory_is_refused(model, tmp_path, output, force, message):
    out = tmp_path / output
    before, listing = _snapshot(model), _listing(tmp_path)
    result = _invoke("compile", model, "--target", "fp", "-o", out,
                     *(["--force"] if force else []))
    assert result.exit_code == 1, result.output
    assert _one_error_line(result.stderr).startswith(
        "error: " + message.format(out=out, model=model))
    assert _snapshot(model) == before
    assert _listing(tmp_path) == listing


@pytest.mark.parametrize(("output", "message"), [
    ("onnx", "{out}: holds the input {path}"),
    ("onnx/model.onnx", "{out}: is the input {path}"),
    ("onnx/model.onnx.data", "{out}: is the external data of the input {path}"),
])
def test_output_over_an_onnx_input_or_its_data_is_refused(tmp_path, output, message):
    path = _onnx_with_external_data(tmp_path / "onnx")
    out = tmp_path / output
    before = _snapshot(path.parent)
    result = _invoke("compile", path, "--target", "fp", "-o", out, "--force")
    assert result.exit_code == 1, result.output
    assert _one_error_line(result.stderr).startswith(
        "error: " + message.format(out=out, path=path))
    assert _snapshot(path.parent) == before
    with pytest.raises(ValueError, match="is the external data of the input"):
        afmc.compile(path, "fp", output=tmp_path / "onnx" / "model.onnx.data", force=True)
    assert _snapshot(path.parent) == before


def test_api_compile_onto_its_input_is_refused(model, tmp_path):
    before = _snapshot(model)
    with pytest.raises(ValueError, match=f"{model}: is the input {model}"):
        afmc.compile(model, "fp", output=model, force=True)
    with pytest.raises(ValueError, match="holds the input"):
        afmc.compile(str(model), "fp", output=tmp_path, force=True)
    assert _snapshot(model) == before


@pytest.mark.parametrize(("output", "message"), [
    (".", "error: .: is the current directory; choose a new output directory"),
    ("..", "error: ..: holds the current directory {cwd}; choose a new output directory"),
    ("/", "error: /: holds the current directory {cwd}; choose a new output directory"),
])
def test_output_on_the_working_directory_is_refused(tmp_path, monkeypatch, output, message):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    before = _snapshot(tmp_path)
    result = _invoke("compile", "afmc-tiny", "--target", "fp", "-o", output, "--force")
    assert result.exit_code == 1, result.output
    assert _one_error_line(result.stderr) == message.format(cwd=work.resolve())
    assert _snapshot(tmp_path) == before


def test_train_and_synth_refuse_to_write_over_their_input(model, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("some training text " * 50)
    before = {path: _snapshot(path) for path in (model, text)}
    for args, message in [
        (("train", model, "--data", text, "-o", model, "--force", "--steps", "1"),
         f"error: {model}: is the input {model}"),
        (("train", model, "--data", text, "-o", text, "--force", "--steps", "1"),
         f"error: {text}: is the input {text}"),
        (("train", model, "--data", text, "-o", model / "trained", "--steps", "1"),
         f"error: {model / 'trained'}: lies inside the input {model}"),
        (("synth", model, "-o", model, "--tokens", "8", "--force"),
         f"error: {model}: is the input {model}"),
        (("synth", model, "-o", tmp_path, "--tokens", "8", "--force"),
         f"error: {tmp_path}: holds the input {model}"),
    ]:
        result = _invoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert _one_error_line(result.stderr).startswith(message), args
    assert {path: _snapshot(path) for path in before} == before
    assert _listing(tmp_path) == ["corpus.txt", "model"]


# ------------------------------------------------------------------ publishing


def _intrude(out: Path, kind: str) -> None:
    if kind == "directory":
        out.mkdir()
        (out / "theirs.txt").write_text("another compile's output")
    elif kind == "empty directory":
        out.mkdir()
    else:
        out.write_text("another program's file")


def _compile_while_intruding(out: Path, kind: str, renameat2: bool, monkeypatch,
                             force: bool):
    """Compile the MLP to `out` while another program creates `out` (a `kind`) during the
    capture; without renameat2 when `renameat2` is False (the fallback path)."""
    if not renameat2:
        monkeypatch.setattr(output_dir, "_libc_renameat2", lambda: None)
    module, example = _mlp()

    def progress(step: str) -> None:
        if step == "capture":
            _intrude(out, kind)

    return afmc.compile(module, "fp", example_inputs=example, output=out, force=force,
                        progress=progress)


@pytest.mark.slow
@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
@pytest.mark.parametrize("kind", ["directory", "empty directory", "file"])
def test_output_that_appears_while_compiling_is_not_overwritten(tmp_path, monkeypatch,
                                                                kind, renameat2):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match=f"{out}: appeared while compiling "
                       r"\(another compile\?\); nothing overwritten \(force=True "):
        _compile_while_intruding(out, kind, renameat2, monkeypatch, force=False)
    assert _listing(tmp_path) == ["out"]
    if kind == "directory":
        assert _listing(out) == ["theirs.txt"]
    elif kind == "empty directory":
        assert _listing(out) == []
    else:
        assert out.read_text() == "another program's file"


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_force_replaces_an_output_that_appeared_while_compiling(tmp_path, monkeypatch,
                                                                renameat2):
    out = tmp_path / "out"
    result = _compile_while_intruding(out, "directory", renameat2, monkeypatch, force=True)
    assert result.output == out
    assert _listing(out) == ["afmc.json", "model.onnx"]
    assert _listing(tmp_path) == ["out"]


@pytest.mark.slow
def test_second_of_two_compiles_to_one_output_is_refused(tmp_path):
    """A compile that finishes while another one to the same OUT runs wins; the other fails."""
    module, example = _mlp()
    out = tmp_path / "out"
    inner = {}

    def progress(step: str) -> None:
        if step == "write" and not inner:
            inner["result"] = afmc.compile(module, "fp", example_inputs=example, output=out)
            inner["files"] = _snapshot(out)

    with pytest.raises(FileExistsError, match="appeared while compiling"):
        afmc.compile(module, "fp", example_inputs=example, output=out, progress=progress)
    assert _snapshot(out) == inner["files"]
    assert _listing(tmp_path) == ["out"]


def test_a_signal_while_publishing_waits_until_the_output_is_complete(tmp_path, monkeypatch):
    module, example = _mlp()
    out = tmp_path / "out"
    seen = []
    rename = output_dir._rename_noreplace

    def signalled_rename(source: Path, target: Path) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        rename(source, target)

    def handler(signum: int, frame: object) -> None:
        seen.append((signum, sorted(os.listdir(tmp_path)),
                     sorted(os.listdir(out)) if out.is_dir() else None))

    monkeypatch.setattr(output_dir, "_rename_noreplace", signalled_rename)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        afmc.compile(module, "fp", example_inputs=example, output=out)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [(signal.SIGTERM, ["out"], ["afmc.json", "model.onnx"])]


@pytest.fixture
def sigint_raises():
    """SIGINT raising KeyboardInterrupt, as in a terminal, during the test: a suite started
    in the background by a shell without job control inherits SIGINT ignored (POSIX), and
    afmc rightly leaves an ignored signal ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _default_signals() -> None:
    """In a child before exec: SIGINT and SIGTERM at their defaults (see sigint_raises)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def test_a_signal_dropped_in_a_finalizer_still_stops_the_compile_before_publishing(
        tmp_path, sigint_raises):
    """SIGINT arriving while a __del__ runs: Python prints its KeyboardInterrupt as
    "Exception ignored" and goes on; afmc raises it again before publishing the output."""
    module, example = _mlp()
    out = tmp_path / "out"

    class SignalsWhileFinalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs here, between these bytecodes
                pass

    fired = []

    def progress(*_: object) -> None:
        if not fired:
            fired.append(True)
            SignalsWhileFinalized()  # collected at once: __del__ runs

    with pytest.raises(KeyboardInterrupt):
        afmc.compile(module, "fp", example_inputs=example, output=out, progress=progress)
    assert fired and _listing(tmp_path) == []


# ------------------------------------------------------------------ signals


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "message"), [
    (signal.SIGTERM, 143, "error: terminated"),
    (signal.SIGINT, 130, "error: interrupted"),
])
def test_signal_during_compile_removes_the_staging_directory(tmp_path, signum, code, message):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([*CLI, "compile", "afmc-tiny", "--target", "fp", "-o", "out"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 240
        while not any(name.startswith(".out.tmp-") for name in os.listdir(tmp_path)):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the compile never staged its output"
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == message and "Traceback" not in stderr
    assert os.listdir(tmp_path) == []


def test_an_existing_output_names_the_python_argument_or_the_flag(tmp_path):
    """The API's error names force=True (afmc's own type, still a FileExistsError); the
    command line's names --force; both before any work, the output untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "theirs.txt").write_text("kept")
    with pytest.raises(OutputExistsError) as error:
        afmc.compile("afmc-tiny", output=out, progress=False)
    assert isinstance(error.value, FileExistsError)
    assert str(error.value) == f"{out}: output exists (force=True overwrites it)"
    result = CliRunner().invoke(app, ["compile", "afmc-tiny", "-o", str(out)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {out}: output exists (use --force to overwrite)"
    assert _listing(out) == ["theirs.txt"]
