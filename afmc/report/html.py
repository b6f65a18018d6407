"""The report page: one self-contained HTML file about a compiled output directory.

Rules:
- Seven sections, in this order and with these ids: "config" (afmc.json: source,
  target, version, summary, config hardware/calibration/noise), "placement"
  (layers table with placement and rule, tiles per strategy, the tile map SVG
  inline), "chips" (eval/seeds-*, embedding-* and inputs-*.json: the headline
  numbers over chips), "drift" (eval/drift-*.json), "sensitivity"
  (eval/sensitivity-*.json), "test-time-compute" (eval/test_time_compute-*.json)
  and "passes" (afmc.json "passes").
- Every result file of OUT/eval is shown (afmc.report.results): in "chips" a row
  each, in the other sections a part each, headed by the file's name and settings.
- Self-contained: figures are PNG data URIs (afmc.report.plots), the tile map
  is inline SVG, the style sheet is inline; no scripts, no external file,
  font or link (the only links are to the page's own sections).
- A section without a file says "Not evaluated yet", names the files' pattern and
  gives the command that makes it (with --text for a model with a tokenizer,
  --inputs otherwise). A result file that is present but broken is an error
  (afmc.report.results) and no page is built.
- Every string taken from a file is escaped (html.escape).
- Numbers: metric values, std and deltas with 4 decimals (the std over chips is the
  sample std, ddof=1; "n/a" over one chip), SQNR with 1 (dB),
  seconds with 3, accuracy with 3, shares and utilization as percent with 1.
"""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable, Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from afmc.eval.result_models import DriftResult, SensitivityResult, TtcResult, validated
from afmc.eval.spread import std_text
from afmc.io.layout import EVAL_DIR
from afmc.mapping import TileMap, tile_map_svg
from afmc.report import plots
from afmc.report.results import Found, PassTime, RecordFacts

HTML_FILE = "report.html"
SECTIONS = {
    "config": "Model and hardware configuration",
    "placement": "Placement and tile map",
    "chips": "Accuracy over chips",
    "drift": "Accuracy against drift time",
    "sensitivity": "Per-layer sensitivity",
    "test-time-compute": "Test-time compute",
    "passes": "Compile log",
}
NOT_RECORDED = "not recorded"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #e4e4e4; text-align: left;
         vertical-align: top; }
th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; border-top: 2px solid #bbb; }
.grid { display: flex; flex-wrap: wrap; gap: 0 2em; }
img, svg { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.absent { background: #fff6dd; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
pre { background: #f3f3f3; padding: 0.5em 1em; overflow-x: auto; }
code { font-size: 0.95em; }
.muted { color: #666; }
"""


def value_text(value: Any) -> str:
    """A configuration value as text: numbers in %g form, lists and objects as JSON."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def seconds_text(seconds: float) -> str:
    """Whole seconds as an integer (2592000), others in %g form."""
    return f"{seconds:.0f}" if float(seconds).is_integer() else f"{seconds:g}"


def table(
    headers: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    numeric: Iterable[int] = (),
    total: Sequence[Any] | None = None,
) -> str:
    """An HTML table of escaped cells (no header row for `headers` None); columns in
    `numeric` are right-aligned; a `total` row is set apart."""
    right = set(numeric)

    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(
            f'<{tag} class="num">{escape(str(v))}</{tag}>' if i in right
            else f"<{tag}>{escape(str(v))}</{tag}>"
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    if total is not None:
        body += f'<tr class="total">{cells(total, "td")}</tr>'
    head = "" if headers is None else f"<thead><tr>{cells(headers, 'th')}</tr></thead>"
    return f"<table>{head}<tbody>{body}</tbody></table>"


def image(png: bytes, alt: str) -> str:
    """`png` as an <img> with a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def absent(path: Path, command: str) -> str:
    """The note for results not made yet (`path`: their pattern), with a command that
    makes one."""
    return (
        f'<div class="absent"><p>Not evaluated yet: no <code>{escape(str(path))}</code>. '
        f"Make one with:</p><pre>{escape(command)}</pre></div>"
    )


def config_section(facts: RecordFacts) -> str:
    """Source, target, version and summary of the compile, and its configuration."""
    model = [
        ("source model", facts.source),
        ("target", facts.target),
        ("runtime", facts.runtime),
        ("calibration data", facts.calibration),
        ("tokenizer", facts.tokenizer),
        ("afmc version", facts.afmc_version),
    ]
    parts = [table(None, [(key, NOT_RECORDED if v is None else v) for key, v in model])]
    if facts.summary is not None:
        summary = []
        for key, value in facts.summary.items():
            if key == "tile_utilization" and isinstance(value, (int, float)):
                text = f"{value:.1%}"
            elif isinstance(value, dict):
                text = ", ".join(f"{name} {value_text(v)}" for name, v in value.items())
            else:
                text = value_text(value)
            summary.append((key.replace("_", " "), text))
        parts.append("<h3>Summary</h3>" + table(None, summary))
    grid = []
    for name in ("hardware", "calibration", "noise"):
        section = facts.config.get(name)
        body = (f'<p class="muted">{NOT_RECORDED}</p>' if section is None else
                table(("field", "value"), [(k, value_text(v)) for k, v in section.items()]))
        grid.append(f"<div><h3>config {name}</h3>{body}</div>")
    parts.append(f'<div class="grid">{"".join(grid)}</div>')
    return "".join(parts)


def placement_section(layers: list[dict[str, Any]], chosen: str,
                      maps: dict[str, TileMap]) -> str:
    """The layers with their placement and rule, tiles per strategy, the map inline."""
    tile_map = maps[chosen]
    tiles, share = tile_map.layer_tiles(), tile_map.layer_utilization()
    analog = sum(layer["placement"] == "analog" for layer in layers)
    rows = []
    for index, layer in enumerate(layers):
        name = layer["name"]
        sqnr = layer.get("sqnr_db")
        rows.append((
            index, name, f"{layer['out_features']} x {layer['in_features']}",
            layer["placement"], layer["rule"],
            len(layer["slice_sizes"]) if name in tiles else "-",
            tiles.get(name, "-"),
            f"{share[name]:.1%}" if name in share else "-",
            "-" if sqnr is None else f"{sqnr:.1f}",
        ))
    layer_table = table(
        ("#", "layer", "shape [out x in]", "placement", "rule (why)", "slices", "tiles",
         "utilization", "SQNR dB"),
        rows, numeric=(0, 5, 6, 7, 8),
        total=("", f"{analog} analog, {len(layers) - analog} digital", "", "", "", "",
               tile_map.tiles, f"{tile_map.utilization:.1%}", ""),
    )
    strategies = table(
        ("strategy", "tiles", "utilization"),
        [(f"{name} (shown)" if name == chosen else name, m.tiles, f"{m.utilization:.1%}")
         for name, m in maps.items()],
        numeric=(1, 2),
    )
    return (
        f"<p>{len(layers)} static-weight layers on tiles of {tile_map.rows} x "
        f"{tile_map.cols} cells. Utilization: the layer's cells / cells of the tiles "
        f"holding it. SQNR: the calibration search's worst slice.</p>"
        f"<h3>Layers</h3>{layer_table}"
        f"<h3>Tiles per strategy</h3>{strategies}"
        f"<h3>Tile map ({escape(chosen)})</h3>"
        f'<p class="muted">Hover over a block for its layer, slice and position.</p>'
        f"{tile_map_svg(tile_map, namespace=False)}"
    )


def _fp_text(fp: float | None) -> str:
    return "the reference of the error" if fp is None else f"{fp:.4f}"


def _vs_fp(value: float, fp: float | None, metric: str) -> str:
    return "-" if fp is None or metric != "perplexity" or fp == 0 else f"{value / fp - 1:+.2%}"


def drift_section(drift: DriftResult) -> str:
    """The drift figure and the mean +- sample std over chips at every time."""
    noise = ", ".join(f"{key} {value_text(value)}" for key, value in drift.noise.items())
    fp = _fp_text(drift.fp)
    rows = [
        (plots.time_label(p.time_s), seconds_text(p.time_s), f"{p.mean:.4f}",
         std_text(p.std), p.chips, _vs_fp(p.mean, drift.fp, drift.metric))
        for p in drift.summary
    ]
    return (
        f"<p>Metric: {escape(plots.METRIC_LABEL[drift.metric])}; FP view: {fp}; "
        f"read noise {drift.read_noise:g}.</p>"
        + (f'<p class="muted">Noise: {escape(noise)}</p>' if noise else "")
        + image(plots.drift_figure(drift), "metric against drift time")
        + table(("time", "seconds", "mean", "sample std", "chips", "mean vs FP"), rows,
                numeric=(1, 2, 3, 4, 5))
    )


def sensitivity_section(result: SensitivityResult) -> str:
    """The ranking, the cumulative curve and the keep-digital suggestion."""
    keep = set(result.keep_digital)
    after = {point.added: point.value for point in result.cumulative}
    rows = [
        (rank, layer.name, "inf" if layer.sqnr_db is None else f"{layer.sqnr_db:.1f}",
         f"{layer.relative_error:.4f}",
         f"{layer.value:.4f}", f"{layer.delta:+.4f}",
         f"{after[layer.name]:.4f}" if layer.name in after else "-",
         "digital" if layer.name in keep else "analog")
        for rank, layer in enumerate(result.layers, start=1)
    ]
    fp = _fp_text(result.fp)
    if result.budget is None:
        suggestion = ("<p><strong>No budget was given, so there is no keep-digital "
                      "suggestion (afmc eval --sensitivity --budget X%).</strong></p>")
    else:
        allowed = plots.budget_line(result)
        bound = "" if allowed is None else f" (metric at most {allowed:.4f})"
        analog = len(result.layers) - len(result.keep_digital)
        names = ", ".join(result.keep_digital) or "none"
        suggestion = (f"<p><strong>Budget {result.budget:.2%}{bound}: {analog} layer(s) "
                      f"analog, {len(result.keep_digital)} kept digital.</strong></p>"
                      f'<p class="muted">Kept digital: <code>{escape(names)}</code></p>')
    return (
        f"<p>Metric: {escape(plots.METRIC_LABEL[result.metric])}, chip seed "
        f"{result.seed}; FP view: {fp}; all layers analog {result.all_analog:.4f}.</p>"
        + suggestion
        + image(plots.sensitivity_bars(result), "delta per layer")
        + image(plots.sensitivity_curve(result), "cumulative curve")
        + table(("rank", "layer", "SQNR dB", "relative error", "value", "delta",
                 "cumulative value", "suggestion"), rows, numeric=(0, 2, 3, 4, 5, 6))
    )


def ttc_section(result: TtcResult) -> str:
    """Accuracy against samples per problem for every curve."""
    rows = [
        (curve.label, "-" if curve.seed is None else curve.seed,
         *(f"{accuracy:.3f}" for accuracy in curve.accuracy))
        for curve in result.curves
    ]
    headers = ("curve", "seed", *(f"n = {n}" for n in result.samples))
    return (
        f"<p>Task {escape(result.task)}: {result.problems} problems, {escape(result.vote)} "
        f"vote over n samples at temperature {result.temperature:g}.</p>"
        + image(plots.ttc_figure(result), "accuracy against samples")
        + table(headers, rows, numeric=range(1, len(headers)))
    )


def settings_text(settings: dict[str, Any]) -> str:
    """A result file's settings in one line (the noise model by its name)."""
    shown = {key: value["model"] if key == "noise" and isinstance(value, dict) else value
             for key, value in settings.items()}
    return ", ".join(f"{key} {value_text(value)}" for key, value in shown.items())


def chips_rows(found: Found) -> list[tuple[Any, ...]]:
    """The headline rows of a seeds, embedding or inputs result: file, data, chips,
    metric, mean, sample std, FP."""
    result, name = found.result, found.path.name
    data = value_text(result.settings.get("data", NOT_RECORDED))
    chips = len(result.chips) if hasattr(result, "chips") else result.settings.get("seeds", "-")
    if result.kind == "seeds":
        return [(name, data, chips, "perplexity", f"{result.mean:.4f}", std_text(result.std),
                 f"{result.fp:.4f}")]
    if result.kind == "embedding":
        return [(name, data, chips, "embedding relative error", f"{result.mean:.4f}",
                 std_text(result.std), "-")]
    rows = [(name, data, chips, f"{output} relative error",
             _number(result.mean.outputs[output].get("relative_error")),
             std_text(result.std.outputs[output].get("relative_error")), "-")
            for output in result.outputs]
    if result.fp_accuracy is not None:
        rows.append((name, data, chips, "accuracy", _number(result.mean.accuracy),
                     std_text(result.std.accuracy), f"{result.fp_accuracy:.4f}"))
    return rows


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def chips_section(found: list[Found]) -> str:
    """One table: the mean +- sample std over chips of every seeds, embedding and inputs
    result."""
    rows = [row for each in found for row in chips_rows(each)]
    return table(("result file", "data", "chips", "metric", "mean", "sample std", "FP view"),
                 rows, numeric=(2, 4, 5, 6))


def parts(found: list[Found], body: Callable[[Any], str]) -> str:
    """Each result file of a kind under its name and settings."""
    return "".join(
        f"<h3>{escape(each.path.name)}</h3>"
        + (f'<p class="muted">Settings: {escape(settings_text(each.result.settings))}</p>'
           if each.result.settings else "")
        + body(each.result)
        for each in found
    )


def passes_section(passes: list[PassTime]) -> str:
    """The time of every compile pass as a table and a bar chart."""
    total = sum(step.seconds for step in passes)
    rows = [
        (step.name, f"{step.seconds:.3f}", f"{step.seconds / total:.1%}" if total else "-",
         "-" if step.modified is None else ("yes" if step.modified else "no"))
        for step in passes
    ]
    return (
        table(("pass", "seconds", "share", "modified the graph"), rows, numeric=(1, 2),
              total=("total", f"{total:.3f}", "100.0%" if total else "-", ""))
        + image(plots.passes_figure(passes), "seconds per pass")
    )


def commands(out_dir: Path, text_model: bool) -> dict[str, str]:
    """The command that makes each result file of `out_dir`."""
    out, data = shlex.quote(str(out_dir)), "--text FILE" if text_model else "--inputs FILE"
    return {
        "chips": f"afmc eval {out} {data} --seeds 5",
        "drift": f"afmc eval {out} {data} --drift 0,3600,86400 --seeds 5",
        "sensitivity": f"afmc eval {out} --sensitivity {data} --budget 1%",
        "test-time-compute": f"afmc eval {out} --task FILE --samples 8 --vote majority",
    }


ABSENT = {"chips": "seeds-*.json", "drift": "drift-*.json",
          "sensitivity": "sensitivity-*.json", "test-time-compute": "test_time_compute-*.json"}


def section_bodies(out_dir: Path, record: dict[str, Any], facts: RecordFacts,
                   results: dict[str, list[Found]], chosen: str,
                   maps: dict[str, TileMap]) -> dict[str, str]:
    """The body of every section, by id."""
    folder = Path(out_dir) / EVAL_DIR
    make = commands(out_dir, facts.tokenizer is not None)
    evaluated = {
        "chips": chips_section(results["seeds"] + results["embedding"] + results["inputs"])
        if results["seeds"] or results["embedding"] or results["inputs"] else None,
        "drift": parts(results["drift"], drift_section) if results["drift"] else None,
        "sensitivity": parts(results["sensitivity"], sensitivity_section)
        if results["sensitivity"] else None,
        "test-time-compute": parts(results["test_time_compute"], ttc_section)
        if results["test_time_compute"] else None,
    }
    return {
        "config": config_section(facts),
        "placement": placement_section(record["layers"], chosen, maps),
        **{key: absent(folder / ABSENT[key], make[key]) if body is None else body
           for key, body in evaluated.items()},
        "passes": '<p class="absent">This afmc.json has no compile log ("passes"); '
        "compile again to record one.</p>" if facts.passes is None
        else passes_section(facts.passes),
    }


def source_name(source: str | None) -> str | None:
    """A compile source as a title names it: a path's last part ("hf:/a/b/model.gguf" ->
    "model.gguf"), a built-in model's name as it is."""
    if not source:
        return None
    return Path(source.removeprefix("hf:")).name or source


def shown_path(path: Path) -> str:
    """`path` relative to the current directory when it lies inside it, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def build_page(out_dir: Path, record: dict[str, Any], record_path: Path, chosen: str,
               maps: dict[str, TileMap], results: dict[str, list[Found]]) -> str:
    """The page of `out_dir` (module rules); `record` was read from `record_path`, `maps`
    holds every strategy's tile map, `chosen` names the one drawn and `results` are the
    result files of OUT/eval (afmc.report.results)."""
    facts = validated(record_path, record, RecordFacts, "afmc record")
    bodies = section_bodies(out_dir, record, facts, results, chosen, maps)
    title = f"afmc report: {source_name(facts.source) or out_dir.name}"
    nav = "".join(f'<a href="#{key}">{escape(name)}</a>' for key, name in SECTIONS.items())
    sections = "".join(
        f'<section id="{key}"><h2>{number}. {escape(SECTIONS[key])}</h2>{bodies[key]}</section>'
        for number, key in enumerate(SECTIONS, start=1)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="muted">Output directory <code>{escape(shown_path(out_dir))}</code>, target '
        f"{escape(facts.target or NOT_RECORDED)}.</p><nav>{nav}</nav>{sections}"
        "</body></html>\n"
    )
