"""How far an output is from its FP reference: the numbers every score of afmc is made of.

One definition each, used by the compile's fidelity check and by evaluation alike:
relative L2 error ||got - fp|| / ||fp||, SQNR = -20 log10(relative error) dB (infinite
for an exact match), the cosine similarity of each row (last axis), and the next-token
negative log-likelihood of a language model's logits (a stable log-softmax in float64).
"""

from __future__ import annotations

import math

import numpy as np


def relative_error(got: np.ndarray, fp: np.ndarray) -> float:
    """||got - fp|| / ||fp|| over every element (L2)."""
    return float(np.linalg.norm(got - fp) / np.linalg.norm(fp))


def sqnr_db(relative: float) -> float:
    """-20 log10(relative error) dB; infinite for an exact match."""
    return -20 * math.log10(relative) if relative > 0 else math.inf


def row_cosines(got: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row (last axis) of `got` to its FP one."""
    return (got * fp).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(fp, axis=-1))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis (float64, stable: the maximum subtracted)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Next-token negative log-likelihoods ``[b, T-1]`` (float64, stable log-softmax)."""
    logits = np.asarray(logits, dtype=np.float64)[:, :-1]
    targets = ids[:, 1:]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1))
    target_logit = np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
    return log_norm - target_logit
