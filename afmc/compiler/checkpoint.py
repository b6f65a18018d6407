"""What a compile stopped after its passes leaves to resume from (--from-step lower).

Rules:
- Beside the graph a front end saves (STEM.pt2 or STEM.onnx) goes STEM.json: the layer
  records and the fold notes, which live in the graph's in-memory metadata and do not
  survive saving. A record is keyed by its layer's weight (the program's attribute
  name; on an ONNX graph the initializer an analog node reads, or a digital layer's):
  the weights keep their names through saving and loading, node names do not
  (torch.export names nodes anew).
- Restoring attaches every record to the node whose weight it names: an analog node
  (its weight input) or a digital static-weight layer. A record left without its node,
  or a file written by another version of afmc, is an error naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from afmc.passes.layers import META_KEY, LayerRecord

VERSION = 1


def write_state(stem: Path, records: Iterable[LayerRecord], notes: list[dict[str, Any]]) -> None:
    """STEM.json: `records` and the fold `notes` of the graph saved as STEM.*."""
    state = {"version": VERSION, "layers": [record.to_json() for record in records],
             "fold_notes": notes}
    stem.with_suffix(".json").write_text(json.dumps(state, indent=1))


def read_state(stem: Path, weight: Callable[[LayerRecord], str]
               ) -> tuple[dict[str, LayerRecord], list[dict[str, Any]]]:
    """(the records of STEM.json by the name `weight` gives each, the fold notes)."""
    path = stem.with_suffix(".json")
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the saved layer records ({error})") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ValueError(f"{path}: not layer records of this afmc (version {VERSION})")
    records = [LayerRecord(**layer) for layer in state["layers"]]
    return {weight(record): record for record in records}, state["fold_notes"]


def attach_records(records: dict[str, LayerRecord],
                   nodes: Iterable[tuple[str, dict[str, Any]]], source: Path) -> None:
    """Put each record into the meta of the node whose weight it names (`nodes`: weight
    name and node meta pairs); a ValueError naming `source` if one finds no node."""
    left = dict(records)
    for weight, meta in nodes:
        if weight in left:
            meta[META_KEY] = left.pop(weight)
    if left:
        names = ", ".join(sorted(record.name for record in left.values())[:3])
        raise ValueError(f"{source}: the saved graph has no layer for the record(s) of "
                         f"{names}")
