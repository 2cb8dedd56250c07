"""How much memory a piece of work needs, estimated before it starts, and
how much the machine has: what cannot fit is refused in one line naming
both figures, instead of growing until the system kills it.

The estimates count what the work allocates beyond the weights (which are
memory-mapped and shared): the KV cache, the activations of a forward
pass, the logits and what sampling and scoring make of them. They err
high, by a small factor, never by orders of magnitude.
"""

from __future__ import annotations

import os
from pathlib import Path

from picogpt2.hparams import HParams
from picogpt2.util.errors import InputError

MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's own limit


def available() -> int | None:
    """Bytes this process can still allocate without swapping: Linux's
    MemAvailable, or the container's limit if that is less; elsewhere the
    physical memory; None when nothing says."""
    figures = []
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                figures.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            figures.append(int(limit) - int((CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not figures and hasattr(os, "sysconf"):
        try:
            figures.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (OSError, ValueError):
            pass
    return min(figures) if figures else None


def check_fits(needed: int, what: str, have: int | None = None) -> None:
    """Refuse ``what`` when it needs more than the memory available."""
    have = available() if have is None else have
    if have is not None and needed > have:
        raise InputError(
            f"{what} would need about {needed / 1e9:,.1f} GB of memory, more than the "
            f"{have / 1e9:,.1f} GB available"
        )


def forward_bytes(h: HParams, n_batch: int, n_seq: int, n_kv: int, itemsize: int) -> int:
    """The largest temporaries of one forward pass of ``n_batch`` x ``n_seq``
    positions attending to ``n_kv``: the MLP's hidden layer, the attention
    scores (with the mask and softmax's copies) and the logits of the last
    position (as decoding computes them)."""
    rows = n_batch * n_seq
    mlp = 3 * rows * 4 * h.n_embd
    scores = 4 * n_batch * h.n_head * n_seq * n_kv
    return (mlp + scores + 8 * rows * h.n_embd + 2 * n_batch * h.n_vocab) * itemsize


def generation_bytes(
    h: HParams, n_prompt: int, n_tokens: int, n_samples: int, itemsize: int
) -> int:
    """A generation of ``n_samples`` x ``n_tokens`` after a prompt: the KV
    cache of every sample (and the prompt's, while it is copied), the
    prompt's forward pass, then a decoding step's, the sampler's float64
    copies of the logits, and the seen-token masks of a repetition penalty."""
    size = min(n_prompt + n_tokens, h.n_ctx)
    cache = 2 * h.n_layer * (n_samples + 1) * size * h.n_embd * itemsize
    prefill = forward_bytes(h, 1, n_prompt, n_prompt, itemsize)
    step = forward_bytes(h, n_samples, 1, size, itemsize) + n_samples * h.n_vocab * (itemsize + 1)
    return cache + max(prefill, step) + 4 * h.n_vocab * 8


def trace_bytes(h: HParams, n: int, itemsize: int, detail: bool) -> int:
    """A trace of ``n`` positions, kept twice (the trace, then its stacked
    NumPy copy): the residual stream, the logits and, with ``detail``,
    every block's inside (the attention probabilities are n x n per head)."""
    per_block = 17 * n * h.n_embd + 2 * h.n_head * n * n if detail else 0
    kept = (h.n_layer + 2) * n * h.n_embd + n * h.n_vocab + h.n_layer * per_block
    return 2 * kept * itemsize + forward_bytes(h, 1, n, n, itemsize)


def scoring_bytes(h: HParams, n_window: int, itemsize: int, nll_rows: int) -> int:
    """Scoring one window of ``n_window`` tokens: its forward pass, its
    logits, and the float64 log-softmax (with its temporaries) of
    ``nll_rows`` of them at a time."""
    log_softmax = min(n_window, nll_rows) * h.n_vocab * 3 * 8
    return (
        forward_bytes(h, 1, n_window, n_window, itemsize)
        + n_window * h.n_vocab * itemsize
        + log_softmax
    )
