"""Where every block sits: tile id and offset, with utilization per tile and overall.

Rules a TileMap holds (checked on construction): tile ids run 0..tiles-1 and
every tile holds at least one block; a block lies inside its tile (offset >= 0,
offset + size <= tile rows/cols); blocks on one tile do not overlap; no block is
placed twice -- with `devices` d > 1 (``hardware.devices_per_weight``, see
TileMap.replicated) every block is placed exactly d times, once per copy of the map.
Utilization of a tile = cells its blocks use / (rows * cols); overall = all used
cells / (tiles * rows * cols), 0 for an empty map.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from afmc.mapping.blocks import Block, TileMappingError


@dataclass(frozen=True)
class Placement:
    """Block `block` on tile `tile`, its first row at `row` and first column at `col`."""

    block: Block
    tile: int
    row: int
    col: int

    def overlaps(self, other: Placement) -> bool:
        """True if both are on one tile and share at least one cell."""
        return (
            self.tile == other.tile
            and self.row < other.row + other.block.height
            and other.row < self.row + self.block.height
            and self.col < other.col + other.block.width
            and other.col < self.col + self.block.width
        )

    def to_json(self) -> dict[str, Any]:
        block = self.block
        return {
            "layer": block.layer,
            "slice": block.slice,
            "rows": list(block.rows),
            "cols": list(block.cols),
            "tile": self.tile,
            "row": self.row,
            "col": self.col,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        block = Block(
            data["layer"],
            int(data["slice"]),
            (int(data["rows"][0]), int(data["rows"][1])),
            (int(data["cols"][0]), int(data["cols"][1])),
        )
        return cls(block, int(data["tile"]), int(data["row"]), int(data["col"]))


@dataclass(frozen=True)
class TileMap:
    """The placement of every analog block on `tiles` tiles of `rows` x `cols` cells;
    each block `devices` times (on `devices` copies of the weights, see replicated)."""

    strategy: str
    rows: int
    cols: int
    tiles: int
    placements: tuple[Placement, ...]
    devices: int = 1

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.devices < 1:
            raise TileMappingError(f"{self.strategy}: devices must be >= 1, got {self.devices}")
        for block, count in Counter(p.block for p in self.placements).items():
            if count != self.devices:
                raise TileMappingError(
                    f"{self.strategy}: a block is placed more than once" if self.devices == 1
                    else f"{self.strategy}: {block} is placed {count} times, not once per "
                    f"device copy ({self.devices})")
        for placement in self.placements:
            block = placement.block
            if not 0 <= placement.tile < self.tiles:
                raise TileMappingError(
                    f"{self.strategy}: {block} on tile {placement.tile}, "
                    f"outside 0..{self.tiles - 1}"
                )
            if (
                block.height <= 0
                or block.width <= 0
                or placement.row < 0
                or placement.col < 0
                or placement.row + block.height > self.rows
                or placement.col + block.width > self.cols
            ):
                raise TileMappingError(
                    f"{self.strategy}: {block} at ({placement.row}, "
                    f"{placement.col}) leaves the {self.rows} x {self.cols} tile"
                )
        for tile, placed in enumerate(self.by_tile()):
            if not placed:
                raise TileMappingError(f"{self.strategy}: tile {tile} holds no block")
            placed = sorted(placed, key=lambda p: p.row)
            for i, first in enumerate(placed):
                for second in placed[i + 1 :]:
                    if second.row >= first.row + first.block.height:
                        break
                    if first.overlaps(second):
                        raise TileMappingError(
                            f"{self.strategy}: {first.block} and "
                            f"{second.block} overlap on tile {tile}"
                        )

    def replicated(self, devices: int) -> TileMap:
        """The map of `devices` copies of the weights (``hardware.devices_per_weight``:
        each weight on d device pairs): copy c repeats this map's placements on tiles
        c * tiles .. (c + 1) * tiles - 1, so tiles and every layer's tiles are d-fold and
        the utilization is unchanged. This map itself for devices = 1."""
        if devices < 1:
            raise TileMappingError(f"{self.strategy}: devices must be >= 1, got {devices}")
        if devices == 1:
            return self
        copies = tuple(Placement(p.block, p.tile + copy * self.tiles, p.row, p.col)
                       for copy in range(devices) for p in self.placements)
        return TileMap(self.strategy, self.rows, self.cols, self.tiles * devices, copies,
                       self.devices * devices)

    def by_tile(self) -> list[list[Placement]]:
        """The placements of each tile, tile 0 first."""
        tiles: list[list[Placement]] = [[] for _ in range(self.tiles)]
        for placement in self.placements:
            tiles[placement.tile].append(placement)
        return tiles

    @property
    def tile_cells(self) -> int:
        return self.rows * self.cols

    def tile_utilization(self) -> list[float]:
        """Used cells / (rows * cols) of each tile."""
        return [sum(p.block.cells for p in placed) / self.tile_cells for placed in self.by_tile()]

    @property
    def utilization(self) -> float:
        """All used cells / (tiles * rows * cols); 0 for a map without tiles."""
        used = sum(p.block.cells for p in self.placements)
        return used / (self.tiles * self.tile_cells) if self.tiles else 0.0

    def layer_tiles(self) -> dict[str, int]:
        """Number of distinct tiles holding blocks of each layer, in order of first block."""
        return {layer: len(ids) for layer, ids in self.layer_tile_ids().items()}

    def layer_tile_ids(self) -> dict[str, list[int]]:
        """The ids of the tiles holding blocks of each layer, in order of first block."""
        tiles: dict[str, set[int]] = defaultdict(set)
        for placement in self.placements:
            tiles[placement.block.layer].add(placement.tile)
        return {layer: sorted(ids) for layer, ids in tiles.items()}

    def layer_cells(self) -> dict[str, int]:
        """Crossbar cells used by each layer (its blocks' cells: in_features * out_features
        but for a block-diagonal layer's zero blocks)."""
        cells: dict[str, int] = defaultdict(int)
        for placement in self.placements:
            cells[placement.block.layer] += placement.block.cells
        return dict(cells)

    def layer_utilization(self) -> dict[str, float]:
        """Each layer's cells / cells of the tiles holding it."""
        tiles = self.layer_tiles()
        return {
            layer: cells / (tiles[layer] * self.tile_cells)
            for layer, cells in self.layer_cells().items()
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON form (docs/tile-mapping.md); derived keys are recomputed by from_json."""
        return {
            "strategy": self.strategy,
            "tile_rows": self.rows,
            "tile_cols": self.cols,
            "tiles": self.tiles,
            "devices": self.devices,
            "utilization": self.utilization,
            "tile_utilization": self.tile_utilization(),
            "layer_tiles": self.layer_tiles(),
            "placements": [placement.to_json() for placement in self.placements],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TileMap:
        """Rebuild (and re-check) a map from to_json(); derived keys are ignored."""
        placements = tuple(Placement.from_json(item) for item in data["placements"])
        return cls(
            data["strategy"],
            int(data["tile_rows"]),
            int(data["tile_cols"]),
            int(data["tiles"]),
            placements,
            int(data.get("devices", 1)),
        )
