"""One decode step: GPT-2's forward pass for the one new position of each
sequence, as generating runs it once per token.

``DecodeStep(params, n_head)(ids, cache)`` is
``gpt2.gpt2(ids, **params, n_head=n_head, cache=cache, last_only=True)[:, 0]``
for ids of one column: the same operations on the same values in the same
order, so the logits are equal bit for bit and the caches hold the same
keys and values (``tests/test_decode_step.py``). Only where results go
differs.

Why: a decode step multiplies one row by every weight matrix, and those
products are bound by reading the weights (about 500 MB per token for
124M). Between them ``gpt2`` makes some 800 small NumPy calls, each
allocating its result, many through Python wrappers (``np.mean``,
``np.split``, the causal mask); every product evicts the interpreter's
and NumPy's code and data from the caches, so each call costs several
microseconds, and together they took a sixth of a step
(``benchmarks/profile_decode.py``). Here a block is 43 element-wise calls
and reductions besides its 6 products, each writing into arrays allocated
once per generation and batch size; the weights are unpacked once; the
mask is skipped, because the one new position sees every key; and a
ufunc's output is passed as its last positional argument
(``np.add(a, b, out)``), which NumPy parses faster than ``out=``.
Prefill, scoring, traces and dumps run ``gpt2`` itself.

A ``DecodeStep`` holds buffers: one per generation, never shared between
threads.
"""

from __future__ import annotations

import math

import numpy as np

from picogpt2.gpt2 import (
    GELU_CUBIC,
    LAYER_NORM_EPS,
    SQRT_2_OVER_PI,
    Params,
    merge_heads,
    split_heads,
)
from picogpt2.state import KVCache


class _Work:
    """The arrays a step writes into, for one batch size, and the views of
    them that every block reads."""

    def __init__(self, n_batch: int, n_embd: int, n_head: int, like: np.ndarray) -> None:
        def empty(*shape: int) -> np.ndarray:
            return np.empty(shape, dtype=like.dtype, like=like)

        self.x = empty(n_batch, n_embd)  # the residual stream
        self.h = empty(n_batch, n_embd)  # a layer norm's output
        self.a = empty(n_batch, n_embd)  # a sublayer's output, before the residual add
        self.t = empty(n_batch, n_embd)  # scratch
        self.stat = empty(n_batch, 1)  # each row's mean, then its variance
        self.fc = empty(n_batch, 4 * n_embd)
        self.fc_t = empty(n_batch, 4 * n_embd)  # scratch
        # c_attn's output shaped as gpt2's, [n_batch, 1, 3*n_embd], and q, k, v
        # [n_batch, n_head, 1, head_dim] as gpt2's split_heads views it, so
        # the attention's products see the same strides.
        qkv = empty(n_batch, 1, 3 * n_embd)
        self.qkv = np.reshape(qkv, (n_batch, 3 * n_embd))
        self.q, self.k, self.v = (
            split_heads(qkv[..., i * n_embd : (i + 1) * n_embd], n_head) for i in range(3)
        )
        # The attention's output, and the same memory with the heads merged.
        self.heads = empty(n_batch, n_head, 1, n_embd // n_head)
        self.merged = np.reshape(merge_heads(self.heads), (n_batch, n_embd))


class _Constants:
    """gpt2's Python scalars as 0-d arrays of the model's dtype: the same
    values (a Python float meets float32 as float32), which NumPy takes
    faster."""

    def __init__(self, n_embd: int, n_head: int, like: np.ndarray) -> None:
        def scalar(value: float) -> np.ndarray:
            return np.asarray(value, dtype=like.dtype, like=like)

        self.n_embd, self.eps = scalar(n_embd), scalar(LAYER_NORM_EPS)
        self.sqrt_head_dim = scalar(math.sqrt(n_embd // n_head))
        self.cubic, self.sqrt_2_over_pi = scalar(GELU_CUBIC), scalar(SQRT_2_OVER_PI)
        self.one, self.half = scalar(1.0), scalar(0.5)


class DecodeStep:
    """``gpt2`` for one new position of each sequence, for one generation."""

    def __init__(self, params: Params, n_head: int) -> None:
        self.wte, self.wpe, self.n_head = params["wte"], params["wpe"], n_head

        def row(v: np.ndarray) -> np.ndarray:  # [n] -> [1, n]: one row's shape, added faster
            return np.reshape(v, (1, -1))

        self.ln_f = row(params["ln_f"]["g"]), row(params["ln_f"]["b"])
        self.blocks = [
            (row(b["ln_1"]["g"]), row(b["ln_1"]["b"]), b["attn"]["c_attn"]["w"],
             row(b["attn"]["c_attn"]["b"]), b["attn"]["c_proj"]["w"],
             row(b["attn"]["c_proj"]["b"]), row(b["ln_2"]["g"]), row(b["ln_2"]["b"]),
             b["mlp"]["c_fc"]["w"], row(b["mlp"]["c_fc"]["b"]), b["mlp"]["c_proj"]["w"],
             row(b["mlp"]["c_proj"]["b"]))
            for b in params["blocks"]
        ]  # fmt: skip
        self.c = _Constants(self.wte.shape[1], n_head, like=self.wte)
        self._work: dict[int, _Work] = {}

    def __call__(self, ids: np.ndarray, cache: list[KVCache]) -> np.ndarray:
        """Each row's next id [n_batch, 1] -> the logits of that position
        [n_batch, n_vocab]; every block's cache extended by it."""
        n_batch, n_embd = ids.shape[0], self.wte.shape[1]
        w = self._work.get(n_batch)
        if w is None:
            w = self._work[n_batch] = _Work(n_batch, n_embd, self.n_head, like=self.wte)
        past = cache[0].length
        np.add(self.wte[ids[:, 0]], self.wpe[past], w.x)  # [n_batch, n_embd]
        for block, layer in zip(self.blocks, cache, strict=True):
            _block(block, layer, w, self.c)
        _layer_norm(w.x, *self.ln_f, w.h, w, self.c)
        return np.matmul(w.h, self.wte.T)  # [n_batch, n_vocab]


def _block(block: tuple, cache: KVCache, w: _Work, c: _Constants) -> None:
    """``transformer_block`` for one position: w.x [n_batch, n_embd] in place."""
    ln_1_g, ln_1_b, attn_w, attn_b, attn_proj_w, attn_proj_b, ln_2_g, ln_2_b, fc_w, fc_b, \
        mlp_proj_w, mlp_proj_b = block  # fmt: skip
    x = w.x
    # mha: q, k, v of the new position; attention over every cached one
    _layer_norm(x, ln_1_g, ln_1_b, w.h, w, c)
    np.add(np.matmul(w.h, attn_w, w.qkv), attn_b, w.qkv)  # and so w.q, w.k, w.v
    k, v = cache.extend(w.k, w.v)  # [n_batch, n_head, n_kv, head_dim]
    scores = np.matmul(w.q, k.swapaxes(-1, -2))  # [n_batch, n_head, 1, n_kv]
    np.divide(scores, c.sqrt_head_dim, scores)
    np.subtract(scores, scores.max(axis=-1, keepdims=True), scores)  # softmax, in place
    np.exp(scores, scores)
    np.divide(scores, np.add.reduce(scores, axis=-1, keepdims=True), scores)
    np.matmul(scores, v, w.heads)  # [n_batch, n_head, 1, head_dim], merged: w.merged
    np.add(np.matmul(w.merged, attn_proj_w, w.a), attn_proj_b, w.a)
    np.add(x, w.a, x)
    # ffn
    _layer_norm(x, ln_2_g, ln_2_b, w.h, w, c)
    np.add(np.matmul(w.h, fc_w, w.fc), fc_b, w.fc)  # [n_batch, 4*n_embd]
    _gelu(w.fc, w.fc_t, c)
    np.add(np.matmul(w.fc, mlp_proj_w, w.a), mlp_proj_b, w.a)
    np.add(x, w.a, x)


def _layer_norm(
    x: np.ndarray, g: np.ndarray, b: np.ndarray, out: np.ndarray, w: _Work, c: _Constants
) -> None:
    """``layer_norm`` of x [n_batch, n_embd] into ``out``; the mean and the
    variance are sums divided by n_embd, as ``np.mean`` computes them."""
    stat, t = w.stat, w.t
    np.divide(np.add.reduce(x, axis=-1, keepdims=True, out=stat), c.n_embd, stat)  # the mean
    np.subtract(x, stat, out)  # centred
    np.multiply(out, out, t)
    np.divide(np.add.reduce(t, axis=-1, keepdims=True, out=stat), c.n_embd, stat)  # variance
    np.sqrt(np.add(stat, c.eps, stat), stat)
    np.divide(np.multiply(g, out, t), stat, t)
    np.add(t, b, out)


def _gelu(x: np.ndarray, t: np.ndarray, c: _Constants) -> None:
    """``gelu`` of x in place, in its order of operations:
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * (x * x * x))))."""
    np.multiply(np.multiply(x, x, t), x, t)
    np.add(x, np.multiply(c.cubic, t, t), t)
    np.add(c.one, np.tanh(np.multiply(c.sqrt_2_over_pi, t, t), t), t)
    np.multiply(np.multiply(c.half, x, x), t, x)
