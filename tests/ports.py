"""Ports of GPT-2 as others write them, for judging compare: correct ones
that round differently (every sum left to right, or pairwise), and the
subtle bugs ports make, one operation each. Used by the oracle's tests and
benchmarks/calibrate_float32.py."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from picogpt2 import gpt2


class LeftToRight:
    """gpt2.py's reductions, redone as plain loops would do them: every sum
    left to right, accumulated in ``accumulate``, the result stored in
    ``store``."""

    def __init__(self, accumulate: type, store: type) -> None:
        self.accumulate, self.store = accumulate, store

    def functions(self) -> dict[str, Callable]:
        names = ("matmul", "layer_norm", "softmax", "attention_scores", "attention", "lm_head")
        return {name: getattr(self, name) for name in names}

    def sum(self, products: np.ndarray, axis: int) -> np.ndarray:
        total = np.cumsum(products, axis=axis, dtype=self.accumulate).take(-1, axis=axis)
        return total.astype(self.store)

    def matmul(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        n_batch, n_seq, n_in = x.shape
        rows = x.reshape(-1, n_in)
        return np.stack([self.sum(row[:, None] * w, 0) for row in rows]).reshape(n_batch, n_seq, -1)

    def mean(self, x: np.ndarray) -> np.ndarray:
        return self.sum(x, -1)[..., None] / self.store(x.shape[-1])

    def layer_norm(self, x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5):
        centred = x - self.mean(x)
        return g * centred / np.sqrt(self.mean(centred * centred) + self.store(eps)) + b

    def softmax(self, x: np.ndarray) -> np.ndarray:
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e / self.sum(e, -1)[..., None]

    @staticmethod
    def per_head(f: Callable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``f`` one batch row and head at a time: long sequences stay small."""
        return np.stack([np.stack([f(x, y) for x, y in zip(a_, b_, strict=True)])
                         for a_, b_ in zip(a, b, strict=True)])  # fmt: skip

    def attention_scores(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        def one(q_, k_):  # [n_seq, head_dim], [n_kv, head_dim]
            return self.sum(q_[:, None, :] * k_[None, :, :], -1)

        return self.per_head(one, q, k) / self.store(math.sqrt(q.shape[-1]))

    def attention(self, q, k, v, trace=gpt2.NO_TRACE):
        scores = self.attention_scores(q, k)
        probs = gpt2.causal_softmax(scores)
        trace.record(attn_scores=scores, attn=probs)

        def one(p_, v_):  # [n_seq, n_kv], [n_kv, head_dim]
            return self.sum(p_[:, :, None] * v_[None, :, :], 1)

        return self.per_head(one, probs, v)

    def lm_head(self, x: np.ndarray, wte: np.ndarray) -> np.ndarray:
        return self.matmul(x, wte.T)


class Pairwise(LeftToRight):
    """Every sum pairwise: NumPy's ``sum`` over a contiguous last axis."""

    def sum(self, products: np.ndarray, axis: int) -> np.ndarray:
        last = np.ascontiguousarray(np.moveaxis(products, axis, -1))
        return np.sum(last, axis=-1, dtype=self.accumulate).astype(self.store)


def gelu_cubic(x):
    return 0.5 * x * (1.0 + np.tanh(gpt2.SQRT_2_OVER_PI * (x + 0.0447 * (x * x * x))))


def eps_small(x, g, b, eps=1e-5):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return g * centred / np.sqrt(variance + 1e-6) + b


def scale_half(q, k):
    scale = np.float16(1) / np.sqrt(np.float16(q.shape[-1]))
    return q @ np.swapaxes(k, -1, -2) * float(scale)


def unbiased(x, g, b, eps=1e-5):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    return g * centred / np.sqrt(np.var(x, axis=-1, ddof=1, keepdims=True) + eps) + b


def eps_outside(x, g, b, eps=1e-5):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    return g * centred / (np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True)) + eps) + b


def exact_gelu(x):
    return (0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))).astype(x.dtype)


def thirds(order):
    def edit(params):
        for block in params["blocks"]:
            c_attn = block["attn"]["c_attn"]
            for name in ("w", "b"):
                parts = np.split(c_attn[name], 3, axis=-1)
                c_attn[name] = np.concatenate([parts[i] for i in order], axis=-1)

    return edit


def zero_bias(*path):
    def edit(params):
        for block in params["blocks"]:
            node = block
            for name in path:
                node = node[name]
            node["b"] = np.zeros_like(node["b"])

    return edit


def wpe_shift(params):
    params["wpe"] = np.roll(params["wpe"], -1, axis=0)  # position t takes wpe[t + 1]


def traced(params, ids, patch: dict, n_head: int) -> dict[str, np.ndarray]:
    """Every key of one forward pass (``dump --detail``'s, ``ids`` too), with
    gpt2.py's functions ``patch``ed: a port's dump."""
    from picogpt2.activations import BLOCK
    from picogpt2.state import Trace

    saved = {name: getattr(gpt2, name) for name in patch}
    try:
        for name, fn in patch.items():
            setattr(gpt2, name, fn)
        t = Trace()
        with np.errstate(all="ignore"):  # an unsafe softmax overflows: its NaN is the point
            logits = gpt2.gpt2(np.asarray([ids]), **params, n_head=n_head, trace=t)
    finally:
        for name, fn in saved.items():
            setattr(gpt2, name, fn)
    out = {"ids": np.asarray(ids), "logits": logits[0], "ln_f": t.arrays["ln_f"][0],
           "hidden": np.stack([t.arrays["embeddings"][0]]
                              + [layer.arrays["hidden"][0] for layer in t.layers])}  # fmt: skip
    return out | {k.name: np.stack([layer.arrays[k.name][0] for layer in t.layers]) for k in BLOCK}


def reduced_input(x: np.ndarray, precision: str) -> np.ndarray:
    """``x`` (float32) as llama.cpp's CPU kernels convert it before a product
    with F16, BF16 or Q8_0 weights: rounded to float16 or bfloat16 (to
    nearest even), or quantized to Q8_0 blocks of 32 (ggml's reference
    quantizer: d = max |x| / 127 stored in float16, q = round(x / d), halves
    away from zero), then back to float32."""
    x = np.asarray(x, np.float32)
    if precision == "float16":
        return x.astype(np.float16).astype(np.float32)
    if precision == "bfloat16":
        bits = x.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32)
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    d = np.max(np.abs(blocks), axis=-1, keepdims=True) / np.float32(127)
    inverse = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inverse
    q = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
    return (q * d.astype(np.float16).astype(np.float32)).reshape(x.shape)


def reduced_matmul(precision: str) -> Callable:
    """gpt2.matmul (every product with the weights, the head's too) taking
    its input reduced to ``precision`` first, summing in float32."""
    matmul = gpt2.matmul

    def reduced(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return matmul(reduced_input(x, precision), w)

    return reduced
