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

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import networkx as nx
import onnx_ir as ir
from torch import fx

from afmc.mapping.blocks import TileMappingError, layer_field
from afmc.mapping.tile_map import TileMap
from afmc.ops.onnx_domain import DOMAIN
from afmc.ops.sparse_outliers import SPARSE_OUTLIERS
from afmc.ops.sparse_outliers_onnx import OP_TYPE as SPARSE_OUTLIERS_OP
from afmc.passes.layers import META_KEY

Node = TypeVar("Node")
TILE_PREFIX = "tile:"  # tile nodes are "tile:0", "tile:1", ... (":" is never in a module path)


def dependency_edges(nodes: Iterable[Node], producers: Callable[[Node], Iterable[Node | None]],
                     analog_name: Callable[[Node], str | None],
                     ends_path: Callable[[Node], bool]) -> list[tuple[str, str]]:
    """(producer, consumer) pairs of analog layers over `nodes` in graph order (the rule in
    the module docstring), for any graph: `producers` gives the nodes a node reads (None
    for a graph input or a constant), `analog_name` an analog layer's name (None for any
    other node), `ends_path` the nodes that carry nothing past them (a sparse path)."""
    reaching: dict[Node, frozenset[str]] = {}
    edges: list[tuple[str, str]] = []
    for node in nodes:
        sources: set[str] = set()
        for producer in producers(node):
            if producer is None:
                continue
            produced = analog_name(producer)
            sources |= {produced} if produced is not None else reaching[producer]
        name = analog_name(node)
        if name is not None:
            edges.extend((source, name) for source in sorted(sources))
        reaching[node] = frozenset() if ends_path(node) else frozenset(sources)
    return edges


def _analog_name(node: fx.Node | ir.Node) -> str | None:
    record = node.meta.get(META_KEY)
    return record.name if record is not None and record.placement == "analog" else None


def analog_dependencies(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """The dependencies of the analog layers of a torch program (dependency_edges):
    the nodes carrying an analog LayerRecord in ``node.meta["afmc"]``."""
    return dependency_edges(gm.graph.nodes, lambda node: node.all_input_nodes, _analog_name,
                            lambda node: node.target is SPARSE_OUTLIERS)


def onnx_analog_dependencies(model: ir.Model) -> list[tuple[str, str]]:
    """The dependencies of the analog layers of an ONNX graph (dependency_edges)."""
    return dependency_edges(
        model.graph,
        lambda node: [None if value is None else value.producer() for value in node.inputs],
        _analog_name, lambda node: node.domain == DOMAIN and node.op_type == SPARSE_OUTLIERS_OP)


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
