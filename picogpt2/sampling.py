"""Choosing the next token: greedy, or a sample after temperature, top-k and
top-p, drawn with a small RNG that any language can reproduce bit for bit.

The rules, in order (as in OpenAI's sampler and transformers):

0. Greedy (``argmax``, the lowest id on a tie) when no sampling option is
   given, when ``temperature == 0``, or when ``top_k == 1``.
1. ``z = float64(logits)``; ``T = temperature`` (1 when not given).
2. Sort ``z`` descending, ties by ascending token id.
3. top-k: keep every token whose ``z`` is at least the k-th largest (ties
   at the boundary are all kept, as in OpenAI's and transformers' code).
4. ``w = exp((z - z_max) / T)`` over the kept tokens, ``cdf = cumsum(w)``
   in the sorted order, ``total = cdf[-1]``. This is softmax(z / T) up to
   its normaliser; dividing the gaps, never the logits, means no
   temperature > 0 overflows: a tiny one gives its limit, greedy (ties at
   the top shared), and an infinite one the uniform choice.
5. top-p: keep the shortest sorted prefix whose ``cdf / total`` reaches
   ``top_p``; the token that crosses ``top_p`` is kept. The kept prefix's
   cdf is the first entries of the same ``cdf``.
6. Draw ``u = rng.uniform()`` and pick the first sorted token whose
   ``cdf > u * cdf_kept[-1]``.

``SplitMix64`` (below) produces ``u``: a 64-bit state, a fixed increment
and two multiply-xorshift rounds; ``uniform`` keeps the top 53 bits. A C
implementation with the same logits and seed draws the same tokens (exp()
results may differ in the last bit between math libraries, which changes a
token only when ``u`` falls within an ulp of a boundary).
"""

from __future__ import annotations

import numpy as np

from picogpt2.errors import InputError

MASK64 = (1 << 64) - 1


class SplitMix64:
    """Steele, Lea and Flood's SplitMix64, seeded with any integer."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """A float in [0, 1): the top 53 bits of ``next_u64`` times 2**-53."""
        return (self.next_u64() >> 11) * 2.0**-53


def check_sampling_args(temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    """The one check of the sampling settings: ``InputError`` with a
    one-line reason for an invalid one (NaN is invalid everywhere)."""
    if temperature is not None and not temperature >= 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top-p must be in (0, 1], got {top_p}")


def is_greedy(temperature: float | None, top_k: int | None, top_p: float | None) -> bool:
    if temperature is None:
        return top_k is None and top_p is None or top_k == 1
    return temperature == 0 or top_k == 1


def sample(
    logits: np.ndarray,
    rng: SplitMix64,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> int:
    """The next token id from ``logits`` [n_vocab], by the rules above."""
    if is_greedy(temperature, top_k, top_p):
        return int(np.argmax(logits))
    z = logits.astype(np.float64)  # step 1
    order = np.argsort(-z, kind="stable")  # step 2
    z = z[order]
    if top_k is not None and top_k < len(z):  # step 3
        z = z[: int(np.sum(z >= z[top_k - 1]))]
    cdf = np.cumsum(np.exp((z - z[0]) / (1.0 if temperature is None else temperature)))  # 4
    if top_p is not None and top_p < 1:  # step 5
        crossing = int(np.argmax(cdf / cdf[-1] >= top_p))
        cdf = cdf[: crossing + 1]
    u = rng.uniform()  # step 6
    return int(order[int(np.searchsorted(cdf, u * cdf[-1], side="right"))])
