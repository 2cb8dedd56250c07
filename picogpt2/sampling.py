"""Choosing the next token: greedy, or a sample after temperature, top-k and
top-p, drawn with a small RNG that any language can reproduce bit for bit.

The rules, in order (as in OpenAI's sampler and transformers):

1. ``z = float64(logits)``.
2. Repetition penalty ``P`` (when given; 1 changes nothing; ``P`` in
   [1e-30, 1e30], so that no logit overflows): for every
   distinct id already in the prompt or the continuation, ``z[id] / P``
   where ``z[id] > 0``, else ``z[id] * P`` (the CTRL paper's rule, as
   transformers applies it, before everything below, greedy included).
3. Greedy (``argmax`` of ``z``, the lowest id on a tie) when no sampling
   option is given, when ``temperature == 0``, or when ``top_k == 1``.
4. Sort ``z`` descending, ties by ascending token id.
5. top-k: keep every token whose ``z`` is at least the k-th largest (ties
   at the boundary are all kept, as in OpenAI's and transformers' code).
6. ``w = exp((z - z_max) / T)`` over the kept tokens, with ``T`` the
   temperature (1 once top-k or top-p is given without one); ``cdf =
   cumsum(w)`` in the sorted order. This is softmax(z / T) up to its
   normaliser; dividing the gaps, never the logits, means no temperature
   > 0 overflows: a tiny one gives its limit, greedy (ties at the top
   shared), and an infinite one the uniform choice.
7. top-p: keep the shortest sorted prefix whose ``cdf / cdf[-1]`` reaches
   ``top_p``; the token that crosses ``top_p`` is kept. The kept prefix's
   cdf is the first entries of the same ``cdf``.
8. Draw ``u = rng.uniform()`` and pick the first sorted token whose
   ``cdf > u * cdf_kept[-1]``.

The code draws what these rules draw with less work: it sorts the kept
values only, since equal values get equal weights and the order of ties
matters only for the one token drawn (``token_at``); top-k's boundary is found
among a few candidates (``top_values``); a penalty computes the penalised
entries alone. ``tests/test_sampling.py`` holds the rules applied
literally and checks the two agree.

``SplitMix64`` (below) produces ``u``: a 64-bit state, a fixed increment
and two multiply-xorshift rounds; ``uniform`` keeps the top 53 bits. Sample
``j`` of several drawn together uses its own generator seeded ``seed + j``,
so it equals the single generation with that seed. A C implementation with
the same logits and seed draws the same tokens (exp() results may differ in
the last bit between math libraries, which changes a token only when ``u``
falls within an ulp of a boundary).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from picogpt2.util.errors import InputError

MASK64 = (1 << 64) - 1
# A penalty beyond these divides or multiplies a logit past float64's range.
PENALTY_RANGE = (1e-30, 1e30)
GAMMA = 0x9E3779B97F4A7C15  # the increment of SplitMix64's state


def _mix(z):  # an int, or a uint64 array: the same arithmetic mod 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


class SplitMix64:
    """Steele, Lea and Flood's SplitMix64, seeded with any integer (taken
    modulo 2**64)."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + GAMMA) & MASK64
        return _mix(self.state)

    def uniform(self) -> float:
        """A float in [0, 1): the top 53 bits of ``next_u64`` times 2**-53."""
        return (self.next_u64() >> 11) * 2.0**-53

    def uniforms(self, count: int) -> np.ndarray:
        """The next ``count`` draws of ``uniform`` at once, float64 [count]:
        draw k is a pure function of the state ``seed + k * GAMMA``."""
        k = np.arange(1, count + 1, dtype=np.uint64)
        states = (self.state + k * np.uint64(GAMMA)) & MASK64  # uint64 wraps mod 2**64
        self.state = (self.state + count * GAMMA) & MASK64
        return (_mix(states) >> 11).astype(np.float64) * 2.0**-53


def check_sampling_args(
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float | None = None,
) -> None:
    """The one check of the sampling settings: ``InputError`` with a
    one-line reason for an invalid one (NaN is invalid everywhere)."""
    numbers = {"temperature": temperature, "top-p": top_p, "repetition penalty": repetition_penalty}
    for name, value in numbers.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
            raise InputError(f"{name} must be a number, got {value!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral)):
        raise InputError(f"top-k must be an integer, got {top_k!r}")
    if temperature is not None and not temperature >= 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"top-p must be in (0, 1], got {top_p}")
    if (
        repetition_penalty is not None
        and not PENALTY_RANGE[0] <= repetition_penalty <= PENALTY_RANGE[1]
    ):
        raise InputError(
            f"repetition penalty must be in [{PENALTY_RANGE[0]:g}, {PENALTY_RANGE[1]:g}] "
            f"(no logit then overflows), got {repetition_penalty}"
        )


def is_greedy(temperature: float | None, top_k: int | None, top_p: float | None) -> bool:
    if temperature is None:
        return top_k is None and top_p is None or top_k == 1
    return temperature == 0 or top_k == 1


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Steps 1 and 2: float64 ``z`` [n_vocab] from the logits, penalised
    where ``seen`` [n_vocab] is True (the ids of the prompt and the
    continuation so far): only those few entries are computed."""
    z = logits.astype(np.float64)  # a copy, whatever the logits' dtype
    ids = np.flatnonzero(seen)
    chosen = z[ids]
    z[ids] = np.where(chosen > 0, chosen / penalty, chosen * penalty)
    return z


GROUPS = 1024  # the columns top_values bounds the k-th largest with


def top_values(z: np.ndarray, k: int) -> np.ndarray:
    """The entries of ``z`` [n] at or above its k-th largest (1 <= k <= n),
    in no particular order: more than k only on a tie at the boundary.

    Folded into GROUPS columns, z has GROUPS column maxima, distinct
    entries; the k-th largest of them has at least k entries at or above
    it, so it is at most z's k-th largest. The entries at or above it, a
    few more than k, hold the answer: one small partition finds it instead
    of a partition of all 50,257."""
    n = len(z)
    if n >= 8 * GROUPS and k <= GROUPS // 8:  # otherwise the bound would keep too many
        maxima = np.max(np.reshape(z[: n - n % GROUPS], (-1, GROUPS)), axis=0)  # [GROUPS]
        z = z[z >= np.partition(maxima, GROUPS - k)[GROUPS - k]]
    kth = np.partition(z, len(z) - k)[len(z) - k]
    return z[z >= kth]


def kept_descending(z: np.ndarray, top_k: int | None) -> np.ndarray:
    """Steps 4 and 5 on the values: the kept ``z``, descending. Equal values
    give equal weights, so the cdf needs no tie order; ``token_at`` applies
    it to the one token drawn."""
    if top_k is not None and top_k < len(z):
        z = top_values(z, top_k)
    return np.sort(z)[::-1]


def token_at(z: np.ndarray, kept: np.ndarray, i: int) -> int:
    """The id at place ``i`` of step 4's order, ``kept`` being the kept
    ``z`` descending: among the ids whose value is ``kept[i]``, ascending,
    the one as many places after the first as ``i`` is."""
    value = kept[i]
    first = int(np.argmax(kept[: i + 1] == value))
    return int(np.flatnonzero(z == value)[i - first])


def sample(
    logits: np.ndarray,
    rng: SplitMix64,
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seen: np.ndarray | None = None,
) -> int:
    """The next token id from float ``logits`` [n_vocab], by the rules
    above. ``seen`` [n_vocab], True at the ids so far, is needed with a
    repetition penalty."""
    # Step 1 converts exactly and keeps every comparison, so steps 3 to 5 may
    # compare the logits as they come; only the kept tokens are converted.
    z = logits
    if repetition_penalty is not None and repetition_penalty != 1 and seen is not None:
        z = penalize(logits, seen, repetition_penalty)  # steps 1 and 2
    if is_greedy(temperature, top_k, top_p):  # step 3
        return int(np.argmax(z))
    kept = kept_descending(z, top_k)  # steps 4 and 5
    z_kept = kept.astype(np.float64)  # step 1, for the kept tokens
    gaps = z_kept - z_kept[0]
    with np.errstate(over="ignore"):  # a tiny temperature sends the gaps to -inf: exp gives 0
        cdf = np.cumsum(np.exp(gaps / (1.0 if temperature is None else temperature)))  # step 6
    if top_p is not None and top_p < 1:  # step 7
        crossing = int(np.argmax(cdf / cdf[-1] >= top_p))
        cdf = cdf[: crossing + 1]
    u = rng.uniform()  # step 8
    return token_at(z, kept, int(np.searchsorted(cdf, u * cdf[-1], side="right")))
