"""The compile record: what OUT/afmc.json and the ONNX metadata say about a compiled model.

One builder for both front ends (torch program, ONNX file), so the record keeps
one shape: configuration, placement and slices per layer, the tile map of the
configured strategy (and tile counts of all), data dependencies, fold notes,
and the time each step took.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from afmc import __version__
from afmc.compiler.onnx_export import save_model
from afmc.config import AfmcConfig
from afmc.data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer
from afmc.io.layout import MODEL_FILE, RECORD_FILE, TOKENIZER_DIR
from afmc.mapping import map_all_strategies
from afmc.passes.layers import LayerRecord

COLLECT_ABOVE = 2 << 30  # resident bytes above which StepTimer collects after each step


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc/self/statm); COLLECT_ABOVE + 1 where
    it cannot be read, so the garbage is collected there."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return COLLECT_ABOVE + 1
    return pages * os.sysconf("SC_PAGE_SIZE")


class StepTimer:
    """Runs compile steps, announcing each to `progress` and recording its wall time.

    After each step, when the process holds more than COLLECT_ABOVE, the garbage is
    collected: a pass that rewrites the program leaves the old graph module behind in
    reference cycles that hold the weights it replaced, and Python's cycle collector
    runs by object counts, not bytes, so without this a 1.1B-parameter compile kept
    several steps' weights alive at once (peak RSS 10.0 GB against 6.3 GB;
    docs/scaling.md). A collection costs about 0.2 s with torch loaded, which small
    models do not need to pay after every step.
    """

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self.progress = progress or (lambda message: None)
        self.timings: list[dict[str, Any]] = []

    def __call__(self, name: str, step: Callable[[], Any]) -> Any:
        self.progress(name)
        started = time.perf_counter()
        value = step()
        if resident_bytes() > COLLECT_ABOVE:
            gc.collect()
        self.timings.append({"name": name, "seconds": round(time.perf_counter() - started, 3)})
        return value


def tokenizer_kind(tokenizer: Tokenizer | None) -> str | None:
    """How afmc.json names the tokenizer: "bytes", the tokenizer folder, or none."""
    if isinstance(tokenizer, ByteTokenizer):
        return "bytes"
    if isinstance(tokenizer, HFTokenizer):
        return TOKENIZER_DIR
    return None


def outlier_summary(analog: list[LayerRecord]) -> dict[str, Any]:
    """The digital sparse path of split-outliers over the analog layers: its nonzero weights
    (a sparse engine's MACs per token, too), their share of the analog weights, and the
    bytes the file stores for them (float32 values and int64 column indices per slot)."""
    weights = sum(layer.outlier_weights for layer in analog)
    slots = sum(layer.outliers_per_slice * len(layer.slice_sizes) * layer.out_features
                for layer in analog)
    total = sum(layer.weights for layer in analog)
    return {"layers": sum(1 for layer in analog if layer.outlier_weights),
            "weights": weights, "share": weights / total if total else 0.0,
            "macs_per_token": weights, "bytes": slots * 12}


def build_record(
    *,
    target: str,
    runtime: str,
    source: str,
    inputs: list[str],
    outputs: list[str],
    layers: list[LayerRecord],
    config: AfmcConfig,
    timings: list[dict[str, Any]],
    calibration_source: str | None,
    tokenizer: Tokenizer | None,
    fold_notes: list[dict[str, Any]],
    dependencies: list[tuple[str, str]],
    max_positions: int | None = None,
    kv_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of one compile; "kv_cache" (afmc.data.kv_cache) only for a causal LM
    compiled with its cache."""
    analog = [layer for layer in layers if layer.placement == "analog"]
    hardware = config.hardware
    on_tiles = [layer for layer in analog if layer.slice_sizes]  # lowered to crossbar ops
    maps = {name: m.replicated(hardware.copies)  # d devices x n bit slices: d n-fold tiles
            for name, m in map_all_strategies(on_tiles, hardware.tile_rows,
                                              hardware.tile_cols).items()}
    tile_map = maps[hardware.tile_strategy]
    tile_ids = tile_map.layer_tile_ids()
    for layer in on_tiles:  # the mapping also stays on the layer records (graph nodes)
        layer.tile_ids = tile_ids.get(layer.name, [])
        layer.tiles = len(layer.tile_ids)
    record = {
        "afmc_version": __version__,
        "target": target,
        "runtime": runtime,  # how afmc.load runs it (afmc.runtime.compiled)
        "source": source,
        "inputs": inputs,
        "outputs": outputs,
        "max_positions": max_positions,  # the longest sequence a text model takes, if known
        "tokenizer": tokenizer_kind(tokenizer),
        "calibration": calibration_source,
        "config": config.model_dump(mode="json"),
        "summary": {
            "analog_layers": len(analog),
            "digital_layers": len(layers) - len(analog),
            "tiles": tile_map.tiles,
            "tile_strategy": hardware.tile_strategy,
            "tile_utilization": tile_map.utilization,
            "tiles_by_strategy": {name: m.tiles for name, m in maps.items()},
            "analog_weights": sum(layer.weights for layer in analog),
            "outliers": outlier_summary(analog),
        },
        "layers": [layer.to_json() for layer in layers],
        "fold_notes": list(fold_notes),
        "tile_map": tile_map.to_json(),
        "dependencies": [list(edge) for edge in dependencies],
        "passes": timings,
    }
    if kv_cache is not None:
        record["kv_cache"] = kv_cache
    return record


def write_record(staged: Path, record: dict[str, Any]) -> None:
    """Write the record as `staged`/afmc.json."""
    (staged / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def write_outputs(staged: Path, model: ir.Model, record: dict[str, Any],
                  tokenizer: Tokenizer | None, files: dict[str, ir.Model] | None = None) -> None:
    """Write model.onnx, any extra ONNX files, afmc.json and the tokenizer into `staged`."""
    save_model(model, staged / MODEL_FILE)
    for name, extra in (files or {}).items():
        save_model(extra, staged / name)
    write_record(staged, record)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.tokenizer.save_pretrained(staged / TOKENIZER_DIR)

