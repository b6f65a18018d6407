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
NOTES_KEY = "afmc_fold_notes"  # graph meta key: the fold passes' notes (the record's fold_notes)


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
    # a grouped Conv on crossbars: its [N, K] matrix is block-diagonal, `groups` blocks
    groups: int = 1

    @property
    def weights(self) -> int:
        """Weights of the layer's crossbar matrix outside a block-diagonal layer's zero
        blocks."""
        return self.in_features * self.out_features // self.groups

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def tile_count(slice_sizes: list[int], out_features: int, rows: int, cols: int,
               groups: int = 1) -> int:
    """Tiles for one block per tile: each slice spans ceil(size/rows) x ceil(columns/cols)
    tiles, its columns being all outputs, or of a block-diagonal layer the outputs of the
    groups its rows belong to (slice_columns)."""
    tiles, start, in_features = 0, 0, sum(slice_sizes)
    for size in slice_sizes:
        first, last = slice_columns(start, start + size, in_features, out_features, groups)
        tiles += math.ceil(size / rows) * math.ceil((last - first) / cols)
        start += size
    return tiles


def slice_columns(start: int, stop: int, in_features: int, out_features: int,
                  groups: int) -> tuple[int, int]:
    """[first, last) output columns with weights in input rows [start, stop) of a layer whose
    [out, in] matrix is `groups` equal diagonal blocks (all columns when groups is 1)."""
    if groups == 1:
        return 0, out_features
    rows, columns = in_features // groups, out_features // groups
    return start // rows * columns, ((stop - 1) // rows + 1) * columns


def layer_records(gm: fx.GraphModule) -> list[LayerRecord]:
    """The records of every static-weight layer in graph order."""
    return [node.meta[META_KEY] for node in gm.graph.nodes if META_KEY in node.meta]
