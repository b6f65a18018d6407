"""What hardware-aware training stored for each analog layer, and which of it a layer takes.

The keys of a trained model's afmc_ranges.safetensors (afmc.compiler.trained_model): NAME
holds the learned input ranges of module NAME (one per input slice), NAME.input_scale its
digital input scale, NAME.outliers_per_slice its outlier count m. The rule of both
learned-ranges passes (FX and ONNX): an analog layer takes the ranges stored for its name
(else its record's full name) and must have one per input slice.
"""

from __future__ import annotations

import torch

from afmc.passes.layers import LayerRecord

META_RANGES = "afmc_learned_ranges"  # graph meta key: the ranges the compile was given
SCALE_SUFFIX = ".input_scale"  # the entry of a layer's digital input scale
OUTLIERS_SUFFIX = ".outliers_per_slice"  # the entry of a layer's outlier count m


def layer_ranges(ranges: dict[str, torch.Tensor], name: str, record: LayerRecord,
                 pass_name: str) -> torch.Tensor:
    """The learned ranges of analog layer `name` (else of its record's full name), one per
    input slice of `record`; a ValueError naming the layer when it has none or another
    slice count (the rule of both learned-ranges passes)."""
    learned = ranges.get(name, ranges.get(record.name))
    if learned is None:
        raise ValueError(f"{pass_name}: analog layer {name} has no learned input "
                         "ranges (trained with another placement); compile with the "
                         "trained configuration or --recalibrate")
    if learned.numel() != len(record.slice_sizes):
        raise ValueError(f"{pass_name}: {name} has {learned.numel()} learned ranges "
                         f"but {len(record.slice_sizes)} input slices here "
                         "(hardware.max_in differs from training)")
    return learned
