"""The layer graph: analog layers, their data dependencies, and the tiles that hold them.

Rule for dependencies (analog_dependencies): analog layer B depends on analog
layer A when A's output reaches B's input through digital nodes only (norms,
attention, activations, residual adds, digital-placed layers); a path through
another analog layer makes a dependency on that layer instead. So q/k/v feed
o_proj through attention, and through the residual stream every o_proj and
down_proj feeds all later layers that read that stream. A layer's digital sparse
path (afmc::sparse_outliers, from the split-outliers pass) is part of that layer: it
reads the layer's input and adds to its output, so it carries no dependency past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import networkx as nx
from torch import fx

from afmc.mapping.blocks import TileMappingError, layer_field
from afmc.mapping.tile_map import TileMap
from afmc.ops.sparse_outliers import SPARSE_OUTLIERS
from afmc.passes.layers import META_KEY

TILE_PREFIX = "tile:"  # tile nodes are "tile:0", "tile:1", ... (":" is never in a module path)


def _analog_name(node: fx.Node) -> str | None:
    record = node.meta.get(META_KEY)
    return record.name if record is not None and record.placement == "analog" else None


def analog_dependencies(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """(producer, consumer) pairs of analog layers of `gm`, consumers in graph order.

    Layers are the nodes carrying an analog LayerRecord in ``node.meta["afmc"]``.
    """
    reaching: dict[fx.Node, frozenset[str]] = {}
    edges: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        sources: set[str] = set()
        for argument in node.all_input_nodes:
            produced = _analog_name(argument)
            sources |= {produced} if produced is not None else reaching[argument]
        name = _analog_name(node)
        if name is not None:
            edges.extend((source, name) for source in sorted(sources))
        reaching[node] = frozenset() if node.target is SPARSE_OUTLIERS else frozenset(sources)
    return edges


def layer_graph(
    layers: Iterable[Any], edges: Iterable[tuple[str, str]], tile_map: TileMap | None = None
) -> nx.DiGraph:
    """A DiGraph of `layers` (records or dicts) with data edges, and tiles when mapped.

    Layer nodes are named by layer with kind="layer", in_features, out_features,
    placement, slices. Data edges producer -> consumer have kind="data". With a
    `tile_map`, tile nodes "tile:<id>" (kind="tile", utilization) point to each
    layer they hold with kind="holds", blocks and cells of that layer on the tile.
    """
    graph = nx.DiGraph()
    for layer in layers:
        graph.add_node(
            layer_field(layer, "name"),
            kind="layer",
            in_features=int(layer_field(layer, "in_features")),
            out_features=int(layer_field(layer, "out_features")),
            placement=layer_field(layer, "placement"),
            slices=len(layer_field(layer, "slice_sizes")),
        )
    for producer, consumer in edges:
        for name in (producer, consumer):
            if name not in graph:
                raise TileMappingError(f"dependency names unknown layer {name}")
        graph.add_edge(producer, consumer, kind="data")
    if tile_map is not None:
        for tile, utilization in enumerate(tile_map.tile_utilization()):
            graph.add_node(f"{TILE_PREFIX}{tile}", kind="tile", utilization=utilization)
        for placement in tile_map.placements:
            layer = placement.block.layer
            if layer not in graph:
                raise TileMappingError(f"tile map names unknown layer {layer}")
            key = (f"{TILE_PREFIX}{placement.tile}", layer)
            if not graph.has_edge(*key):
                graph.add_edge(*key, kind="holds", blocks=0, cells=0)
            graph.edges[key]["blocks"] += 1
            graph.edges[key]["cells"] += placement.block.cells
    return graph
