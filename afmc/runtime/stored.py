"""The runtime of outputs that run as stored: the digital targets (int8, int4) and fp.

Rule: nothing is sampled, so every seed is the same one chip: a session of
OUT/model.onnx. Read noise and a subset of analog layers are analog notions and
are refused. The FP view is the
floating-point lowering the target kept beside the model (the record's
"digital" section names it, OUT/reference.onnx), or, for the fp target, the model
itself.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import onnx

from afmc.io.layout import MODEL_FILE
from afmc.runtime.chip import Chip, chip_from_session
from afmc.runtime.noise import NoiseConfig
from afmc.runtime.sessions import open_session, session_options


class StoredRuntime:
    """One noiseless chip per output: the stored file, and its floating-point reference."""

    varies_by_seed = False

    def __init__(self, out_dir: Path, record: dict[str, Any], graph: onnx.ModelProto) -> None:
        del graph  # the session reads the file itself
        self.out_dir, self.record = out_dir, record
        reference = record.get("digital", {}).get("reference")
        self.reference = out_dir / (reference or MODEL_FILE)

    def chip(self, seed: int | None, *, read_noise: float = 0.0,
             noise: NoiseConfig | None = None, threads: int | None = None,
             analog_layers: Collection[str] | None = None) -> Chip:
        """The stored model (`seed` and `noise` do not change it)."""
        del noise
        for option, given in (("read noise", read_noise > 0),
                              ("analog_layers", analog_layers is not None)):
            if given:
                raise ValueError(f"{option} applies to analog targets; {self.out_dir} is a "
                                 f"{self.record['target']} model")
        return self._open(self.out_dir / MODEL_FILE, threads)

    def fp_view(self, threads: int | None = None) -> Chip:
        """The floating-point model the stored one was quantized from."""
        return self._open(self.reference, threads)

    def _open(self, path: Path, threads: int | None) -> Chip:
        return chip_from_session(open_session(path, session_options(threads), path), None,
                                 self.record, path)
