"""One runnable example per command, shown at the end of its --help (the epilog).

Every command and sub-command of the afmc app needs an entry; add_examples fails on
one without, so that a new command comes with its example.
"""

from __future__ import annotations

import typer

EXAMPLES: dict[str, str] = {
    "": "afmc compile afmc-tiny -o out/tiny && afmc report out/tiny",
    "compile": "afmc compile afmc-tiny -o out/tiny",
    "run": "afmc run out/tiny --text stdlib:heldout",
    "train": "afmc train afmc-tiny --data stdlib:train -o out/trained --steps 20",
    "eval": "afmc eval out/tiny --text stdlib:heldout --seeds 3",
    "generate": "afmc generate out/tiny --prompt 'def main():'",
    "lm-eval": "afmc lm-eval --model afmc --model_args path=out/tiny,seed=0 --tasks hellaswag",
    "synth": "afmc synth afmc-tiny -o out/data --tokens 4096",
    "report": "afmc report out/tiny",
    "cost": "afmc cost out/tiny --profile ibm-hermes-core",
    "targets": "afmc targets --passes",
    "passes": "afmc passes list",
    "passes list": "afmc passes list --json",
    "config": "afmc config show > afmc.yaml",
    "config show": "afmc config show --target aimc > afmc.yaml",
}


def _name(info: typer.models.CommandInfo) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


def add_examples(app: typer.Typer, prefix: str = "") -> None:
    """Set the epilog "Example: ..." of `app` (the root: prefix ""), of every command and
    of every sub-app (group), recursively."""
    if not prefix:
        app.info.epilog = f"Example: {EXAMPLES['']}"
    for info in app.registered_commands:
        info.epilog = f"Example: {EXAMPLES[prefix + _name(info)]}"
    for group in app.registered_groups:
        group.epilog = f"Example: {EXAMPLES[prefix + group.name]}"
        add_examples(group.typer_instance, f"{prefix}{group.name} ")
