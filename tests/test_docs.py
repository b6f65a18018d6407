"""The docs stay true: the op reference shows the function bodies the code emits."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
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


def _module_level_imports(path: Path, package: str) -> set[str]:
    """The afmc modules `path` imports when it is itself imported: its top-level import
    statements (and those under top-level if/try), not those inside functions or under
    ``if TYPE_CHECKING``; each with its parent packages, which Python imports first."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                pending.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody
                           + [n for handler in node.handlers for n in handler.body])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = set()
    for name in found:
        parts = name.split(".")
        modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in modules if name.startswith("afmc")}


def test_no_module_imports_itself_back():
    """No import cycle among afmc's modules at import time (the graph of their module-level
    imports is acyclic), so any module a user imports first imports cleanly."""
    import networkx as nx

    files = {}
    for path in (ROOT / "afmc").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = (path, name if parts[-1] == "__init__" else name.rsplit(".", 1)[0])
    graph = nx.DiGraph()
    for name, (path, package) in files.items():
        graph.add_node(name)
        for imported in _module_level_imports(path, package) & files.keys():
            if imported != name and not name.startswith(f"{imported}.") \
                    and not imported.startswith(f"{name}."):
                graph.add_edge(name, imported)
    assert graph.number_of_edges() > 100  # the walk found afmc's imports
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, sorted(cycles, key=len)[:3]


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


def _docs_commands():
    spec = importlib.util.spec_from_file_location("docs_commands",
                                                  ROOT / "benchmarks/docs_commands.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_commands"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# what a synopsis has and a command does not: a bracketed option, an ellipsis, a name in
# capitals standing for the user's own file or model
PLACEHOLDER = re.compile(r"\[--|\.\.\.|\b(FILE|MODEL|TASKS|TEXT|DATA)\b")


def test_every_command_block_runs_verbatim_or_says_why_not():
    """Every command block of README.md and docs/*.md is found, carries only known markers
    and example files, and, unless marked skip with a reason, holds no placeholder: it is a
    command as a user types it (benchmarks/docs_commands.py runs them all)."""
    commands = _docs_commands()
    blocks = [block for page in commands.pages() for block in commands.blocks(page)]
    assert len(blocks) >= 50 and {block.mode for block in blocks} == {"suite", "slow", "skip"}
    for block in blocks:
        where = f"{block.page}:{block.line}"
        if block.mode == "skip":
            assert block.reason, f"{where}: skipped without a reason"
            continue
        assert all(name in commands.FIXTURES for name in block.files), where
        if block.language == "bash":
            assert not PLACEHOLDER.search(block.code), \
                f"{where}: a placeholder in a block that runs (mark it skip, or make it real)"


def test_a_marker_with_an_unknown_key_names_the_page_and_line(tmp_path, monkeypatch):
    commands = _docs_commands()
    monkeypatch.setattr(commands, "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- docs-test: fast -->\n```bash\nafmc --version\n```\n")
    with pytest.raises(ValueError, match="page.md:5: unknown docs-test key 'fast'"):
        commands.blocks(page)
    page.write_text("```bash\nafmc --version\n")
    with pytest.raises(ValueError, match="page.md:1: a code fence that is never closed"):
        commands.blocks(page)


@pytest.mark.slow
def test_the_suite_blocks_run_verbatim():
    """The blocks marked suite (fast ones) run as written, each page in a fresh folder."""
    commands = _docs_commands()
    suite = [block for page in commands.pages() for block in commands.blocks(page)
             if block.mode == "suite"]
    assert suite
    folder = commands.workspace()
    try:
        for block in suite:
            done = commands.run_block(block, folder, timeout=300)
            assert done.returncode == 0, f"{block.page}:{block.line}: {done.stderr[-2000:]}"
            assert "Traceback" not in done.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)
