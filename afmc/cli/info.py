"""The commands that describe afmc itself: `afmc passes list`, `afmc targets` and
`afmc config show`, each with --json where it prints a table.

Plain Typer-compatible functions and sub-apps; afmc.cli registers them. At module level
this imports only typer and rich, so the CLI starts fast.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from afmc.console.tables import Column
from afmc.io.error_lines import user_errors

passes_app = typer.Typer(help="Inspect the registered passes.", no_args_is_help=True)
config_app = typer.Typer(help="The configuration that --config files set.",
                         no_args_is_help=True)
JSON_HELP = "Print the data as JSON instead of a table"
INPUTS = {"model": "torch models (Hugging Face, GGUF, afmc-tiny)", "onnx": "ONNX files",
          "trained": "models trained by afmc train",
          "trained-onnx": "ONNX files trained by afmc train"}
UNTRAINED = {"trained": "model", "trained-onnx": "onnx"}  # the list a trained input falls back to


def _passes_table(rows: list[tuple[str, ...]], *, title: str | None = None,
                  group: str | None = None) -> Table:
    """Passes as rows (pass, level or group, what it does): names and levels unbroken."""
    table = Table(title=title, title_justify="left", show_edge=False)
    Column(group or "pass", justify="left").add_to(table)
    Column("pass" if group else "level", justify="left").add_to(table)
    Column("what it does", "text", "left").add_to(table)
    for row in rows:
        table.add_row(*row)
    return table


@passes_app.command("list")
def passes_list(
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Name, level and purpose of every registered pass."""
    from afmc.passes import PASSES

    if json_out:
        typer.echo(json.dumps([{"name": info.name, "level": info.level, "summary": info.summary,
                                "uses_calibration": info.uses_calibration}
                               for info in PASSES.values()], indent=2))
        return
    Console().print(_passes_table([(info.name, info.level, info.summary)
                                   for info in PASSES.values()]))


def target_passes(name: str) -> dict[str, list[dict[str, str]] | None]:
    """The pass lists of target `name` by input kind (model, onnx, trained, trained-onnx),
    each pass with its one-line rule; None where the target takes no such input (a trained
    model runs the untrained list when the target has no list of its own)."""
    from afmc.passes import PASSES
    from afmc.targets import get_target

    target = get_target(name)
    lists = {"model": target.fx_passes, "onnx": target.onnx_passes,
             "trained": target.trained_fx_passes or target.fx_passes,
             "trained-onnx": target.trained_onnx_passes or target.onnx_passes}
    return {kind: None if names is None else
            [{"name": each, "summary": PASSES[each].summary} for each in names]
            for kind, names in lists.items()}


def targets(
    passes: Annotated[bool, typer.Option(
        "--passes", help="Also list each target's passes in order, with their rules")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """The compile targets, and with --passes the pass list of each."""
    from afmc.targets import TARGETS

    data: list[dict[str, Any]] = [
        {"name": target.name, "description": target.description, "runtime": target.runtime,
         **({"passes": target_passes(target.name)} if passes else {})}
        for target in TARGETS.values()]
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    out = Console()
    if not passes:
        table = Table(show_edge=False, show_header=False)
        Column("target", justify="left").add_to(table)
        Column("description", "text", "left").add_to(table)
        for each in data:
            table.add_row(each["name"], each["description"])
        out.print(table)
        return
    for each in data:
        lists = each["passes"]
        shown = [kind for kind in INPUTS if lists[kind] and (
            kind not in UNTRAINED or lists[kind] != lists[UNTRAINED[kind]])]
        rows = [(kind if index == 0 else "", step["name"], step["summary"])
                for kind in shown for index, step in enumerate(lists[kind])]
        title = f"{each['name']}: {each['description']}"
        out.print(_passes_table(rows, title=title, group="input") if rows else
                  f"{title}\n  no passes")
        out.print()
    out.print("input: " + "; ".join(f"{kind}: {label}" for kind, label in INPUTS.items())
              + " (trained, trained-onnx: shown where they differ from model, onnx)",
              highlight=False)


@config_app.command("show")
def config_show(
    target: Annotated[str | None, typer.Option(
        help="Only the sections this target reads (aimc, int8, int4 or fp)")] = None,
) -> None:
    """Print the default configuration as commented YAML, ready for --config."""
    from afmc.cli.config_show import config_yaml

    with user_errors():
        typer.echo(config_yaml(target=target), nl=False)
