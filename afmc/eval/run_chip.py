"""afmc run: one chip instance on a text (next-token predictions of a language model,
the embedding of an encoder) or on tensor inputs (every output against the FP view);
afmc generate: one chip (or the FP view) continuing a prompt."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from afmc.console.screen import Screen
from afmc.data.text_source import read_text
from afmc.eval.embedding import embedding_error, embeddings, is_encoder
from afmc.eval.options import tensor_source, within_context
from afmc.eval.spread import number_text
from afmc.eval.tensor_eval import TOP1_SHOWN, run_tensors
from afmc.metrics import log_softmax, next_token_nll
from afmc.runtime.compiled import CompiledModel
from afmc.runtime.generation import GenerationOptions, check_language_model, generate


def chip_label(model: CompiledModel, seed: int) -> str:
    """How run and generate name what they ran: the chip, or the one noiseless model."""
    return f"chip seed {seed}" if model.varies_by_seed else f"{model.target} model (no noise)"


def run_chip(model: CompiledModel, text: str | None, inputs: Path | None, seed: int,
             read_noise: float, max_tokens: int, top_k: int, screen: Screen) -> None:
    """Run chip `seed` of `model` on --text or --inputs and print what it gives."""
    if tensor_source(model, text, inputs) is not None:
        _run_tensors(model, inputs, seed, read_noise, screen)
        return
    tokenizer = model.tokenizer()
    ids = tokenizer.encode(read_text(text))[:within_context(model, max_tokens, "--max-tokens",
                                                            screen.out)]
    if ids.size == 0:
        raise ValueError(f"{text}: no tokens")
    if is_encoder(model.record):
        _run_encoder(model, ids, seed, read_noise, screen)
        return
    with screen.status(f"{chip_label(model, seed)}: programming and running"):
        chip = model.chip(seed, read_noise=read_noise)
        logits = chip.run(ids[None, :])[0].astype(np.float64)
    nll = next_token_nll(logits[None], ids[None])[0]
    screen.out.print(f"{chip_label(model, seed)}: {ids.size} tokens, logits "
                     f"{list(logits.shape)}, mean {logits.mean():.4f}, std {logits.std():.4f}")
    if nll.size:
        screen.out.print(f"next-token accuracy {np.mean(logits[:-1].argmax(-1) == ids[1:]):.3f}, "
                         f"perplexity {np.exp(nll.mean()):.3f}")
    last = log_softmax(logits[-1])
    table = Table(title="next token after the text", show_edge=False)
    table.add_column("token")
    table.add_column("probability")
    for token in np.argsort(last)[::-1][:top_k]:
        table.add_row(repr(tokenizer.decode([int(token)])), f"{np.exp(last[token]):.3f}")
    screen.out.print(table)


def _run_encoder(model: CompiledModel, ids: np.ndarray, seed: int, read_noise: float,
                 screen: Screen) -> None:
    """An encoder: the text's embedding on chip `seed`, and its error to FP."""
    with screen.status(f"{chip_label(model, seed)}: programming and running"):
        chip = model.chip(seed, read_noise=read_noise)
        got = embeddings(chip, ids[None, :])
        error = embedding_error(got, embeddings(model.fp_view(), ids[None, :]))
    screen.out.print(f"{chip_label(model, seed)}: {ids.size} tokens, embedding "
                     f"{list(got.shape)}, norm {np.linalg.norm(got):.4f}; vs FP: relative "
                     f"error {error.relative_error:.4f}, cosine {error.cosine:.4f}")


def _run_tensors(model: CompiledModel, inputs: Path, seed: int, read_noise: float,
                 screen: Screen) -> None:
    """--inputs: every output of chip `seed`, its statistics and error to FP."""
    with screen.status(f"{chip_label(model, seed)}: programming and running"):
        report = run_tensors(model, inputs, seed, read_noise=read_noise)
    screen.out.print(f"{chip_label(model, seed)}: {report.samples} samples from {inputs}")
    table = Table(title="outputs vs the FP view", show_edge=False)
    for column in ("output", "shape", "mean", "std", "relative error", "SQNR (dB)", "cosine",
                   "top-1 agreement"):
        table.add_column(column)
    for output in report.outputs:
        table.add_row(output.name, str(output.shape), f"{output.mean:.4g}", f"{output.std:.4g}",
                      f"{output.error.relative_error:.4g}", f"{output.error.sqnr_db:.2f}",
                      f"{output.error.cosine:.4f}", number_text(output.error.agreement, ".4f"))
    screen.out.print(table)
    for output in report.outputs:
        if output.top1 is not None:
            screen.out.print(
                f"{output.name}: top-1 class of the first {len(output.top1)} sample(s) "
                f"{output.top1} (FP {output.fp_top1})"
                + (f", of {report.samples}" if report.samples > TOP1_SHOWN else ""))


def generate_text(model: CompiledModel, prompt: str, options: GenerationOptions,
                  seed: int | None, read_noise: float, screen: Screen) -> None:
    """Continue `prompt` on chip `seed` (None: the FP view): the prompt echoed on stderr, the
    continuation on stdout, then tokens/s and why it stopped (a whitespace-only
    continuation quoted there, as it prints as nothing visible)."""
    check_language_model(model.record)
    tokenizer = model.tokenizer()
    eos = getattr(getattr(tokenizer, "tokenizer", None), "eos_token_id", None)
    options = dataclasses.replace(options, eos_token_id=eos)
    options.check()
    ids = tokenizer.encode(prompt)
    which = "FP view" if seed is None else chip_label(model, seed)
    screen.err.print(f"prompt ({ids.size} tokens): {prompt!r}", markup=False,
                     highlight=False, soft_wrap=True)
    with screen.status(f"{which}: programming and generating"):
        chip = model.fp_view() if seed is None else model.chip(seed, read_noise=read_noise)
        started = time.perf_counter()  # tokens/s of decoding, without the chip's start
        result = generate(chip, model.record, ids, options)
        seconds = time.perf_counter() - started
    text = tokenizer.decode(result.tokens)
    screen.out.print(text, markup=False, highlight=False)
    blank = f"; whitespace only: {text!r}" if result.tokens and not text.strip() else ""
    screen.err.print(f"{which}: {len(result.tokens)} new tokens "
                     f"({'eos' if result.stopped_at_eos else 'max-new-tokens'}), "
                     f"{len(result.tokens) / seconds:.1f} tokens/s{blank}", highlight=False,
                     markup=False, soft_wrap=True)
