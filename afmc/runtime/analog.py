"""The aimc target's runtime: chip instances of an analog model, programmed in memory.

Rule: the graph of OUT/model.onnx is read once (weights left where they are: inline
in the proto, or in OUT/model.onnx.data). A chip is one session whose analog
weights are the programmed ones of its seed, sampled layer by layer from the
stored weights (runtime.noise) and handed to onnxruntime as external initializers
(SessionOptions.add_external_initializers): the session is built from the graph
bytes with every analog initializer marked external, and the other external
initializers are read by onnxruntime itself from OUT. So no model is ever
serialised with its weights through protobuf (which cannot hold 2 GiB), the file is
never rewritten, and onnxruntime constant-folds the weight-only part of the analog
function bodies from the programmed weights, as it would from the stored ones.
onnxruntime copies external initializers while it builds the session, so the
programmed weights are dropped once the session exists: a chip holds what its
session holds.

The FP view is the same graph with every analog node computed in floating point
(views.fp_reference) on the stored weights; read noise is views.with_read_noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from afmc.layout import MODEL_FILE
from afmc.runtime.chip import Chip, chip_from_session
from afmc.runtime.noise import NoiseConfig, layer_rng, program_weights
from afmc.runtime.sessions import open_session, session_options
from afmc.runtime.views import fp_reference, with_read_noise

PROGRAMMED = "programmed-weights"  # the location analog initializers point at in a chip


class AnalogRuntime:
    """Chips of an aimc output: one programming-noise draw per seed (same seed, same chip)."""

    varies_by_seed = True

    def __init__(self, out_dir: Path, record: dict[str, Any], graph: onnx.ModelProto) -> None:
        self.out_dir, self.record, self.graph = out_dir, record, graph
        self.path = out_dir / MODEL_FILE
        self.analog = [layer for layer in record["layers"] if layer.get("onnx_weight")]
        self.noise = NoiseConfig.model_validate(record["config"]["noise"])

    def chip(self, seed: int | None, *, read_noise: float = 0.0,
             noise: NoiseConfig | None = None, threads: int | None = None) -> Chip:
        """Chip `seed` (None: the stored weights, no programming noise), with `noise`
        replacing the record's programming-noise model and `read_noise` drawn fresh on
        every inference."""
        noise = noise or self.noise
        graph = with_read_noise(self.graph, read_noise) if read_noise > 0 else self.graph
        if seed is None or noise.model == "none":
            return self._session(graph, {}, threads, None)
        weights = dict(self.programmed(seed, noise))
        return self._session(graph, weights, threads, seed)

    def fp_view(self, threads: int | None = None) -> Chip:
        """The floating-point model the analog one was compiled from, on the stored weights."""
        return self._session(fp_reference(self.graph), {}, threads, None)

    def programmed(self, seed: int, noise: NoiseConfig) -> Iterator[tuple[str, np.ndarray]]:
        """(initializer name, programmed weights) of every analog layer of chip `seed`."""
        initializers = {init.name: init for init in self.graph.graph.initializer}
        for index, layer in enumerate(self.analog):
            name = layer["onnx_weight"]
            stored = numpy_helper.to_array(initializers[name], str(self.out_dir))
            yield name, program_weights(stored.astype(np.float32, copy=False),
                                        layer["slice_sizes"], noise, layer_rng(seed, index))

    def _session(self, graph: onnx.ModelProto, weights: dict[str, np.ndarray],
                 threads: int | None, seed: int | None) -> Chip:
        options = session_options(threads)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(self.out_dir))
        if weights:
            graph = _with_external_placeholders(graph, weights)
            names = list(weights)
            values = [ort.OrtValue.ortvalue_from_numpy(weights.pop(name)) for name in names]
            options.add_external_initializers(names, values)
        session = open_session(graph.SerializeToString(), options, self.path)
        return chip_from_session(session, seed, self.record, self.path)


def _with_external_placeholders(model: onnx.ModelProto,
                                weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `weights` carry no data but point at
    external data that add_external_initializers supplies."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for initializer in copy.graph.initializer:
        if initializer.name not in weights:
            continue
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            initializer.ClearField(field)
        del initializer.external_data[:]
        initializer.data_type = TensorProto.FLOAT
        initializer.data_location = TensorProto.EXTERNAL
        for key, value in (("location", PROGRAMMED), ("offset", "0"),
                           ("length", str(weights[initializer.name].nbytes))):
            entry = initializer.external_data.add()
            entry.key, entry.value = key, value
    return copy
