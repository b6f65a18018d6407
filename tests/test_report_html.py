"""afmc report's HTML page: afmc-tiny compiled for aimc once, result files written here.

The result files follow the shared schemas (drift, sensitivity, test-time compute)
with realistic values computed in this file; the page must show every section,
embed every figure as a PNG that decodes, show the files' numbers in its tables,
escape their strings, reference nothing outside itself, say how to make a result
that is absent, and refuse (one line, no page) a result file that is broken.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from afmc.cli import app
from afmc.eval.json_out import write_json
from afmc.io.layout import EVAL_DIR, RECORD_FILE

pytestmark = pytest.mark.slow  # afmc-tiny compiled (compiled_tiny)

runner = CliRunner()
HOSTILE = "lm.model.layers.1.mlp.<script>alert('x')</script>"
MATHTEXT = r"chip 1 $\undefined{$"  # unescaped, matplotlib's mathtext refuses to parse it
TIMES = [0, 3600, 86400, 2592000, 31536000]
SECTION_IDS = ("config", "placement", "chips", "drift", "sensitivity", "test-time-compute",
               "passes")


@pytest.fixture(scope="module")
def record_file(compiled_tiny) -> Path:
    """afmc.json of afmc-tiny compiled for aimc with its defaults (shared, read only: the
    page reads only the record, copied by `out`)."""
    return compiled_tiny.output / RECORD_FILE


@pytest.fixture
def out(record_file: Path, tmp_path: Path) -> Path:
    """An output directory holding the compiled record (the page reads nothing else)."""
    directory = tmp_path / "out"
    directory.mkdir()
    shutil.copy(record_file, directory / RECORD_FILE)
    return directory


def _drift(fp: float) -> dict:
    rng = np.random.default_rng(0)
    growth = {t: 0.01 + 0.012 * np.log10(1 + t / 3600) for t in TIMES}
    chips = [{"seed": seed, "time_s": t, "value": round(fp * (1 + growth[t] + 0.01 * rng.
                                                                  standard_normal()), 4)}
             for seed in range(5) for t in TIMES]
    summary = []
    for t in TIMES:
        values = np.array([chip["value"] for chip in chips if chip["time_s"] == t])
        summary.append({"time_s": t, "mean": float(values.mean()),
                        "std": float(values.std(ddof=1)),
                        "chips": len(values)})
    return {"kind": "drift", "metric": "perplexity",
            "noise": {"model": "pcm", "drift_compensation": True, "pcm_gmax": 180.0},
            "read_noise": 0.0, "times_s": TIMES, "fp": fp, "chips": chips, "summary": summary}


def _sensitivity(names: list[str], fp: float) -> dict:
    names = [*names[:-2], HOSTILE, names[-1]]
    deltas = [0.0005 * (index + 1) ** 1.5 for index in range(len(names))]
    layers = [{"name": name, "sqnr_db": 42.0 - index, "relative_error": 0.004 * (index + 1),
               "value": fp + delta, "delta": delta}
              for index, (name, delta) in enumerate(zip(names, deltas, strict=True))]
    cumulative, value = [], fp
    for index, (name, delta) in enumerate(zip(names, deltas, strict=True)):
        value += delta
        cumulative.append({"analog_layers": index + 1, "added": name, "value": value})
    budget = 0.03
    analog = max(i for i, point in enumerate(cumulative) if point["value"] <= fp * (1 + budget))
    return {"kind": "sensitivity", "metric": "perplexity", "seed": 0, "fp": fp,
            "all_analog": value, "layers": layers, "cumulative": cumulative, "budget": budget,
            "keep_digital": names[analog + 1:]}


def _ttc() -> dict:
    return {"kind": "test_time_compute", "task": "arith-2digit.jsonl", "problems": 60,
            "vote": "majority", "temperature": 0.7, "samples": [1, 2, 4, 8, 16],
            "curves": [
                {"label": "FP", "seed": None, "accuracy": [0.35, 0.4, 0.4833, 0.55, 0.5833]},
                {"label": "chip 0", "seed": 0, "accuracy": [0.3, 0.3667, 0.45, 0.5, 0.5333]},
                {"label": MATHTEXT, "seed": 1, "accuracy": [0.2833, 0.35, 0.4167, 0.4833,
                                                            0.5167]}]}


def _seeds(fp: float) -> dict:
    chips = {"0": fp * 1.01, "1": fp * 1.02}
    return {"kind": "seeds", "tokens": 1024, "fp": fp, "noise_free": fp * 1.005,
            "chips": chips, "mean": fp * 1.015, "std": fp * 0.007, "digital": None,
            "settings": {"data": "stdlib:heldout", "seeds": 2}}


def _write_results(out: Path) -> dict[str, dict]:
    record = json.loads((out / RECORD_FILE).read_text())
    fp = record["fidelity"]["fp_perplexity"] if "fidelity" in record else 2.9186
    names = [layer["name"] for layer in record["layers"] if layer["placement"] == "analog"]
    results = {"seeds": _seeds(fp), "drift": _drift(fp),
               "sensitivity": _sensitivity(names, fp), "test_time_compute": _ttc()}
    (out / EVAL_DIR).mkdir()
    for kind, data in results.items():
        write_json(out / EVAL_DIR / f"{kind}.json", data)
    return results


def _report(out: Path, *options: str):
    return runner.invoke(app, ["report", str(out), *options])


def _section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"no section {key}"
    return match.group(1)


def _cells(html: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", html, re.S)


def test_page_shows_every_section_with_the_numbers_of_the_files(out: Path):
    results = _write_results(out)
    result = _report(out)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    for key in SECTION_IDS:
        assert f'<section id="{key}">' in page
    assert "Not evaluated yet" not in page
    record = json.loads((out / RECORD_FILE).read_text())

    config = _cells(_section(page, "config"))
    assert record["source"] in config and "aimc" in config and "0.1.0" in config
    assert str(record["summary"]["tiles"]) in config
    assert f"{record['config']['hardware']['tile_rows']}" in config

    placement = _section(page, "placement")
    cells = _cells(placement)
    for layer in record["layers"]:
        assert layer["name"] in cells and layer["rule"] in cells
    tiles = record["summary"]["tiles_by_strategy"]
    assert all(str(count) in cells for count in tiles.values())
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", placement, re.S).group(0))
    assert sum(rect.get("class") == "tile" for rect in svg.iter("rect")) == (
        record["summary"]["tiles"])

    drift, fp = results["drift"], results["drift"]["fp"]
    cells = _cells(_section(page, "drift"))
    for point in drift["summary"]:
        values = [c["value"] for c in drift["chips"] if c["time_s"] == point["time_s"]]
        assert f"{np.mean(values):.4f}" in cells and f"{np.std(values, ddof=1):.4f}" in cells
        assert f"{np.mean(values) / fp - 1:+.2%}" in cells
    assert cells[12:14] == ["1 d", "86400"]  # the third time: label, then seconds
    assert cells[18:20] == ["30 d", "2592000"]

    sensitivity = results["sensitivity"]
    cells = _cells(_section(page, "sensitivity"))
    for layer in sensitivity["layers"]:
        assert f"{layer['delta']:+.4f}" in cells and f"{layer['sqnr_db']:.1f}" in cells
    assert cells.count("digital") == len(sensitivity["keep_digital"]) > 0
    assert f"{sensitivity['all_analog']:.4f}" in _section(page, "sensitivity")

    cells = _cells(_section(page, "test-time-compute"))
    for curve in results["test_time_compute"]["curves"]:
        assert [f"{a:.3f}" for a in curve["accuracy"]] == cells[cells.index(curve["label"]) + 2:
                                                                cells.index(curve["label"]) + 7]

    cells = _cells(_section(page, "passes"))
    total = sum(step["seconds"] for step in record["passes"])
    for step in record["passes"]:
        assert step["name"] in cells and f"{step['seconds']:.3f}" in cells
        assert f"{step['seconds'] / total:.1%}" in cells
    assert f"{total:.3f}" in cells


def test_figures_are_embedded_pngs_that_decode(out: Path):
    _write_results(out)
    assert _report(out).exit_code == 0
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == page.count("<img") == 5  # drift, sensitivity x2, ttc, passes
    for source in sources:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        picture = Image.open(io.BytesIO(base64.b64decode(source[len(prefix):], validate=True)))
        picture.load()
        assert picture.format == "PNG"
        width, height = picture.size
        assert 500 <= width <= 1000 and 150 <= height <= 1200, picture.size


def test_strings_are_escaped_and_nothing_is_external(out: Path):
    _write_results(out)
    assert _report(out).exit_code == 0
    page = (out / "report.html").read_text()
    assert "<script" not in page.lower()
    assert "lm.model.layers.1.mlp.&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "url(" not in page and "@import" not in page
    assert all(src.startswith("data:image/png;base64,")
               for src in re.findall(r'src="([^"]*)"', page))
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))


def test_absent_results_say_how_to_make_them(out: Path, tmp_path: Path):
    elsewhere = tmp_path / "pages" / "tiny.html"
    result = _report(out, "--html", elsewhere)
    assert result.exit_code == 0, result.output
    assert not (out / "report.html").exists()
    page = elsewhere.read_text()
    for key, file in (("chips", "seeds-*.json"), ("drift", "drift-*.json"),
                      ("sensitivity", "sensitivity-*.json"),
                      ("test-time-compute", "test_time_compute-*.json")):
        section = _section(page, key)
        assert "Not evaluated yet" in section and f"{EVAL_DIR}/{file}" in section
        assert f"afmc eval {out}" in section
    assert f"afmc eval {out} --text FILE --drift 0,3600,86400 --seeds 5" in page
    assert "Not evaluated yet" not in _section(page, "passes")
    assert page.count("<img") == 1  # the compile log


@pytest.mark.parametrize(("kind", "breaks", "message"), [
    ("drift", lambda text, data: text[: len(text) // 2], "drift.json: not valid JSON"),
    ("sensitivity", lambda text, data: json.dumps(
        {**data, "layers": [{k: v for k, v in layer.items() if k != "delta"}
                            for layer in data["layers"]]}),
     "sensitivity.json: not a valid sensitivity result (layers.0.delta: Field required)"),
    ("test_time_compute", lambda text, data: json.dumps(
        {**data, "curves": [{**data["curves"][0], "accuracy": [0.5]}]}),
     "test_time_compute.json: not a valid test-time-compute result (curves.0.accuracy: "
     "1 values for 5 sample counts)"),
])
def test_a_broken_result_file_is_one_line_and_leaves_no_page(out: Path, kind, breaks,
                                                                message):
    results = _write_results(out)
    path = out / EVAL_DIR / f"{kind}.json"
    path.write_text(breaks(path.read_text(), results[kind]))
    result = _report(out)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert str(path) in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [RECORD_FILE, EVAL_DIR]


def test_relative_error_results_without_fp_or_budget(out: Path):
    """Results of a model without a tokenizer: metric relative_error, fp null, no budget,
    one drift time."""
    results = _write_results(out)
    drift = {**results["drift"], "metric": "relative_error", "fp": None, "times_s": [0],
             "noise": {}, "chips": [c for c in results["drift"]["chips"] if c["time_s"] == 0],
             "summary": results["drift"]["summary"][:1]}
    sensitivity = {**results["sensitivity"], "metric": "relative_error", "fp": None,
                   "budget": None, "keep_digital": []}
    write_json(out / EVAL_DIR / "drift.json", drift)
    write_json(out / EVAL_DIR / "sensitivity.json", sensitivity)
    assert _report(out).exit_code == 0
    page = (out / "report.html").read_text()
    cells = _cells(_section(page, "drift"))
    assert cells == ["0", "0", f"{drift['summary'][0]['mean']:.4f}",
                     f"{drift['summary'][0]['std']:.4f}", "5", "-"]
    section = _section(page, "sensitivity")
    assert "No budget was given" in section and "Kept digital" not in section
    assert _cells(section).count("analog") == len(sensitivity["layers"])
    assert page.count("<img") == 5
