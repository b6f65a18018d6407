"""afmc report: tables and tile map picture from OUT/afmc.json, with or without a stored map.

The records are real afmc.json records (a compile of the tiny GPT-2, and records
built from AfmcConfig and LayerRecord); the SVG must be well-formed XML with one
rect per tile and one per block, one legend entry per analog layer.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from afmc.api import compile as afmc_compile
from afmc.config import AfmcConfig
from afmc.console.tables import layer_names
from afmc.mapping import TileMap, map_tiles, write_tile_map_svg
from afmc.passes.layers import LayerRecord
from afmc.report import SVG_FILE, report

SVG = "{http://www.w3.org/2000/svg}"


def _record(tile_map: TileMap | None = None, **hardware) -> dict:
    """An afmc.json record: a 1000 x 1000 layer, five 64 x 64 layers, a digital head."""
    layers = [
        LayerRecord("big", 1000, 1000, "analog", "default", slice_sizes=[500, 500], tiles=4),
        *(
            LayerRecord(f"small.{i}", 64, 64, "analog", "default", slice_sizes=[64], tiles=1)
            for i in range(5)
        ),
        LayerRecord("head", 64, 256, "digital", "digital: head"),
    ]
    config = AfmcConfig().model_dump(mode="json")
    config["hardware"].update(hardware)
    record = {
        "config": config,
        "layers": [layer.to_json() for layer in layers],
        "summary": {"tiles": 9},
    }
    if tile_map is not None:
        record["tile_map"] = tile_map.to_json()
    return record


def _write(tmp_path: Path, record: dict) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "afmc.json").write_text(json.dumps(record))
    return out


def _report(out: Path, **options):
    stream = io.StringIO()
    result = report(out, console=Console(file=stream, width=200), **options)
    return result, stream.getvalue()


def _svg_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    rects = root.findall(f".//{SVG}rect")
    return {
        "rect": len(rects),
        "tile": sum(r.get("class") == "tile" for r in rects),
        "block": sum(r.get("class") == "block" for r in rects),
        "legend": len(root.findall(f".//{SVG}circle")),
    }


def test_report_without_a_stored_map_computes_every_strategy(tmp_path):
    out = _write(tmp_path, _record())
    result, text = _report(out)
    assert result.tile_map.strategy == "one-per-tile"
    assert {name: m.tiles for name, m in result.strategies.items()} == {
        "one-per-tile": 9,
        "packed": 5,
        "diagonal": 5,
    }
    assert "big" in text and "1000 x 1000" in text and "head" in text and "digital" in text
    assert "one-per-tile *" in text and f"{1000 * 1000 / (4 * 512**2):.1%}" in text
    assert result.svg == out / SVG_FILE
    assert _svg_counts(result.svg) == {"rect": 9 + 9, "tile": 9, "block": 9, "legend": 6}


def test_report_uses_the_stored_map_as_stored(tmp_path):
    stored = map_tiles(_record()["layers"], strategy="one-per-tile")
    relabelled = TileMap("packed", stored.rows, stored.cols, stored.tiles, stored.placements)
    result, text = _report(_write(tmp_path, _record(relabelled)))
    assert result.tile_map == relabelled and result.strategies["packed"] == relabelled
    assert result.strategies["diagonal"].tiles == 5 and "packed *" in text


def test_report_follows_the_configured_and_requested_strategy(tmp_path):
    out = _write(tmp_path, _record(tile_strategy="packed"))
    svg = tmp_path / "pictures" / "map.svg"
    result, text = _report(out, svg=svg)
    assert result.tile_map.strategy == "packed" and result.svg == svg
    assert _svg_counts(svg) == {"rect": 5 + 9, "tile": 5, "block": 9, "legend": 6}
    result, _ = _report(out, svg=svg, strategy="diagonal")
    assert result.tile_map.strategy == "diagonal"
    with pytest.raises(ValueError, match="unknown tile strategy 'best'"):
        _report(out, strategy="best")


def test_report_needs_a_record(tmp_path):
    with pytest.raises(FileNotFoundError, match="afmc compile"):
        report(tmp_path)


def test_svg_labels_tiles_and_blocks(tmp_path):
    layers = _record()["layers"]
    tile_map = map_tiles(layers, strategy="packed")
    path = write_tile_map_svg(tile_map, tmp_path / "map.svg")
    root = ET.parse(path).getroot()
    texts = [element.text for element in root.iter(f"{SVG}text")]
    assert any("strategy packed, 5 tiles of 512 x 512" in t for t in texts)
    assert f"tile 4: {5 * 4096 / 512**2:.1%}" in texts
    assert "5  small.4: 1 blocks on 1 tiles" in texts
    titles = [element.text for element in root.iter(f"{SVG}title")]
    assert "big slice 1: weight rows 500-1000, columns 512-1000 at tile 3 (0, 0)" in titles


def test_svg_of_an_empty_map_is_well_formed(tmp_path):
    empty = map_tiles([])
    assert _svg_counts(write_tile_map_svg(empty, tmp_path / "e.svg")) == {
        "rect": 0,
        "tile": 0,
        "block": 0,
        "legend": 0,
    }


@pytest.mark.slow
def test_report_on_a_compiled_model(model_dirs, calibration_text, tmp_path):
    out = tmp_path / "gpt2"
    compiled = afmc_compile(
        str(model_dirs["gpt2"]), "aimc", calibration=calibration_text, output=out
    )
    result, text = _report(out)
    analog = [layer for layer in compiled.record["layers"] if layer["placement"] == "analog"]
    assert result.strategies["one-per-tile"].tiles == compiled.record["summary"]["tiles"]
    assert result.strategies["packed"].tiles <= result.strategies["one-per-tile"].tiles
    counts = _svg_counts(result.svg)
    assert counts["legend"] == len(analog)
    assert counts["block"] == len(result.tile_map.placements)
    names = [layer["name"] for layer in compiled.record["layers"]]
    shown = layer_names(names)  # the table leaves out their shared prefix and says so
    assert all(shown.show(name) in text for name in names)
    assert all(note in text for note in shown.notes)


def test_page_names_the_model_and_paths_as_a_user_reads_them(tmp_path, monkeypatch):
    """The title names the model by its last path part, not an absolute path; the output
    directory is shown relative to the current directory when it lies inside it."""
    from afmc.report.html import shown_path, source_name

    assert source_name("hf:/opt/models/SmolLM2-135M.Q4_1.gguf") == "SmolLM2-135M.Q4_1.gguf"
    assert source_name("/data/bert/model.onnx") == "model.onnx"
    assert source_name("afmc-tiny") == "afmc-tiny"
    assert source_name(None) is None
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "out" / "tiny") == "out/tiny"
    assert shown_path(Path("/elsewhere/out")) == "/elsewhere/out"
