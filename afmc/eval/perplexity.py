"""Perplexity of a causal language model over fixed token windows.

The model is seen only through ``logits_fn``: int64 token ids ``[b, T]`` in,
float logits ``[b, T, V]`` out, so the same code scores a PyTorch module, an
ONNX Runtime session or an analog chip instance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from afmc.metrics import next_token_nll

LogitsFn = Callable[[np.ndarray], np.ndarray]


def perplexity(
    logits_fn: LogitsFn,
    windows: np.ndarray,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """exp of the mean next-token NLL over every predicted position of ``windows``.

    ``progress(done, total)`` is called after each batch with window counts.
    """
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be [B>=1, T>=2] token ids, got shape {windows.shape}")
    total_nll = 0.0
    count = 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        logits = logits_fn(batch)
        if logits.shape[:2] != batch.shape:
            raise ValueError(f"logits_fn returned shape {logits.shape} for ids {batch.shape}")
        nll = next_token_nll(logits, batch)
        total_nll += float(nll.sum())
        count += nll.size
        if progress is not None:
            progress(min(start + batch_size, len(windows)), len(windows))
    return float(np.exp(total_nll / count))


def torch_logits_fn(model) -> LogitsFn:
    """A ``logits_fn`` for a Hugging Face causal LM (no grad, no KV cache).

    The model is used as it is; put it in ``eval()`` mode first.
    """
    import torch

    device = next(model.parameters()).device

    def logits_fn(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            input_ids = torch.from_numpy(np.ascontiguousarray(ids)).to(device)
            logits = model(input_ids=input_ids, use_cache=False).logits
        return logits.float().cpu().numpy()

    return logits_fn
