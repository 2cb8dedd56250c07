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

from picogpt2.encoder import valid_text
from picogpt2.model import GPT2
from picogpt2.util.errors import InputError
from picogpt2.util.memory import check_fits, scoring_bytes
from picogpt2.util.status import Progress
from picogpt2.util.textio import plural

NLL_ROWS = 64  # rows at a time: the float64 copies stay small (400 MB for a 124M window)


def token_nlls(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64: [n, n_vocab], [n] -> [n].
    The same figures as ``log_softmax`` gives, computed as
    log(sum(exp(z - max))) - (z[target] - max) without the whole matrix of
    log-probabilities, a block of rows at a time."""
    nll = np.empty(len(targets))
    for begin in range(0, len(targets), NLL_ROWS):
        rows = slice(begin, begin + NLL_ROWS)
        z = logits[rows].astype(np.float64)  # [<= NLL_ROWS, n_vocab]
        shifted = z - np.max(z, axis=-1, keepdims=True)
        picked = shifted[np.arange(len(z)), targets[rows]]
        nll[rows] = np.log(np.sum(np.exp(shifted, out=shifted), axis=-1)) - picked
    return nll


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


def check_stride(stride: int | None, n_ctx: int | None) -> int | None:
    """The stride to use (None: n_ctx / 2), checked: at least 1, at most
    ``n_ctx`` (when the context is known: a command checks what it can
    before it loads the model, with this very function)."""
    if stride is None:
        return n_ctx // 2 if n_ctx else None
    if n_ctx is None and stride < 1:
        raise InputError(f"--stride must be >= 1, got {stride}")
    if n_ctx is not None and not 1 <= stride <= n_ctx:
        raise InputError(f"--stride must be in [1, n_ctx ({n_ctx})], got {stride}")
    return stride


def tokens_to_score(model: GPT2, text: str) -> list[int]:
    """The token ids of ``text``: at least 2, as the first is never scored."""
    ids = model.encoder.encode(text)
    if len(ids) < 2:
        raise InputError(f"the text has {plural(len(ids), 'token')}; scoring needs at least 2")
    return ids


def figures(text: str, ids: list[int], nll: np.ndarray) -> dict[str, float | int]:
    """What ``score`` reports of ``text``, from its ids and their NLLs (its
    bytes those of the text the ids are of: ``valid_text``)."""
    n_bytes = len(valid_text(text).encode("utf-8"))
    return {
        "tokens": len(ids),
        "nll": float(nll.mean()),
        "perplexity": math.exp(nll.mean()),
        "bits_per_byte": float(nll.sum() / math.log(2) / n_bytes),
        "scored_tokens": len(nll),
        "bytes": n_bytes,
    }


def score(model: GPT2, text: str, stride: int | None = None) -> dict[str, float | int]:
    """tokens, nll (nats per token), perplexity, bits_per_byte,
    scored_tokens and bytes of ``text``, scored with the sliding window
    (``stride`` None: n_ctx / 2)."""
    stride = check_stride(stride, model.hparams.n_ctx)
    return score_ids(model, text, tokens_to_score(model, text), stride)


def score_ids(model: GPT2, text: str, ids: list[int], stride: int) -> dict[str, float | int]:
    """``score`` of ``text`` once it is ``ids``, with a checked ``stride``."""
    n_ctx = model.hparams.n_ctx
    window = min(len(ids), n_ctx)
    check_fits(scoring_bytes(model.hparams, window, model.dtype.itemsize, NLL_ROWS),
               f"scoring windows of {window} tokens", model.backend.available())  # fmt: skip
    spans = windows(len(ids), n_ctx, stride)
    progress = Progress("scored", sum(end - begin - 1 - first for begin, end, first in spans),
                        unit="tokens", scale=1)  # fmt: skip
    nll = sliding_window_nll(model, ids, stride, progress.update if len(spans) > 1 else None)
    if len(spans) > 1:
        progress.finish()
    return figures(text, ids, nll)


def batch_nll(model: GPT2, batch: list[list[int]]) -> list[np.ndarray]:
    """NLL of every token after the first of each sequence (each at most
    n_ctx tokens), in one forward pass: [len(s) - 1] per sequence s.

    The sequences are right-padded to the longest one. Causal attention
    keeps a padded position out of every position before it, so each row's
    logits are those of its sequence alone, up to float rounding (the
    matrix products have other shapes)."""
    n_seq = max(map(len, batch))
    ids = np.zeros((len(batch), n_seq), dtype=np.int64)  # [n_batch, n_seq], padded with id 0
    for row, seq in zip(ids, batch, strict=True):
        row[: len(seq)] = seq
    logits = model.backend.to_numpy(model.forward(model.backend.upload(ids, np.int64)))
    return [token_nlls(logits[i, : len(s) - 1], np.asarray(s[1:])) for i, s in enumerate(batch)]


BATCH_POSITIONS = 512  # about where larger batches stop running faster (bench_corpus.py)


def batches(sequences: list[list[int]], n_positions: int) -> list[list[int]]:
    """Indices of ``sequences`` in batches of at most ``n_positions``
    positions once padded, shortest first, so that little is padding."""
    out: list[list[int]] = []
    for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i])):
        # Sorted by length, so padding the batch means padding to this one.
        if not out or (len(out[-1]) + 1) * len(sequences[i]) > n_positions:
            out.append([])
        out[-1].append(i)
    return out


def score_many(
    model: GPT2, texts: list[str], stride: int | None = None
) -> list[dict[str, float | int] | InputError]:
    """``score`` of each text, or the ``InputError`` that stops it being
    scored. Texts of one window (at most n_ctx tokens) run together, in
    batches of at most ``BATCH_POSITIONS`` positions (or one text): the
    matrix products of a long text rather than of many short ones."""
    stride = check_stride(stride, model.hparams.n_ctx)
    results: list[dict[str, float | int] | InputError | None] = [None] * len(texts)
    short: dict[int, list[int]] = {}  # text index -> its ids, for texts of one window
    for i, text in enumerate(texts):
        try:
            ids = tokens_to_score(model, text)
            if len(ids) > model.hparams.n_ctx:
                results[i] = score_ids(model, text, ids, stride)
            else:
                short[i] = ids
        except InputError as e:
            results[i] = e
    if short:
        n_ctx = model.hparams.n_ctx
        # A batch holds at most n_ctx positions: no more memory than one full window.
        check_fits(scoring_bytes(model.hparams, n_ctx, model.dtype.itemsize, NLL_ROWS),
                   f"scoring {n_ctx} positions at a time", model.backend.available())  # fmt: skip
        order, seqs = list(short), list(short.values())
        for batch in batches(seqs, min(BATCH_POSITIONS, n_ctx)):
            for j, nll in zip(batch, batch_nll(model, [seqs[j] for j in batch]), strict=True):
                results[order[j]] = figures(texts[order[j]], seqs[j], nll)
    return results
