"""`afmc report OUT --json`: everything the report's tables say, as one JSON object.

The layers under the shown tile map (shape, slices, tiles, utilization, outlier
weights, placement) and their total, every strategy's tiles and utilization, the
split-outliers summary, the per-token cost on the default analog profile against the
int8 baseline (null without analog layers), and the headline of every result file of
OUT/eval.
"""

from __future__ import annotations

from typing import Any

from afmc.mapping import TileMap
from afmc.report.headlines import headline
from afmc.report.results import Found


def default_cost(record: dict[str, Any]) -> tuple[Any, Any] | None:
    """The cost reports on the default analog profile and the int8 baseline (None when no
    layer is analog)."""
    from afmc.cost import estimate_record
    from afmc.cost.command import DEFAULT_BASELINE, DEFAULT_PROFILE

    if not any(layer.get("placement") == "analog" for layer in record["layers"]):
        return None
    return (estimate_record(record, DEFAULT_PROFILE),
            estimate_record(record, DEFAULT_BASELINE))


def report_data(record: dict[str, Any], chosen: str, maps: dict[str, TileMap],
                results: dict[str, list[Found]]) -> dict[str, Any]:
    """The report of `record` with the map of strategy `chosen` (module rules)."""
    from afmc.cost.summary import compare

    tile_map = maps[chosen]
    tiles, share = tile_map.layer_tiles(), tile_map.layer_utilization()
    layers = [{"name": layer["name"], "out_features": layer["out_features"],
               "in_features": layer["in_features"],
               "slices": len(layer["slice_sizes"]) if layer["name"] in tiles else None,
               "tiles": tiles.get(layer["name"]), "utilization": share.get(layer["name"]),
               "outlier_weights": layer.get("outlier_weights", 0),
               "placement": layer["placement"]} for layer in record["layers"]]
    cost = default_cost(record)
    return {
        "strategy": chosen, "tile_rows": tile_map.rows, "tile_cols": tile_map.cols,
        "layers": layers,
        "total": {"analog_layers": len(tiles), "tiles": tile_map.tiles,
                  "utilization": tile_map.utilization,
                  "outlier_weights": sum(layer["outlier_weights"] for layer in layers)},
        "strategies": {name: {"tiles": each.tiles, "utilization": each.utilization}
                       for name, each in maps.items()},
        "outliers": record.get("summary", {}).get("outliers"),
        "cost": None if cost is None else {"profile": cost[0].profile,
                                           "totals": cost[0].totals(),
                                           "comparison": compare(*cost)},
        "results": [{"file": str(found.path), "kind": kind, "headline": headline(found)}
                    for kind, files in results.items() for found in files],
    }
