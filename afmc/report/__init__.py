"""afmc report: a compiled model's layers, tiles and evaluation results, as tables, a tile
map picture and one HTML page.

- command: `report(OUT)`, the command's reading, checking and writing;
- results: the result files of OUT/eval, read and validated (pydantic models);
- headlines: one line per result file (the table and the JSON headline);
- data: the report as one JSON object (--json);
- plots: the page's figures (matplotlib);
- html: the self-contained page.

`afmc.report.report` and `afmc.report.check_report_options` are imported on first use, so
that reading result files (results) does not import the tables, figures and page.
"""

from typing import Any

__all__ = ["check_report_options", "report"]


def __getattr__(name: str) -> Any:
    if name in ("report", "check_report_options", "SVG_FILE"):
        from afmc.report import command

        return getattr(command, name)
    raise AttributeError(f"module 'afmc.report' has no attribute {name!r}")
