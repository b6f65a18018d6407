"""`afmc cost OUT --profile P`: the cost table of a compiled output on a hardware profile.

A plain Typer-compatible function; afmc.cli registers it (``app.command()(cost)``). At
module level it imports only typer and rich, so the CLI can import it at start-up.
A user error (a missing output, an unknown or invalid profile) is one `error:` line and
exit status 1 (afmc.io.error_lines.user_errors, as every command); anything else keeps its
traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEFAULT_PROFILE = "ibm-pcm-64core"
DEFAULT_BASELINE = "digital-int8"


def cost(
    output: Annotated[Path, typer.Argument(help="Output directory of afmc compile")],
    profile: Annotated[str, typer.Option(
        help="Hardware profile: a built-in name (ibm-pcm-64core, ibm-hermes-core, "
             "digital-int8, digital-int4) or a YAML file")] = DEFAULT_PROFILE,
    baseline: Annotated[str, typer.Option(
        help="Digital baseline profile to compare with")] = DEFAULT_BASELINE,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON instead of tables")] = False,
) -> None:
    """Energy, latency and area per token of a compiled model on a hardware profile
    (docs/cost.md), with the ratio against a digital baseline."""
    from afmc.cost.model import estimate
    from afmc.cost.profile import load_profile
    from afmc.cost.summary import compare
    from afmc.cost.table import layer_table, summary_lines
    from afmc.io.error_lines import user_errors

    with user_errors():
        chosen, reference = load_profile(profile), load_profile(baseline)
        if reference.kind != "digital":
            raise ValueError(f"--baseline {baseline}: not a digital profile")
        report, base = estimate(output, chosen), estimate(output, reference)
    if json_out:
        typer.echo(json.dumps({**report.to_json(), "comparison": compare(report, base)},
                              indent=2))
        return
    out = Console()
    out.print(layer_table(report))
    for line in summary_lines(report, base):
        out.print(line, highlight=False)
