"""The docs stay true: the op reference shows the function bodies the code emits."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ops_doc_matches_the_function_bodies():
    spec = importlib.util.spec_from_file_location("gen_ops_doc", ROOT / "scripts/gen_ops_doc.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.bodies() in (ROOT / "docs/ops.md").read_text(), \
        "docs/ops.md is stale: run python scripts/gen_ops_doc.py"


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:8] if line.startswith("make ")]
    assert [c.split()[1] for c in commands] == ["demo", "test"]


ENTRY_MODULES = ["afmc.api", "afmc.cli", "afmc.runtime.chip", "afmc.record", "afmc.report",
                 "afmc.frontends", "afmc.data.calibration", "afmc.mapping", "afmc.passes",
                 "afmc.targets.digital", "afmc.runtime.generation",
                 "afmc.eval.evaluate", "afmc.eval.fidelity", "afmc.eval.embedding",
                 "afmc.passes.range_search", "afmc.eval.lm_eval_model",
                 "afmc.eval.test_time_compute"]


@pytest.mark.slow
def test_entry_modules_import_first():
    """No import cycle: each module a user may import first imports in a fresh interpreter
    (the interpreters run side by side)."""
    running = {module: subprocess.Popen([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True) for module in ENTRY_MODULES}
    failed = {}
    for module, process in running.items():
        _, stderr = process.communicate()
        if process.returncode != 0:
            failed[module] = stderr.strip().splitlines()[-1]
    assert not failed, failed


@pytest.mark.slow
def test_quickstart_python_snippet_runs(tmp_path):
    """The Python block of docs/quickstart.md runs as it is, in a fresh interpreter."""
    text = (ROOT / "docs/quickstart.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 11, 256)"
    assert (tmp_path / "out/tiny/model.onnx").is_file()
