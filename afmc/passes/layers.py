"""What afmc records about each static-weight layer: placement, slices, tiles.

A LayerRecord is stored on its FX node (``node.meta["afmc"]``), carried into the
report, OUT/afmc.json and the ONNX file's metadata, so the placement decision
survives lowering.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import fx

META_KEY = "afmc"


@dataclass
class LayerRecord:
    """One static-weight layer as afmc sees it."""

    name: str
    in_features: int
    out_features: int
    placement: Literal["analog", "digital"]
    rule: str
    slice_sizes: list[int] = field(default_factory=list)
    tiles: int = 0
    tile_ids: list[int] = field(default_factory=list)
    weight: str = ""
    input_range: str = ""
    onnx_weight: str = ""
    onnx_input_range: str = ""
    calibrated: str = ""
    clipped_rows: int = 0  # calibration method search: weight rows programmed clipped
    sqnr_db: float | None = None  # search: worst slice's output SQNR on the calibration sample
    precision: str = ""  # digital targets: "int8", "int4" or "fp" (the stored weight format)
    # split-outliers: weights per row and input slice in the exact digital sparse path, how
    # many of them are nonzero, and the initializers (torch targets = ONNX names) holding them
    outliers_per_slice: int = 0
    outlier_weights: int = 0
    outlier_indices: str = ""
    outlier_values: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tile_count(slice_sizes: list[int], out_features: int, rows: int, cols: int) -> int:
    """Tiles for one block per tile: each slice spans ceil(size/rows) x ceil(out/cols) tiles."""
    return sum(math.ceil(size / rows) for size in slice_sizes) * math.ceil(out_features / cols)


def layer_records(gm: fx.GraphModule) -> list[LayerRecord]:
    """The records of every static-weight layer in graph order."""
    return [node.meta[META_KEY] for node in gm.graph.nodes if META_KEY in node.meta]
