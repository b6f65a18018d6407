"""Tile strategies: how blocks are assigned to tiles, and map_tiles() that runs one.

- ``one-per-tile``: every block on a tile of its own at offset (0, 0); tiles =
  blocks (= LayerRecord.tiles summed over the analog layers).
- ``packed``: 2-D bin packing, first-fit decreasing with a skyline rule:
  blocks sorted by rows then columns (largest first, ties in layer order) go to
  the first open tile with room, at the smallest row offset there, then the
  leftmost column; a new tile opens only when no open tile has room. Blocks of
  different layers (and of one layer) share tiles in any arrangement, so blocks
  that share input rows or output columns of a tile run one after another.
- ``diagonal``: first-fit decreasing as well, but a tile's blocks lie along its
  diagonal, each with rows and columns of its own, so they never share an input
  line or an output column (ADC) and can all run at once.
packed and diagonal open a tile only for a block that fits on no open tile, and
every block fits on an empty tile, so they never use more tiles than
one-per-tile (one per block).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from afmc.mapping.blocks import Block, TileMappingError, analog_layers, layer_blocks
from afmc.mapping.tile_map import Placement, TileMap

Strategy = Callable[[list[Block], int, int], list[Placement]]


class _Tile(Protocol):
    room: int  # the most cells a further block could still use

    def place(self, block: Block) -> tuple[int, int] | None: ...


class _SkylineTile:
    """A tile filled bottom-left: `heights[c]` = rows used at column c (holes are lost)."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows = rows
        self.heights = np.zeros(cols, dtype=np.int64)
        self.room = rows * cols

    def place(self, block: Block) -> tuple[int, int] | None:
        cols = self.heights.size
        starts = np.concatenate(([0], np.flatnonzero(np.diff(self.heights)) + 1))
        best: tuple[int, int] | None = None
        for col in starts[starts + block.width <= cols]:
            row = int(self.heights[col : col + block.width].max())
            if row + block.height <= self.rows and (best is None or row < best[0]):
                best = (row, int(col))
        if best is not None:
            row, col = best
            self.heights[col : col + block.width] = row + block.height
            self.room -= block.cells
        return best


class _DiagonalTile:
    """A tile filled along its diagonal: the next block starts below and right of the last."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.row = self.col = 0
        self.room = rows * cols

    def place(self, block: Block) -> tuple[int, int] | None:
        if self.row + block.height > self.rows or self.col + block.width > self.cols:
            return None
        spot = (self.row, self.col)
        self.row += block.height
        self.col += block.width
        self.room = (self.rows - self.row) * (self.cols - self.col)
        return spot


def _first_fit(tile_type: Callable[[int, int], _Tile]) -> Strategy:
    """First-fit decreasing over tiles of `tile_type`.

    Placing a block only ever shrinks a tile's free space, so a tile that once
    refused a block size refuses it for good: the search for a size resumes at
    the tile that took the last block of that size, and a tile whose room is
    below the smallest block is closed.
    """

    def assign(blocks: list[Block], rows: int, cols: int) -> list[Placement]:
        order = sorted(blocks, key=lambda block: (-block.height, -block.width))
        smallest = min((block.cells for block in blocks), default=0)
        tiles: list[_Tile] = []
        open_tiles: list[int] = []  # ascending tile ids
        resume: dict[tuple[int, int], int] = {}
        placements = []
        for block in order:
            size = (block.height, block.width)
            start = bisect_left(open_tiles, resume.get(size, 0))
            for tile in open_tiles[start:]:
                spot = tiles[tile].place(block)
                if spot is not None:
                    break
            else:
                tile = len(tiles)
                tiles.append(tile_type(rows, cols))
                open_tiles.append(tile)
                spot = tiles[tile].place(block)
            resume[size] = tile
            placements.append(Placement(block, tile, *spot))
            if tiles[tile].room < smallest:
                open_tiles.remove(tile)
        return sorted(placements, key=lambda p: (p.tile, p.row, p.col))

    return assign


def one_per_tile(blocks: list[Block], rows: int, cols: int) -> list[Placement]:
    """Each block on its own tile at (0, 0), in layer order."""
    return [Placement(block, tile, 0, 0) for tile, block in enumerate(blocks)]


STRATEGIES: dict[str, Strategy] = {
    "one-per-tile": one_per_tile,
    "packed": _first_fit(_SkylineTile),
    "diagonal": _first_fit(_DiagonalTile),
}


def map_tiles(
    layers: Iterable[Any], rows: int = 512, cols: int = 512, strategy: str = "one-per-tile"
) -> TileMap:
    """Map the analog layers of `layers` (LayerRecords or their dicts) onto rows x cols tiles."""
    if strategy not in STRATEGIES:
        raise TileMappingError(
            f"unknown tile strategy {strategy!r} (known: {', '.join(STRATEGIES)})"
        )
    blocks = [block for layer in analog_layers(layers) for block in layer_blocks(layer, rows, cols)]
    placements = STRATEGIES[strategy](blocks, rows, cols)
    if Counter(p.block for p in placements) != Counter(blocks):
        raise TileMappingError(f"{strategy}: the blocks placed are not the blocks given")
    tiles = 1 + max((p.tile for p in placements), default=-1)
    return TileMap(strategy, rows, cols, tiles, tuple(placements))


def map_all_strategies(
    layers: Iterable[Any], rows: int = 512, cols: int = 512
) -> dict[str, TileMap]:
    """The tile map of every strategy, by name."""
    layers = list(layers)
    return {name: map_tiles(layers, rows, cols, name) for name in STRATEGIES}
