"""Tile mapping: analog layers cut into weight blocks and placed on physical crossbar tiles.

See docs/tile-mapping.md: blocks (blocks.py), the TileMap with its rules and
JSON form (tile_map.py), the strategies and map_tiles() (strategies.py), the
layer/tile graph (graph.py) and its picture (svg.py).
"""

from afmc.mapping.blocks import Block, LayerShape, TileMappingError, analog_layers, layer_blocks
from afmc.mapping.graph import analog_dependencies, layer_graph
from afmc.mapping.strategies import STRATEGIES, map_all_strategies, map_tiles
from afmc.mapping.svg import tile_map_svg, write_tile_map_svg
from afmc.mapping.tile_map import Placement, TileMap

__all__ = [
    "STRATEGIES",
    "Block",
    "LayerShape",
    "Placement",
    "TileMap",
    "TileMappingError",
    "analog_dependencies",
    "analog_layers",
    "layer_blocks",
    "layer_graph",
    "map_all_strategies",
    "map_tiles",
    "tile_map_svg",
    "write_tile_map_svg",
]
