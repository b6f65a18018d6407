"""The outlier split's choice of how many weights each analog layer gives to the digital
path, shared by the FX and ONNX split-outliers passes.

Rules: each layer is scored (layer_score.LayerScore) for every candidate count m in
CANDIDATES up to ``outliers.max_per_slice`` and at most its smallest slice; the digital
weights are given out greedily (`allocate`), each step to the layer whose weighted error
falls most per weight moved, until the budget is spent. A layer's weight (`importance`)
is 1, but an analog LM head (name_rules.LM_HEAD) counts as all the other analog layers
together (their number): its error is the logits' own, where every other layer's is
diluted in the residual stream (measured on SmolLM2-135M, issue 21).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Hashable, Sequence
from typing import TypeVar

from afmc.passes.name_rules import LM_HEAD

CANDIDATES = (0, 1, 2, 4, 8, 16)  # outlier weights per row and input slice

Layer = TypeVar("Layer", bound=Hashable)


def candidates(max_per_slice: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """The counts a layer with input slices `sizes` is scored for."""
    return tuple(c for c in CANDIDATES if c <= max_per_slice and c <= min(sizes))


def importance(names: dict[Layer, str]) -> dict[Layer, float]:
    """The weight of each LM head among the analog layers named `names` (others: 1)."""
    heads = [layer for layer, name in names.items() if re.search(LM_HEAD, name)]
    return {layer: float(max(len(names) - len(heads), 1)) for layer in heads}


def allocate(errors: dict[Layer, dict[int, float]], weights_per_count: dict[Layer, int],
             budget: int, weight: dict[Layer, float] | None = None) -> dict[Layer, int]:
    """Greedy: repeatedly move the layer to the candidate count whose error, times its
    `weight` (default 1), falls most per digital weight added, while the total stays
    within `budget` weights. `errors[layer][count]`: the layer's error at each count."""
    weight = weight or {}
    chosen = {layer: 0 for layer in errors}
    spent = 0
    heap: list[tuple[float, int, int]] = []
    layers = list(errors)

    def push(index: int) -> None:
        layer = layers[index]
        scored, current = errors[layer], chosen[layer]
        best = None
        for count, error in scored.items():
            if count <= current:
                continue
            gain = weight.get(layer, 1.0) * (scored[current] - error) / (
                (count - current) * weights_per_count[layer])
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, count)
        if best is not None:
            heapq.heappush(heap, (-best[0], index, best[1]))

    for index in range(len(layers)):
        push(index)
    while heap:
        _, index, count = heapq.heappop(heap)
        layer = layers[index]
        extra = (count - chosen[layer]) * weights_per_count[layer]
        if spent + extra > budget:
            continue
        spent += extra
        chosen[layer] = count
        push(index)
    return chosen
