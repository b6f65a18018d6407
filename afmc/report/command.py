"""afmc report: the layers, tiles and utilization of a compiled model, and its tile map picture.

Reads OUT/afmc.json: "layers" (LayerRecord dicts), "config" (hardware.tile_rows,
tile_cols, and tile_strategy when the configuration has it) and, when present,
"tile_map" (TileMap.to_json() of the compiled strategy, docs/tile-mapping.md).
The map shown is the requested strategy's, else the stored map's, else the
configured strategy's, else one-per-tile; a stored map is used as stored, every
other map is computed from the layers and the configuration. Prints a table of
the layers, one of the tile totals of every strategy and one of the result files
of OUT/eval with their headline numbers (afmc.report.headlines), or with --json all of
it as one JSON object (afmc.report.data), draws the map as SVG
(default OUT/tile_map.svg) and writes the report page (afmc.report.html; default
OUT/report.html) with the evaluation results of OUT/eval.

An afmc.json that is not JSON, lacks "config" or "layers", or whose entries lack
a field the tables need is an error naming the file and the field; so is a
broken result file in OUT/eval. Everything is read and the page built before
anything is printed or written, so an error leaves no new file; the page is
written to a temporary file and moved into place (never half a page).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from afmc.console.tables import Column, FittedTable, layer_names
from afmc.eval.json_out import write_text_atomic
from afmc.io.input_files import read_json_object
from afmc.io.layout import RECORD_FILE
from afmc.mapping import STRATEGIES, TileMap, map_tiles, write_tile_map_svg
from afmc.report.data import default_cost, report_data
from afmc.report.headlines import results_table
from afmc.report.html import HTML_FILE, build_page
from afmc.report.results import Found, read_eval_results
from afmc.runtime.bit_slicing import hardware_copies

DEFAULT_STRATEGY = "one-per-tile"
SVG_FILE = "tile_map.svg"


@dataclass
class MappingReport:
    """What report() found: the map it drew, the map of every strategy, the files written."""

    tile_map: TileMap
    strategies: dict[str, TileMap]
    svg: Path
    html: Path


def tile_maps(
    record: dict[str, Any], strategy: str | None = None
) -> tuple[str, dict[str, TileMap]]:
    """The strategy to show and the map of every strategy for an afmc.json record."""
    hardware = record["config"]["hardware"]
    stored = TileMap.from_json(record["tile_map"]) if "tile_map" in record else None
    chosen = (
        strategy
        or (stored.strategy if stored else None)
        or hardware.get("tile_strategy")
        or DEFAULT_STRATEGY
    )
    if chosen not in STRATEGIES:
        raise ValueError(f"unknown tile strategy {chosen!r} (known: {', '.join(STRATEGIES)})")
    maps = {
        name: map_tiles(record["layers"], hardware["tile_rows"], hardware["tile_cols"], name)
        .replicated(hardware_copies(hardware))
        for name in STRATEGIES
        if stored is None or name != stored.strategy
    }
    if stored is not None:
        maps[stored.strategy] = stored
    return chosen, {name: maps[name] for name in STRATEGIES}


def layer_table(layers: list[dict[str, Any]], tile_map: TileMap) -> FittedTable:
    """One row per layer: shape, slices, tiles and utilization under `tile_map` (names
    without their common prefix, split into narrower tables where the width asks)."""
    names = layer_names([layer["name"] for layer in layers])
    tiles, share = tile_map.layer_tiles(), tile_map.layer_utilization()
    rows: list[list[str] | None] = []
    for layer in layers:
        name, shape = layer["name"], f"{layer['out_features']} x {layer['in_features']}"
        mapped = ("-", "-", "-")
        if name in tiles:
            mapped = (str(len(layer["slice_sizes"])), str(tiles[name]), f"{share[name]:.1%}")
        outliers = layer.get("outlier_weights", 0)
        rows.append([names.show(name), shape, *mapped, f"{outliers:,}" if outliers else "-",
                     layer["placement"]])
    moved = sum(layer.get("outlier_weights", 0) for layer in layers)
    rows += [None, [f"total ({len(tiles)} analog)", "", "", str(tile_map.tiles),
                    f"{tile_map.utilization:.1%}", f"{moved:,}" if moved else "-", ""]]
    columns = [Column("layer", "name", "left"), Column("shape [out x in]"), Column("slices"),
               Column("tiles"), Column("utilization"), Column("digital outliers"),
               Column("placement", justify="left")]
    return FittedTable(columns, rows, escape(f"layers on {tile_map.rows} x {tile_map.cols} "
                                             f"tiles ({tile_map.strategy})"),
                       ["utilization: the layer's cells / cells of the tiles holding it",
                        *names.notes])


def strategy_table(maps: dict[str, TileMap], chosen: str) -> Table:
    """Tiles and overall utilization of every strategy; the shown one is starred."""
    table = Table(title="tile strategies", show_edge=False)
    for column in ("strategy", "tiles", "utilization"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, tile_map in maps.items():
        table.add_row(
            f"{name} *" if name == chosen else name,
            str(tile_map.tiles),
            f"{tile_map.utilization:.1%}",
        )
    return table


def check_report_options(strategy: str | None, svg: Path | None, html: Path | None) -> None:
    """A user error for an unknown --strategy, or an --svg or --html path that is a
    directory or lies under a file."""
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}: unknown tile strategy (known: "
                         f"{', '.join(STRATEGIES)})")
    for option, path in (("--svg", svg), ("--html", html)):
        if path is None:
            continue
        if path.is_dir():
            raise IsADirectoryError(f"{option} {path}: is a directory")
        existing = next(parent for parent in path.absolute().parents if parent.exists())
        if not existing.is_dir():
            raise NotADirectoryError(f"{option} {path}: {existing} is not a directory")


def _print_tables(record: dict[str, Any], tables: tuple[FittedTable, Table],
                  results: dict[str, list[Found]], console: Console) -> None:
    """The layer and strategy tables, the outlier line, the per-token cost on the default
    analog profile against the int8 baseline (afmc cost OUT for the rest) and the results."""
    from afmc.cost.table import summary_lines

    console.print(tables[0])
    console.print(tables[1])
    outliers = record.get("summary", {}).get("outliers")
    if outliers and outliers["weights"]:
        console.print(f"digital sparse path (split-outliers): {outliers['weights']:,} weights "
                      f"in {outliers['layers']} layers, {outliers['share']:.2%} of the analog "
                      f"weights; {outliers['macs_per_token']:,} MACs per token; "
                      f"{outliers['bytes']:,} bytes stored")
    cost = default_cost(record)
    for line in summary_lines(*cost) if cost else []:
        console.print(line, highlight=False)
    evaluated = results_table(results)
    if evaluated is not None:
        console.print(evaluated)


def report(
    out_dir: Path,
    svg: Path | None = None,
    strategy: str | None = None,
    console: Console | None = None,
    html: Path | None = None,
    json_out: bool = False,
) -> MappingReport:
    """Print the layer and strategy tables of OUT/afmc.json (with `json_out`, their data
    as JSON: afmc.report.data), draw its tile map as SVG and write the report page (module
    rules)."""
    path = Path(out_dir) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir}: no {RECORD_FILE} (run 'afmc compile' first)")
    record = read_json_object(path, "afmc record", ("config", "layers"))
    try:
        chosen, maps = tile_maps(record, strategy)
        tables = layer_table(record["layers"], maps[chosen]), strategy_table(maps, chosen)
        results = read_eval_results(Path(out_dir))
        page = build_page(Path(out_dir), record, path, chosen, maps, results)
        data = report_data(record, chosen, maps, results) if json_out else None
    except KeyError as error:
        raise ValueError(f"{path}: not a valid afmc record (no {error.args[0]!r} field)"
                         ) from None
    except TypeError as error:
        raise ValueError(f"{path}: not a valid afmc record ({error})") from None
    console = console or Console()
    if data is None:
        _print_tables(record, tables, results, console)
    written = write_tile_map_svg(maps[chosen], svg or Path(out_dir) / SVG_FILE)
    page_path = Path(html or Path(out_dir) / HTML_FILE)
    page_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(page_path, page)
    if data is None:
        console.print(f"tile map ({chosen}) -> {written}")
        console.print(f"report page -> {page_path}")
    else:
        console.out(json.dumps({**data, "tile_map_svg": str(written),
                                "report_html": str(page_path)}, indent=2), highlight=False)
    return MappingReport(maps[chosen], maps, written, page_path)
