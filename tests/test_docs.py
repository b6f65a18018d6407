"""The docs stay true: the op reference shows the function bodies the code emits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
