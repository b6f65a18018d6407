"""The cost arithmetic: per layer and per token, from a compile record and a hardware profile.

Rules (per token, i.e. one input vector through every layer; docs/cost.md):
- Which layers are analog: those the record places analog with input slices (lowered to
  crossbar ops), under an analog profile. Every other layer, and every layer under a
  digital profile, is digital.
- Slices: the record's `slice_sizes`. When a slice has more rows than the profile's tile,
  the layer is re-cut as if compiled with ``hardware.max_in`` = tile rows (HARDWARE.md
  step 1: n = ceil(K / rows) nearly equal slices) and named in `resliced`.
- Tile map: the record's stored map when the profile's tile is the compiled one, no
  layer is re-cut and its copies are the hardware's (not so after an override of
  ``afmc.load``); otherwise the record's strategy mapped onto the profile's tile
  (afmc.mapping.map_tiles), with d copies: ``hardware.devices_per_weight`` x
  ``hardware.weight_slices`` (each bit slice is a device block with its own ADC reads).
- Analog layer [N out, K in], S slices, C = ceil(N / cols) column chunks, d copies:
  N*K*d analog MACs; K*C*d DAC conversions (every block drives its slice's rows
  on its tile); N*S*d ADC conversions (every block converts its columns once).
- Its split-outliers path: `outlier_weights` digital MACs, each reading its weight
  (digital.weight_bits) and a 16-bit column index from memory.
- Digital layer: N*K digital MACs and N*K*weight_bits/8 bytes of weight traffic.
- Energy = adc + dac + crossbar (per analog MAC) + digital MACs + memory bytes, each
  count times its profile energy. Activations, attention, norms and the KV cache are not
  counted (on either side of a comparison).
- Time of a layer: its tile reads, tile_read_ns each, run in parallel across tiles; blocks
  of the layer sharing one tile run one after another (not under `diagonal`, whose blocks
  have rows and columns of their own): reads = the most blocks of the layer on one tile.
  Beside them, on the digital unit: max(digital MACs / (macs_per_cycle * clock), bytes /
  (bytes_per_cycle * clock)) (roofline). A layer takes the longer of the two.
- Latency per token: `sequential` sums every layer; `dataflow` takes the longest path
  through the record's `dependencies` (analog layers; independent ones run at once)
  plus the digital layers one after another.
- Area: tiles * tile.area_mm2; chips = ceil(tiles / cores). None and 0 for a digital
  profile.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from afmc.cost.profile import HardwareProfile, load_profile
from afmc.mapping import TileMap, map_tiles
from afmc.runtime.bit_slicing import hardware_copies

INDEX_BYTES = 2  # one outlier's column index within its slice (<= 65535 rows)
TERMS = ("adc", "dac", "crossbar", "digital", "memory")


@dataclass(frozen=True)
class LayerCost:
    """One layer's counts, energy (pJ, by term) and time (ns) per token."""

    name: str
    placement: str
    out_features: int
    in_features: int
    slices: int = 0
    tiles: int = 0
    analog_macs: int = 0
    dac_conversions: int = 0
    adc_conversions: int = 0
    digital_macs: int = 0
    memory_bytes: float = 0.0
    energy_pj: dict[str, float] = field(default_factory=dict)
    time_ns: float = 0.0

    @property
    def total_energy_pj(self) -> float:
        return sum(self.energy_pj.values())


@dataclass(frozen=True)
class CostReport:
    """The cost of one compiled model on one profile: layer rows and per-token totals."""

    profile: str
    kind: str
    layers: list[LayerCost]
    latency_ns: float
    tiles: int
    chips: int
    area_mm2: float | None
    resliced: list[str]

    def total(self, key: str) -> float:
        """The sum over layers of a count (`analog_macs`, `memory_bytes`, ...)."""
        return sum(getattr(layer, key) for layer in self.layers)

    @property
    def energy_by_term(self) -> dict[str, float]:
        return {term: sum(layer.energy_pj.get(term, 0.0) for layer in self.layers)
                for term in TERMS}

    @property
    def energy_pj(self) -> float:
        return sum(self.energy_by_term.values())

    def totals(self) -> dict[str, Any]:
        """The per-token figures of the whole model (the JSON `totals`)."""
        counts = ("analog_macs", "dac_conversions", "adc_conversions", "digital_macs")
        return {**{key: int(self.total(key)) for key in counts},
                "memory_bytes": self.total("memory_bytes"),
                "energy_pj": self.energy_pj, "energy_pj_by_term": self.energy_by_term,
                "latency_ns": self.latency_ns, "tiles": self.tiles, "chips": self.chips,
                "area_mm2": self.area_mm2}

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "kind": self.kind, "totals": self.totals(),
                "resliced": self.resliced,
                "layers": [{**asdict(layer), "energy_pj_total": layer.total_energy_pj}
                           for layer in self.layers]}


def estimate(output_dir: str | Path, profile: HardwareProfile | str) -> CostReport:
    """The cost of the compiled output `output_dir` (its afmc.json) on `profile`."""
    from afmc.io.input_files import read_json_object
    from afmc.io.layout import RECORD_FILE

    path = Path(output_dir) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{output_dir}: no {RECORD_FILE} (run 'afmc compile' first)")
    record = read_json_object(path, "afmc record", ("config", "layers"))
    try:
        return estimate_record(record, profile)
    except KeyError as error:
        raise ValueError(f"{path}: not a valid afmc record (no {error.args[0]!r} field)"
                         ) from None
    except TypeError as error:
        raise ValueError(f"{path}: not a valid afmc record ({error})") from None


def estimate_record(record: dict[str, Any], profile: HardwareProfile | str) -> CostReport:
    """The cost of a compile record (the afmc.json dict) on `profile` (module rules)."""
    if not isinstance(profile, HardwareProfile):
        profile = load_profile(profile)
    layers = record["layers"]
    analog = ({layer["name"] for layer in layers
               if layer["placement"] == "analog" and layer["slice_sizes"]}
              if profile.kind == "analog" else set())
    shapes, resliced = _profile_slices([lay for lay in layers if lay["name"] in analog],
                                       profile)
    tile_map = _tile_map(record, shapes, profile, bool(resliced)) if shapes else None
    reads = _reads_per_layer(tile_map)
    tile_ids = tile_map.layer_tile_ids() if tile_map else {}
    devices = tile_map.devices if tile_map else 1
    costs = [_analog_cost(layer, shapes[layer["name"]], len(tile_ids[layer["name"]]),
                          reads[layer["name"]], devices, profile)
             if layer["name"] in analog else _digital_cost(layer, profile)
             for layer in layers]
    tiles = tile_map.tiles if tile_map else 0
    return CostReport(
        profile=profile.name, kind=profile.kind, layers=costs,
        latency_ns=_latency(costs, analog, record.get("dependencies", []), profile),
        tiles=tiles, chips=math.ceil(tiles / profile.cores) if profile.cores else 0,
        area_mm2=tiles * profile.tile.area_mm2 if profile.tile else None,
        resliced=resliced)


def _profile_slices(layers: list[dict[str, Any]], profile: HardwareProfile
                    ) -> tuple[dict[str, list[int]], list[str]]:
    """Each analog layer's slice sizes on the profile's tile, and the layers re-cut."""
    shapes: dict[str, list[int]] = {}
    resliced = []
    for layer in layers:
        sizes = [int(size) for size in layer["slice_sizes"]]
        if profile.tile is not None and max(sizes) > profile.tile.rows:
            count = math.ceil(layer["in_features"] / profile.tile.rows)
            base, extra = divmod(layer["in_features"], count)
            sizes = [base + (i < extra) for i in range(count)]
            resliced.append(layer["name"])
        shapes[layer["name"]] = sizes
    return shapes, resliced


def _tile_map(record: dict[str, Any], shapes: dict[str, list[int]],
              profile: HardwareProfile, resliced: bool) -> TileMap:
    """The stored map when it fits the profile, else the record's strategy on the
    profile's tile (module rules)."""
    assert profile.tile is not None
    stored = TileMap.from_json(record["tile_map"]) if "tile_map" in record else None
    hardware = record["config"]["hardware"]
    if (stored is not None and not resliced and (stored.rows, stored.cols)
            == (profile.tile.rows, profile.tile.cols)
            and stored.devices == hardware_copies(hardware)):
        return stored
    strategy = stored.strategy if stored else hardware.get("tile_strategy", "one-per-tile")
    layers = [{"name": name, "placement": "analog", "slice_sizes": sizes,
               "in_features": sum(sizes), "out_features": _out_features(record, name)}
              for name, sizes in shapes.items()]
    return map_tiles(layers, profile.tile.rows, profile.tile.cols, strategy).replicated(
        hardware_copies(hardware))


def _out_features(record: dict[str, Any], name: str) -> int:
    return next(int(layer["out_features"]) for layer in record["layers"]
                if layer["name"] == name)


def _reads_per_layer(tile_map: TileMap | None) -> dict[str, int]:
    """Tile reads one after another per layer: the most blocks of it on one tile (1 under
    `diagonal`, whose blocks of a tile run at once)."""
    if tile_map is None:
        return {}
    per_tile = Counter((p.block.layer, p.tile) for p in tile_map.placements)
    reads: dict[str, int] = {}
    for (layer, _), count in per_tile.items():
        reads[layer] = max(reads.get(layer, 0), 1 if tile_map.strategy == "diagonal" else count)
    return reads


def _digital_time_ns(macs: float, nbytes: float, profile: HardwareProfile) -> float:
    compute = macs / (profile.digital.macs_per_cycle * profile.clock_ghz)
    memory = nbytes / (profile.memory.bytes_per_cycle * profile.clock_ghz)
    return max(compute, memory)


def _analog_cost(layer: dict[str, Any], slices: list[int], tiles: int, reads: int,
                 devices: int, profile: HardwareProfile) -> LayerCost:
    assert profile.tile and profile.adc and profile.dac and profile.crossbar
    n, k = int(layer["out_features"]), int(layer["in_features"])
    chunks = math.ceil(n / profile.tile.cols)
    macs, dacs, adcs = n * k * devices, k * chunks * devices, n * len(slices) * devices
    outliers = int(layer.get("outlier_weights", 0))
    nbytes = outliers * (profile.digital.weight_bits / 8 + INDEX_BYTES)
    energy = {"adc": adcs * profile.adc.energy_pj, "dac": dacs * profile.dac.energy_pj,
              "crossbar": macs * profile.crossbar.energy_pj_per_mac,
              "digital": outliers * profile.digital.mac_energy_pj,
              "memory": nbytes * profile.memory.energy_pj_per_byte}
    time = max(reads * profile.tile_read_ns, _digital_time_ns(outliers, nbytes, profile))
    return LayerCost(layer["name"], "analog", n, k, len(slices), tiles, macs, dacs, adcs,
                     outliers, nbytes, energy, time)


def _digital_cost(layer: dict[str, Any], profile: HardwareProfile) -> LayerCost:
    n, k = int(layer["out_features"]), int(layer["in_features"])
    macs, nbytes = n * k, n * k * profile.digital.weight_bits / 8
    energy = {"digital": macs * profile.digital.mac_energy_pj,
              "memory": nbytes * profile.memory.energy_pj_per_byte}
    return LayerCost(layer["name"], "digital", n, k, digital_macs=macs, memory_bytes=nbytes,
                     energy_pj=energy, time_ns=_digital_time_ns(macs, nbytes, profile))


def _latency(costs: list[LayerCost], analog: set[str], dependencies: list[list[str]],
             profile: HardwareProfile) -> float:
    """Latency per token (module rules)."""
    if profile.pipelining == "sequential":
        return sum(cost.time_ns for cost in costs)
    time = {cost.name: cost.time_ns for cost in costs}
    graph: dict[str, set[str]] = {name: set() for name in analog}
    for producer, consumer in dependencies:
        if producer in analog and consumer in analog:
            graph[consumer].add(producer)
    finish: dict[str, float] = {}
    try:
        for name in TopologicalSorter(graph).static_order():
            finish[name] = time[name] + max((finish[p] for p in graph[name]), default=0.0)
    except CycleError as error:
        raise ValueError(f"dependencies: a cycle through layers {error.args[1]}") from None
    digital = sum(cost.time_ns for cost in costs if cost.name not in analog)
    return max(finish.values(), default=0.0) + digital
