"""Log-probabilities of text under GPT-2: the log-softmax that scores and
dumps report, and perplexity with transformers' sliding window.

Texts longer than n_ctx are scored as transformers' perplexity guide does,
so the numbers compare with published ones: windows of n_ctx tokens start
every ``stride`` tokens; each token is scored once, in the first window
that reaches it, with the context that window gives it. The first token of
the text has no context and is not scored (nor, with a stride of n_ctx, the
first token of each window).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from picogpt2.errors import InputError
from picogpt2.memory import check_fits, scoring_bytes
from picogpt2.model import GPT2
from picogpt2.status import Progress


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax) over the last axis, in float64 (not part of the forward
    pass: what scores and dumps report)."""
    z = logits.astype(np.float64)
    top = np.max(z, axis=-1, keepdims=True)
    return z - top - np.log(np.sum(np.exp(z - top), axis=-1, keepdims=True))


def token_nlls(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64: [n, n_vocab], [n] -> [n]"""
    return -log_softmax(logits)[np.arange(len(targets)), targets]


def windows(n: int, n_ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows over ``n`` tokens: (begin, end, first row scored). Row j
    of a window predicts token ``begin + j + 1``; a window scores the
    tokens after the last one scored (position 0 never is)."""
    spans, scored_end = [], 1
    for begin in range(0, n, stride):
        end = min(begin + n_ctx, n)
        spans.append((begin, end, max(scored_end - begin - 1, 0)))
        scored_end = end
        if end == n:
            break
    return spans


def sliding_window_nll(
    model: GPT2,
    ids: list[int],
    stride: int,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """NLL of the tokens each window scores, in order: every token after the
    first, once, [len(ids) - 1], when stride < n_ctx. With stride == n_ctx
    the windows do not overlap, and (as in transformers' guide, whose labels
    shift inside each window) the first token of each later window has no
    context there and is not scored. ``progress`` is told how many tokens
    each window scored."""
    nlls = []
    for begin, end, first_row in windows(len(ids), model.hparams.n_ctx, stride):
        window = ids[begin:end]
        logits = model.logits(window)[first_row : len(window) - 1]
        nlls.append(token_nlls(logits, np.asarray(window[first_row + 1 :])))
        if progress:
            progress(len(nlls[-1]))
    return np.concatenate(nlls) if nlls else np.zeros(0)


def score(model: GPT2, text: str, stride: int | None = None) -> dict[str, float | int]:
    """tokens, nll (nats per token), perplexity, bits_per_byte,
    scored_tokens and bytes of ``text``, scored with the sliding window
    (``stride`` None: n_ctx / 2)."""
    n_ctx = model.hparams.n_ctx
    stride = stride or n_ctx // 2
    if not 1 <= stride <= n_ctx:
        raise InputError(f"--stride must be in [1, n_ctx ({n_ctx})], got {stride}")
    ids = model.encoder.encode(text)
    if len(ids) < 2:
        raise InputError(f"the text has {len(ids)} token; scoring needs at least 2")
    window = min(len(ids), n_ctx)
    check_fits(scoring_bytes(model.hparams, window, model.dtype.itemsize),
               f"scoring windows of {window} tokens", model.backend.available())  # fmt: skip
    spans = windows(len(ids), n_ctx, stride)
    progress = Progress("scored", sum(end - begin - 1 - first for begin, end, first in spans),
                        unit="tokens", scale=1)  # fmt: skip
    nll = sliding_window_nll(model, ids, stride, progress.update if len(spans) > 1 else None)
    if len(spans) > 1:
        progress.finish()
    n_bytes = len(text.encode("utf-8"))
    return {
        "tokens": len(ids),
        "nll": float(nll.mean()),
        "perplexity": math.exp(nll.mean()),
        "bits_per_byte": float(nll.sum() / math.log(2) / n_bytes),
        "scored_tokens": len(nll),
        "bytes": n_bytes,
    }
