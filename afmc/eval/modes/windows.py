"""The token windows that --drift and --sensitivity score a language model on."""

from __future__ import annotations

import numpy as np

from afmc.console.screen import Screen
from afmc.data.text_source import read_text
from afmc.data.tokenizer import token_windows
from afmc.eval.embedding import is_encoder
from afmc.eval.options import within_context
from afmc.eval.request import EvalPlan


def lm_windows(plan: EvalPlan, option: str, screen: Screen) -> np.ndarray:
    """The token windows of --text for `option` on a language model; a ValueError for an
    encoder, which `option` scores by its outputs (--inputs)."""
    model, request = plan.model, plan.request
    if is_encoder(model.record):
        raise ValueError(f"{option} on an encoder: give --inputs FILE (the error of its "
                         "outputs against the FP view is the metric)")
    ids = model.tokenizer().encode(read_text(request.text))
    seq_len = within_context(model, request.seq_len, "--seq-len", screen.out)
    return token_windows(ids, min(seq_len, len(ids)), request.max_tokens)
