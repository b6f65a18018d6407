"""Reading a user's text and JSON files, with one-line errors that name the file.

Rules:
- A path that does not exist, or is a directory where a file is expected, is a
  FileNotFoundError / IsADirectoryError naming it and what was expected; any
  other OSError (permission, symbolic-link loop, ...) carries the file name.
- Text is UTF-8 (a leading byte-order mark is dropped). Bytes that do not
  decode are an error naming the first bad byte and its offset; a NUL byte
  marks a binary file and is an error too.
- The external data files of an ONNX file are those its initializers name.
- A JSON file must parse (the error names line and column) and hold an object
  with the `required` keys (the error names the first one missing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def read_utf8_text(path: Path, what: str = "text file") -> str:
    """The text of `path` (UTF-8); ValueError/OSError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a {what}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    return decode_utf8(data, path)


def decode_utf8(data: bytes, path: Path) -> str:
    """`data` (the bytes of `path`) as UTF-8 text without NUL bytes; ValueError otherwise."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"{path}: binary file, not UTF-8 text (NUL byte at offset {nul})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                         f"{error.start})") from None


def parse_json(text: str, path: Path) -> Any:
    """The JSON value of `text` (read from `path`); ValueError naming line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column "
                         f"{error.colno})") from None


def read_json_object(path: Path, what: str = "JSON file",
                     required: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON object in `path`, holding every key of `required` (see the module rules)."""
    path = Path(path)
    data = parse_json(read_utf8_text(path, what), path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"{path}: not a valid {what} (no {missing[0]!r} key)")
    return data


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The external data files the ONNX file `path` names (none if it cannot be read)."""
    import onnx_ir as ir

    try:
        model = ir.load(path)
    except Exception:  # an unreadable file is reported by load_onnx_model, not here
        return []
    return sorted({Path(value.const_value.path) for value in model.graph.initializers.values()
                   if isinstance(value.const_value, ir.ExternalTensor)})
