"""Tile mapping: blocks, strategies, the TileMap rules and JSON, and the layer graph.

Hand-computed cases fix the block cut and the utilization arithmetic; a property
test checks on random layers that every strategy places each block exactly once
inside its tile without overlap (cell occupancy), that packed and diagonal never
use more tiles than one-per-tile, and that diagonal blocks share no row or
column. The dependency edges of a compiled tiny Llama are compared with its
known structure (q/k/v -> o_proj through attention, the residual stream).
"""

from __future__ import annotations

import json
from itertools import pairwise

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afmc.api import compile as afmc_compile
from afmc.config import load_config
from afmc.mapping import (
    STRATEGIES,
    Block,
    Placement,
    TileMap,
    TileMappingError,
    analog_dependencies,
    layer_graph,
    map_all_strategies,
    map_tiles,
)
from afmc.ops.analog_linear import slice_sizes
from afmc.passes.layers import LayerRecord, tile_count


def _layer(
    name: str, out_features: int, in_features: int, max_in: int = 512, placement: str = "analog"
) -> dict:
    sizes = slice_sizes(in_features, max_in) if placement == "analog" else []
    return {
        "name": name,
        "in_features": in_features,
        "out_features": out_features,
        "placement": placement,
        "slice_sizes": sizes,
    }


def _occupancy(tile_map: TileMap) -> np.ndarray:
    """Cells covered per tile; fails on a block outside its tile."""
    grid = np.zeros((tile_map.tiles, tile_map.rows, tile_map.cols), dtype=np.int64)
    for p in tile_map.placements:
        assert p.row >= 0 and p.row + p.block.height <= tile_map.rows
        assert p.col >= 0 and p.col + p.block.width <= tile_map.cols
        grid[p.tile, p.row : p.row + p.block.height, p.col : p.col + p.block.width] += 1
    return grid


def _assert_valid(tile_map: TileMap, layers: list[dict]) -> None:
    """No overlap, every block once, every analog weight covered exactly once."""
    grid = _occupancy(tile_map)
    assert grid.max(initial=0) <= 1
    analog = [layer for layer in layers if layer["placement"] == "analog"]
    assert grid.sum() == sum(layer["in_features"] * layer["out_features"] for layer in analog)
    assert len({p.block for p in tile_map.placements}) == len(tile_map.placements)
    for layer in analog:
        weight = np.zeros((layer["in_features"], layer["out_features"]), dtype=np.int64)
        for p in tile_map.placements:
            if p.block.layer == layer["name"]:
                weight[slice(*p.block.rows), slice(*p.block.cols)] += 1
        assert (weight == 1).all()
    assert all(grid[tile].any() for tile in range(tile_map.tiles))


def test_1000x1000_layer_is_four_blocks_on_four_tiles():
    """K = 1000 with max_in 512: slices 500 + 500; N = 1000 on 512 columns: 512 + 488."""
    layers = [_layer("big", 1000, 1000)]
    maps = map_all_strategies(layers)
    one = maps["one-per-tile"]
    assert [(p.block.rows, p.block.cols, p.tile) for p in one.placements] == [
        ((0, 500), (0, 512), 0),
        ((0, 500), (512, 1000), 1),
        ((500, 1000), (0, 512), 2),
        ((500, 1000), (512, 1000), 3),
    ]
    assert one.tile_utilization() == [500 * 512 / 512**2, 500 * 488 / 512**2] * 2
    assert one.utilization == 1000 * 1000 / (4 * 512**2)
    assert one.layer_tiles() == {"big": 4}
    # 500 + 500 rows and 512 + 488 columns exceed a tile: no strategy can share
    assert {name: m.tiles for name, m in maps.items()} == dict.fromkeys(STRATEGIES, 4)
    for tile_map in maps.values():
        _assert_valid(tile_map, layers)


def test_small_layers_pack_onto_shared_tiles():
    """64 x 64 layers: 64 fill a 512 x 512 tile exactly; diagonal holds 512 / 64 = 8."""
    five = [_layer(f"l{i}", 64, 64) for i in range(5)]
    packed = map_tiles(five, strategy="packed")
    assert packed.tiles == 1 and packed.utilization == 5 * 64 * 64 / 512**2 == 0.078125
    assert map_tiles(five).tiles == 5
    sixty_five = [_layer(f"l{i}", 64, 64) for i in range(65)]
    maps = map_all_strategies(sixty_five)
    assert {name: m.tiles for name, m in maps.items()} == {
        "one-per-tile": 65,
        "packed": 2,
        "diagonal": 9,
    }
    assert maps["packed"].tile_utilization() == [1.0, 64 * 64 / 512**2]
    assert maps["packed"].utilization == 65 * 4096 / (2 * 512**2) == 0.5078125
    assert maps["diagonal"].utilization == 65 * 4096 / (9 * 512**2)
    for tile_map in maps.values():
        _assert_valid(tile_map, sixty_five)


def test_blocks_of_one_layer_share_a_tile():
    """100 outputs x 600 inputs with max_in 300: two 300 x 100 blocks, 2 tiles one-per-tile;
    they cannot stack (600 > 512 rows) but packed sets them side by side on one tile."""
    layers = [_layer("tall", 100, 600, max_in=300)]
    assert map_tiles(layers).tiles == 2
    packed = map_tiles(layers, strategy="packed")
    assert packed.tiles == 1 and packed.utilization == 600 * 100 / 512**2
    assert sorted((p.row, p.col) for p in packed.placements) == [(0, 0), (0, 100)]
    _assert_valid(packed, layers)


def test_a_block_diagonal_layer_takes_only_its_groups_columns_per_slice():
    """A depthwise 3x3 conv of 32 channels on the crossbar: 32 x 288, 32 diagonal blocks of
    1 x 9. max_in 64 cuts 288 into 58, 58, 58, 57, 57; slice 0 (rows 0-57) holds channels
    0-6 (rows 54-57 are channel 6's first 4), slice 1 (58-115) channels 6-12, ..."""
    layer = {**_layer("dw", 32, 288, max_in=64), "groups": 32}
    assert layer["slice_sizes"] == [58, 58, 58, 57, 57]
    one = map_tiles([layer], rows=64, cols=64)
    assert [(p.block.rows, p.block.cols) for p in one.placements] == [
        ((0, 58), (0, 7)), ((58, 116), (6, 13)), ((116, 174), (12, 20)),
        ((174, 231), (19, 26)), ((231, 288), (25, 32))]
    assert one.tiles == 5 == tile_count(layer["slice_sizes"], 32, 64, 64, groups=32)
    assert one.layer_cells() == {"dw": 58 * 7 + 58 * 7 + 58 * 8 + 57 * 7 + 57 * 7}
    # every weight of the block-diagonal matrix lies in a block: no weight left off a tile
    covered = np.zeros((288, 32), bool)
    for p in one.placements:
        covered[slice(*p.block.rows), slice(*p.block.cols)] = True
    diagonal = np.kron(np.eye(32, dtype=bool), np.ones((9, 1), bool))
    assert covered[diagonal].all() and not covered.all()
    # the dense layer of the same shape spans every column in every slice
    assert map_tiles([_layer("dense", 32, 288, max_in=64)], rows=64, cols=64).layer_cells() \
        == {"dense": 288 * 32}
    # packed sets the five narrow blocks side by side: the block-diagonal packing on 1 tile
    packed = map_tiles([layer], strategy="packed", rows=64, cols=64)
    assert packed.tiles == 1 and packed.utilization == one.layer_cells()["dw"] / 64**2


def test_digital_layers_are_skipped_and_records_are_accepted():
    records = [
        LayerRecord("a", 64, 32, "analog", "rule", slice_sizes=[64]),
        LayerRecord("b", 64, 32, "digital", "rule"),
    ]
    tile_map = map_tiles(records, 64, 64)
    assert tile_map.layer_tiles() == {"a": 1}
    assert tile_map.utilization == 0.5
    empty = map_tiles([records[1]])
    assert (empty.tiles, empty.utilization, empty.placements) == (0, 0.0, ())


def test_slice_larger_than_tile_rows_names_the_layer():
    with pytest.raises(TileMappingError, match=r"layer wide: .*600 rows exceeds .*512"):
        map_tiles([_layer("ok", 8, 8), _layer("wide", 10, 600, max_in=-1)])


@pytest.mark.parametrize(
    "layer, needle",
    [
        ({**_layer("x", 8, 10), "slice_sizes": [4, 4]}, "layer x: slice sizes"),
        ({**_layer("x", 8, 10), "slice_sizes": []}, "layer x: slice sizes"),
    ],
)
def test_slices_must_split_the_inputs(layer, needle):
    with pytest.raises(TileMappingError, match=needle):
        map_tiles([layer])


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(TileMappingError, match="one-per-tile, packed, diagonal"):
        map_tiles([_layer("a", 8, 8)], strategy="best")


def test_tile_map_rejects_broken_placements():
    a = Block("a", 0, (0, 4), (0, 4))
    b = Block("b", 0, (0, 4), (0, 4))
    TileMap("t", 8, 8, 1, (Placement(a, 0, 0, 0), Placement(b, 0, 4, 4)))
    cases = {
        "overlap": (1, (Placement(a, 0, 0, 0), Placement(b, 0, 3, 3))),
        "leaves": (1, (Placement(a, 0, 5, 0),)),
        "holds no block": (2, (Placement(a, 0, 0, 0),)),
        "outside": (1, (Placement(a, 1, 0, 0),)),
        "more than once": (2, (Placement(a, 0, 0, 0), Placement(a, 1, 0, 0))),
    }
    for needle, (tiles, placements) in cases.items():
        with pytest.raises(TileMappingError, match=needle):
            TileMap("t", 8, 8, tiles, placements)


def test_json_round_trip():
    layers = [
        _layer("big", 1000, 1000, max_in=250),
        *(_layer(f"l{i}", 64, 100, max_in=40) for i in range(3)),
    ]
    for tile_map in map_all_strategies(layers, 256, 128).values():
        data = json.loads(json.dumps(tile_map.to_json()))
        assert TileMap.from_json(data) == tile_map
        assert data["tiles"] == tile_map.tiles and data["utilization"] == tile_map.utilization
        assert data["layer_tiles"] == tile_map.layer_tiles()
        assert len(data["placements"]) == len(tile_map.placements)
    data["placements"][1]["row"] = data["placements"][0]["row"]
    data["placements"][1]["col"] = data["placements"][0]["col"]
    data["placements"][1]["tile"] = data["placements"][0]["tile"]
    with pytest.raises(TileMappingError, match="overlap"):
        TileMap.from_json(data)


_layers = st.lists(
    st.tuples(st.integers(1, 150), st.integers(1, 150), st.integers(1, 64)), min_size=1, max_size=8
)


@settings(max_examples=60, deadline=None, database=None)
@given(_layers, st.integers(8, 64), st.integers(8, 64))
def test_strategies_place_every_block_once_without_overlap(shapes, rows, cols):
    layers = [
        _layer(f"l{i}", out, k, max_in=min(max_in, rows))
        for i, (out, k, max_in) in enumerate(shapes)
    ]
    maps = map_all_strategies(layers, rows, cols)
    for tile_map in maps.values():
        _assert_valid(tile_map, layers)
    blocks = len(maps["one-per-tile"].placements)
    assert maps["one-per-tile"].tiles == blocks
    assert maps["packed"].tiles <= blocks and maps["diagonal"].tiles <= blocks
    for placed in maps["diagonal"].by_tile():
        rows_used = sorted((p.row, p.row + p.block.height) for p in placed)
        cols_used = sorted((p.col, p.col + p.block.width) for p in placed)
        for spans in (rows_used, cols_used):
            assert all(first[1] <= second[0] for first, second in pairwise(spans))


def test_layer_graph_from_records():
    layers = [_layer("a", 64, 64), _layer("b", 64, 64), _layer("c", 8, 64, placement="digital")]
    tile_map = map_tiles(layers, strategy="packed")
    graph = layer_graph(layers, [("a", "b")], tile_map)
    assert graph.nodes["a"] == {
        "kind": "layer",
        "in_features": 64,
        "out_features": 64,
        "placement": "analog",
        "slices": 1,
    }
    assert graph.nodes["tile:0"] == {"kind": "tile", "utilization": 2 * 4096 / 512**2}
    assert graph.edges["a", "b"] == {"kind": "data"}
    assert graph.edges["tile:0", "b"] == {"kind": "holds", "blocks": 1, "cells": 4096}
    assert set(graph.predecessors("c")) == set()
    with pytest.raises(TileMappingError, match="unknown layer z"):
        layer_graph(layers, [("a", "z")])


def _known_llama_edges(blocks: int) -> set[tuple[str, str]]:
    """The analog dependencies of a Llama: attention and MLP reading the residual stream."""
    stream: list[str] = []  # analog layers whose output was added to the residual stream
    edges = set()
    for i in range(blocks):
        attn, mlp = f"lm.model.layers.{i}.self_attn", f"lm.model.layers.{i}.mlp"
        for reader in ("q_proj", "k_proj", "v_proj"):
            edges |= {(writer, f"{attn}.{reader}") for writer in stream}
            edges.add((f"{attn}.{reader}", f"{attn}.o_proj"))
        stream.append(f"{attn}.o_proj")
        for reader in ("gate_proj", "up_proj"):
            edges |= {(writer, f"{mlp}.{reader}") for writer in stream}
            edges.add((f"{mlp}.{reader}", f"{mlp}.down_proj"))
        stream.append(f"{mlp}.down_proj")
    return edges | {(writer, "lm.lm_head") for writer in stream}


@pytest.fixture(scope="module")
def compiled_llama(model_dirs, calibration_text, tmp_path_factory):
    """The tiny Llama compiled for aimc on 64 x 64 tiles with max_in 40 (2-3 slices)."""
    config = load_config(
        None, ["hardware.max_in=40", "hardware.tile_rows=64", "hardware.tile_cols=64"]
    )
    out = tmp_path_factory.mktemp("tiles") / "llama"
    return afmc_compile(
        str(model_dirs["llama"]), "aimc", config, calibration=calibration_text, output=out
    )


@pytest.mark.slow
def test_dependency_edges_of_a_compiled_llama(compiled_llama):
    edges = analog_dependencies(compiled_llama.program)
    assert len(edges) == len(set(edges))
    assert set(edges) == _known_llama_edges(2)
    layers = compiled_llama.record["layers"]
    tile_map = map_tiles(layers, 64, 64, "packed")
    graph = layer_graph(layers, edges, tile_map)
    data = graph.edge_subgraph(
        [e for e, kind in nx.get_edge_attributes(graph, "kind").items() if kind == "data"]
    )
    assert nx.is_directed_acyclic_graph(data)
    order = list(nx.topological_sort(data))
    assert order.index("lm.model.layers.0.self_attn.q_proj") < order.index("lm.lm_head")
    held = {layer for tile, layer in graph.edges if str(tile).startswith("tile:")}
    assert held == {layer["name"] for layer in layers}


@pytest.mark.slow
def test_one_per_tile_matches_the_record_tile_counts(compiled_llama):
    layers = compiled_llama.record["layers"]
    maps = map_all_strategies(layers, 64, 64)
    assert maps["one-per-tile"].layer_tiles() == {layer["name"]: layer["tiles"] for layer in layers}
    assert maps["one-per-tile"].tiles == compiled_llama.record["summary"]["tiles"]
    assert maps["packed"].tiles < maps["one-per-tile"].tiles
    for tile_map in maps.values():
        _assert_valid(tile_map, layers)
