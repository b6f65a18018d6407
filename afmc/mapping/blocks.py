"""Weight blocks: how one analog layer's weight matrix is cut for the crossbar tiles.

Rules: the weights of a layer [N out, K in] lie on the crossbar as K rows x N
columns (inputs drive rows, each column is one output). The K rows are cut into
the layer's input slices (its ``slice_sizes``, HARDWARE.md step 1), the N
columns into chunks of at most ``cols`` outputs from the left (1000 outputs on
512 columns: 512 + 488). A block is one slice x one column chunk. A slice is
never split over tiles (its partial sums are one ADC read), so a slice with more
rows than a tile has is an error naming the layer. A block-diagonal layer (a grouped
convolution, ``groups`` > 1) gives each slice only the columns of the groups its rows
belong to: its zero blocks take no tile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from afmc.passes.layers import slice_columns


class TileMappingError(ValueError):
    """A layer cannot be mapped, or a tile map breaks a rule; the message names the culprit."""


@dataclass(frozen=True)
class Block:
    """The weight sub-matrix of input slice `slice` and output columns `cols` of `layer`.

    `rows` = [start, stop) of the layer's inputs (crossbar rows), `cols` = [start,
    stop) of its outputs (crossbar columns).
    """

    layer: str
    slice: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def height(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]

    @property
    def cells(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class LayerShape:
    """What the mapper needs of an analog layer (a LayerRecord or its JSON dict)."""

    name: str
    in_features: int
    out_features: int
    slice_sizes: tuple[int, ...]
    groups: int = 1


_REQUIRED = object()


def layer_field(layer: Any, key: str, default: Any = _REQUIRED) -> Any:
    """Field `key` of a LayerRecord-like object or of its JSON dict (`default` where it is
    missing, when given: an older afmc.json)."""
    if default is _REQUIRED:
        return layer[key] if isinstance(layer, dict) else getattr(layer, key)
    return layer.get(key, default) if isinstance(layer, dict) else getattr(layer, key, default)


def analog_layers(layers: Iterable[Any]) -> list[LayerShape]:
    """The analog layers of `layers` (records or dicts), in order; digital ones are skipped."""
    shapes: list[LayerShape] = []
    names: set[str] = set()
    for layer in layers:
        if layer_field(layer, "placement") != "analog":
            continue
        shape = LayerShape(
            layer_field(layer, "name"),
            int(layer_field(layer, "in_features")),
            int(layer_field(layer, "out_features")),
            tuple(int(size) for size in layer_field(layer, "slice_sizes")),
            int(layer_field(layer, "groups", 1)),
        )
        if not shape.slice_sizes or sum(shape.slice_sizes) != shape.in_features:
            raise TileMappingError(
                f"layer {shape.name}: slice sizes {list(shape.slice_sizes)} "
                f"do not split its {shape.in_features} inputs"
            )
        if shape.name in names:
            raise TileMappingError(f"layer {shape.name}: named twice")
        names.add(shape.name)
        shapes.append(shape)
    return shapes


def layer_blocks(layer: LayerShape, rows: int, cols: int) -> list[Block]:
    """The blocks of `layer` on rows x cols tiles, slice by slice, columns left to right."""
    if rows <= 0 or cols <= 0:
        raise TileMappingError(f"tile must have positive rows and columns, got {rows} x {cols}")
    widest = max(layer.slice_sizes)
    if widest > rows:
        raise TileMappingError(
            f"layer {layer.name}: an input slice of {widest} rows exceeds the tile's {rows} "
            f"rows (hardware.max_in must be <= hardware.tile_rows)"
        )
    blocks = []
    start = 0
    for index, size in enumerate(layer.slice_sizes):
        begin, end = slice_columns(start, start + size, layer.in_features, layer.out_features,
                                   layer.groups)
        for first in range(begin, end, cols):
            last = min(first + cols, end)
            blocks.append(Block(layer.name, index, (start, start + size), (first, last)))
        start += size
    return blocks
