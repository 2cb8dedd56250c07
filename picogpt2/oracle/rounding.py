"""How far rounding alone may move each operation's output: error bounds
derived from the arithmetic, one per element, for blame by isolation.

A candidate computing in a precision with unit roundoff ``u`` (2^-24 for
float32, 2^-53 for float64) rounds every result it stores with a relative
error of at most ``u``. Each function below follows one operation's
arithmetic and returns, for every element of its output, how far a
correct implementation may land from the exact result of the same inputs;
``compare --model`` recomputes that exact result in float64 (which rounds
too, so ``u`` is the candidate's plus float64's). An error over its bound
is not rounding.

**Sums.** A sum of ``n`` terms takes ``n - 1`` additions in any order (left
to right, pairwise, BLAS's blocks), each rounding a partial sum no larger
than ``S = sum |terms|`` by at most ``u S``. In the worst case the errors
add up: ``(n - 1) u S``. Rounding errors are not adversarial, though: each
is mean-zero given the ones before it, so by the Azuma-Hoeffding
inequality their sum stays within ``LAMBDA sqrt(n - 1) u S`` but with
probability ``2 exp(-LAMBDA^2 / 2)`` (Higham and Mary, SIAM J. Sci. Comput.
41(5), 2019). So every error is followed as a ``Bound``: ``worst``, what it
can reach at all, and ``scale``, its sub-Gaussian scale (a sum of errors
within ``c_k`` each has scale ``sqrt(sum c_k^2)``); an element is held to
``min(worst, LAMBDA * scale)``. With ``LAMBDA = 8`` an element's bound fails
by chance with probability 2.5e-14; a 124M pass at 1024 positions judges
about 6e8 elements. The errors measured (benchmarks/calibrate_float32.py,
docs/oracle.md) stay well under the bound in sums taken left to right,
pairwise and by BLAS, and the subtle bugs land over it.

**Functions.** ``exp`` and ``tanh`` of float32 libraries are within a few
units in the last place: NumPy's SIMD float32 ``exp`` measured 2.4 ulp
(3.4 u), ``tanh`` 1.4 ulp; glibc and CUDA document 1-2. ``FUNCTION = 8``
units of ``u`` covers them. Arguments carry their own rounding: ``exp(s -
max)`` is off by ``u |s - max|`` relatively, which is what a softmax over
scores of size 100 pays.

**Inputs.** An input the candidate saved is its value rounded once:
before it stored it, it may have used it unrounded (a fused kernel, a
register, an accumulator kept wide), so each input counts as known to
``u |x|``, and that is carried to the output like any error. When a
candidate did not save an input, it is recomputed, and its own bound
travels with it instead. Errors are carried to first order: through a
matrix product, ``sum_j e_j |w_jk|`` in the worst case, and scales as a
root sum of squares (the errors of different elements taken as
independent), so a span of operations is held to the composition of their
bounds, and the chance allowance ``LAMBDA`` is paid once, not per step.

**Reduced inputs** (``--precision float16``, ``bfloat16``, ``q8_0``).
llama.cpp's CPU kernels multiply a float32 activation by F16, BF16 or Q8_0
weights by first converting the activation to the weights' own type, then
sum in float32. So the operations are float32's, and each matrix product
with the weights takes its input ``x`` off by ``r_j`` per element:
``u_16 |x_j|`` rounded to float16 (plus half float16's smallest
subnormal, 2^-25), ``u_bf16 |x_j|`` to bfloat16, and for Q8_0 blocks of 32
values, ``d (1/2 + 127 (u_16 + 2 u))`` with ``d = max |x_block| / 127``:
half a step, the step itself rounded to float16, and ``x / d`` rounded in
float32. Carried through the weights like any input error: ``sum_j r_j
|w_jk|`` at worst, ``sqrt(sum_j r_j^2 w_jk^2)`` at scale (the conversion
errors of different elements taken as independent).

Every bound adds ``tiny``, the precision's smallest normal number: a
result that underflows to zero is off by less.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from picogpt2.activations import Weights, heads, merged, third_weights
from picogpt2.gpt2 import GELU_CUBIC, LAYER_NORM_EPS, SQRT_2_OVER_PI

LAMBDA = 8.0  # Hoeffding: an element's bound fails with probability 2 exp(-LAMBDA^2 / 2)
FUNCTION = 8.0  # exp, tanh: within 8 u of the exact value (4 ulp)
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53, "float16": 2.0**-11,
                 "bfloat16": 2.0**-8}  # fmt: skip
TINY = {"float32": float(np.finfo(np.float32).tiny), "float64": float(np.finfo(np.float64).tiny)}
# Precisions whose matrix products with the weights take reduced inputs
# (module docstring), summing in float32; Q8_0's blocks hold 32 values.
REDUCED = ("float16", "bfloat16", "q8_0")
REDUCED_WEIGHTS = {"float16": "F16", "bfloat16": "BF16", "q8_0": "Q8_0"}  # llama.cpp's weights
PRECISIONS = ("float32", "float64", *REDUCED)
Q8_BLOCK = 32
HALF_SUBNORMAL = 2.0**-25  # half float16's smallest step: its rounding near zero


@dataclass
class Bound:
    """An error, element by element: ``worst``, what it can reach at all;
    ``scale``, its sub-Gaussian scale. It is held to ``limit()``."""

    worst: np.ndarray
    scale: np.ndarray

    def __add__(self, other: Bound) -> Bound:
        # Scales add as they are (not in quadrature): the two may be correlated.
        return Bound(self.worst + other.worst, self.scale + other.scale)

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Bound:
        """The same bound, reshaped (or taken apart) as its values are."""
        return Bound(fn(self.worst), fn(self.scale))

    def limit(self) -> np.ndarray:
        return np.minimum(self.worst, LAMBDA * self.scale)


Error = Bound | None  # an input's error; None: the candidate's own saved value


def unit_roundoff(precision: str) -> float:
    """The candidate's ``u`` plus float64's: both sides of a comparison round.
    A reduced precision sums and stores in float32."""
    return (
        UNIT_ROUNDOFF["float32" if precision in REDUCED else precision] + UNIT_ROUNDOFF["float64"]
    )


@dataclass(frozen=True)
class Arithmetic:
    """How a candidate computes: ``precision`` (``PRECISIONS``), the unit
    roundoff ``u`` of its sums and stores (with float64's), and what its
    matrix products with the weights do to their inputs."""

    precision: str

    @property
    def u(self) -> float:
        return unit_roundoff(self.precision)

    @property
    def tiny(self) -> float:
        return TINY["float64" if self.precision == "float64" else "float32"]

    def product_input(self, x: np.ndarray) -> np.ndarray | None:
        """How far, per element, ``x`` [..., n_in] may move before a product
        with the weights (None: not at all)."""
        if self.precision == "float16":
            return UNIT_ROUNDOFF["float16"] * np.abs(x) + HALF_SUBNORMAL
        if self.precision == "bfloat16":  # float32's exponent range: no subnormal term
            return UNIT_ROUNDOFF["bfloat16"] * np.abs(x)
        if self.precision != "q8_0":
            return None
        n = x.shape[-1]
        padded = np.zeros((*x.shape[:-1], -(-n // Q8_BLOCK) * Q8_BLOCK))
        padded[..., :n] = np.abs(x)
        blocks = padded.reshape(*x.shape[:-1], -1, Q8_BLOCK)
        step = np.max(blocks, axis=-1, keepdims=True) / 127
        half = 0.5 + 127 * (UNIT_ROUNDOFF["float16"] + 2 * UNIT_ROUNDOFF["float32"])
        return np.broadcast_to(step * half, blocks.shape).reshape(padded.shape)[..., :n]


def both(u: float, each: np.ndarray, n: int | np.ndarray, magnitude: np.ndarray) -> Bound:
    """Rounding that is ``each`` for sure, plus a sum of ``n`` terms of
    total magnitude ``magnitude``: n - 1 roundings in the worst case, a
    scale of sqrt(n - 1)."""
    m = np.maximum(np.asarray(n, np.float64) - 1, 0)
    worst = magnitude * (u * m)
    worst += each
    scale = magnitude * (u * np.sqrt(m))
    scale += each
    return Bound(worst, scale)


def exactly(e: np.ndarray) -> Bound:
    """A rounding that is what it is, in the worst case and at scale."""
    return Bound(e, e)


def known(u: float, x: np.ndarray, e: Error) -> Bound:
    """An input's error: its bound if it was recomputed, else its own
    rounding (a saved value may have been used before it was stored)."""
    return exactly(u * np.abs(x)) if e is None else e


def add(u: float, x: np.ndarray, ex: Error, y: np.ndarray, ey: Error, out: np.ndarray) -> Bound:
    """x + y: one rounding of the result, and both inputs' errors."""
    return exactly(u * np.abs(out)) + known(u, x, ex) + known(u, y, ey)


def embeddings(u: float, out: np.ndarray) -> Bound:
    """wte[ids] + wpe: a sum of two of the model's values (exact), rounded
    once. The bound is tight: a correct float32 sum can reach it."""
    return exactly(u * np.abs(out))


def linear(
    u: float, x: np.ndarray, ex: Error, w: np.ndarray, b: np.ndarray | None, out: np.ndarray,
    reduced: np.ndarray | None = None,
) -> Bound:  # fmt: skip
    """x @ w (+ b), [n, n_in] @ [n_in, n_out]: a sum of n_in products (and
    the bias), each product rounded once, the result stored once; x moved
    by ``reduced`` first, when the candidate reduces its inputs."""
    n_in = w.shape[0]
    products = np.abs(x) @ np.abs(w)  # [n, n_out]: S of each output
    magnitude = products if b is None else products + np.abs(b)
    bound = both(u, u * (magnitude + np.abs(out)), n_in + (b is not None), magnitude)
    if reduced is not None:
        bound += Bound(reduced @ np.abs(w), np.sqrt((reduced * reduced) @ (w * w)))
    if ex is None:  # x known to u |x|: carried, u S at most (in place: the head is large)
        products *= u
        bound.worst += products
        bound.scale += products
        return bound
    return bound + Bound(ex.worst @ np.abs(w), np.sqrt((ex.scale * ex.scale) @ (w * w)))


def product(u: float, a: np.ndarray, ea: Error, b: np.ndarray, eb: Error,
            magnitude: np.ndarray) -> Bound:  # fmt: skip
    """The inputs' errors carried through a @ b (``magnitude``: |a| @ |b|):
    2 u S at most when both are the candidate's own values."""
    if ea is None and eb is None:
        return exactly(2 * u * magnitude)
    ea, eb = known(u, a, ea), known(u, b, eb)
    worst = ea.worst @ np.abs(b) + np.abs(a) @ eb.worst
    squares = (ea.scale**2) @ (b * b) + (a * a) @ (eb.scale**2)
    return Bound(worst, np.sqrt(squares))


def scores(u: float, q: np.ndarray, eq: Error, k: np.ndarray, ek: Error, out: np.ndarray) -> Bound:
    """q k^T / sqrt(head_dim), [n_head, n, head_dim] -> [n_head, n, n]: a
    sum of head_dim products, then the scale (itself rounded)."""
    head_dim = q.shape[-1]
    scale = 1 / math.sqrt(head_dim)
    kt = np.swapaxes(k, -1, -2)
    ekt = None if ek is None else ek.map(lambda a: np.swapaxes(a, -1, -2))
    magnitude = np.abs(q) @ np.abs(kt)
    bound = both(u, u * (scale * magnitude + 2 * np.abs(out)), head_dim, scale * magnitude)
    return bound + product(u, q, eq, kt, ekt, magnitude).map(lambda a: a * scale)


def causal_softmax(u: float, s: np.ndarray, es: Error, p: np.ndarray) -> Bound:
    """Softmax of the causally masked scores, [..., n, n]: row i takes
    exp(s_j - max) of i + 1 scores (each off by ``u |s_j - max|`` from its
    argument and ``FUNCTION u`` from exp), sums them and divides. The
    masked entries are exactly 0, and held to it."""
    n = s.shape[-1]
    visible = np.tri(n, dtype=bool)
    top = np.max(np.where(visible, s, -np.inf), axis=-1, keepdims=True)
    each = np.where(visible, np.abs(s - top) + FUNCTION, 0.0)  # [..., n, n]: exp's error / u
    terms = np.arange(1, n + 1, dtype=np.float64)[:, None]  # row i sums i + 1 values
    fixed = u * p * (each + np.sum(p * each, axis=-1, keepdims=True) + 1)
    bound = both(u, fixed, terms, p)  # the sum's relative error, on each p_i
    es = known(u, s, es).map(lambda a: np.where(visible, a, 0.0))
    worst = p * (es.worst + np.sum(p * es.worst, axis=-1, keepdims=True))
    scale = p * (es.scale + np.sqrt(np.sum((p * es.scale) ** 2, axis=-1, keepdims=True)))
    return bound + Bound(worst, scale)


def weighted_sum(
    u: float, p: np.ndarray, ep: Error, v: np.ndarray, ev: Error, out: np.ndarray
) -> Bound:
    """attn @ v, [n_head, n, n] @ [n_head, n, head_dim]: row i sums i + 1
    products (the rest are 0)."""
    n = p.shape[-1]
    terms = np.arange(1, n + 1, dtype=np.float64)[:, None]
    magnitude = np.abs(p) @ np.abs(v)
    bound = both(u, u * (magnitude + np.abs(out)), terms, magnitude)
    return bound + product(u, p, ep, v, ev, magnitude)


def layer_norm(
    u: float, x: np.ndarray, ex: Error, g: np.ndarray, out: np.ndarray, eps: float = LAYER_NORM_EPS
) -> Bound:
    """Layer norm over the last axis (n_embd): the mean and the variance
    are sums of n_embd terms (the variance's bound is of the mean of x^2,
    so one pass, E[x^2] - mean^2, is covered too), the reciprocal square
    root rounds three times, the scale and the shift once each."""
    n = x.shape[-1]
    mean = np.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(variance + eps)
    normed = centred * rstd

    def local(sums: float) -> np.ndarray:  # sums: how many u S a sum of n_embd may reach
        e_mean = u * (sums + 1) * np.mean(np.abs(x), axis=-1, keepdims=True)
        e_centred = e_mean + u * np.abs(centred)
        e_variance = u * (sums + 2) * np.mean(x * x, axis=-1, keepdims=True) + 2 * np.mean(
            np.abs(centred) * e_centred, axis=-1, keepdims=True
        )
        e_rstd = 0.5 * e_variance / (variance + eps) + 3 * u  # relative
        e = np.abs(g) * rstd * (e_centred + np.abs(centred) * e_rstd)
        return e + u * (2 * np.abs(g * normed) + np.abs(out))

    ex = known(u, x, ex)
    gr = np.abs(g) * rstd
    worst = gr * (
        ex.worst
        + np.mean(ex.worst, axis=-1, keepdims=True)
        + np.abs(normed) * np.mean(np.abs(normed) * ex.worst, axis=-1, keepdims=True)
    )
    spread = np.sqrt(np.mean(ex.scale**2, axis=-1, keepdims=True) / n)
    tilt = np.sqrt(np.mean((normed * ex.scale) ** 2, axis=-1, keepdims=True) / n)
    scale = gr * (ex.scale + spread + np.abs(normed) * tilt)  # fmt: skip
    return Bound(local(n - 1), local(math.sqrt(n - 1))) + Bound(worst, scale)


def gelu(u: float, x: np.ndarray, ex: Error, out: np.ndarray) -> Bound:
    """0.5 x (1 + tanh(z)), z = sqrt(2/pi) (x + 0.044715 x^3): z rounds
    about four times, tanh adds ``FUNCTION u`` of itself and carries z's
    error by its slope 1 - t^2, 1 + t rounds once, the products twice."""
    inner = x + GELU_CUBIC * x * x * x
    t = np.tanh(SQRT_2_OVER_PI * inner)
    slope = 1 - t * t
    e_z = 4 * u * SQRT_2_OVER_PI * (np.abs(x) + GELU_CUBIC * np.abs(x) ** 3)
    e_one_plus_t = slope * e_z + FUNCTION * u * np.abs(t) + u * np.abs(1 + t)
    local = exactly(0.5 * np.abs(x) * e_one_plus_t + 2 * u * np.abs(out))
    derivative = np.abs(
        0.5 * (1 + t) + 0.5 * x * slope * SQRT_2_OVER_PI * (1 + 3 * GELU_CUBIC * x * x)
    )
    return local + known(u, x, ex).map(lambda a: derivative * a)


def log_softmax(logits: np.ndarray, bound: Bound) -> Bound:
    """A bound on logits, carried to their log-softmax (how logits are
    compared): log p_i moves by d_i - sum_j p_j d_j."""
    z = logits - np.max(logits, axis=-1, keepdims=True)
    p = np.exp(z)
    p /= np.sum(p, axis=-1, keepdims=True)
    worst = bound.worst + np.sum(p * bound.worst, axis=-1, keepdims=True)
    scale = bound.scale + np.sqrt(np.sum((p * bound.scale) ** 2, axis=-1, keepdims=True))
    return Bound(worst, scale)


# Which bound each key's operation has, with what it takes beside its
# inputs: (weights, arithmetic, *(input, its error), output) -> Bound. The
# operations themselves are activations.py's table.
def _linear(w: Weights, a: Arithmetic, x: tuple, out: np.ndarray, *path: str) -> Bound:
    weights = w(*path)
    return linear(a.u, *x, weights["w"], weights["b"], out, a.product_input(x[0]))


def _third(w: Weights, a: Arithmetic, x: tuple, i: int, out: np.ndarray) -> Bound:
    weight, bias = third_weights(w, i)
    bound = linear(a.u, *x, weight, bias, merged(out), a.product_input(x[0]))
    return bound.map(lambda b: heads(b, w.n_head))


def _head(w: Weights, a: Arithmetic, x: tuple, out: np.ndarray) -> Bound:
    wte = np.asarray(w.params["wte"], np.float64)
    return linear(a.u, *x, wte.T, None, out, a.product_input(x[0]))


# The keys made by a matrix product with the weights: what a reduced
# precision changes (their bounds take ``Arithmetic.product_input``).
PRODUCTS = ("q", "k", "v", "attn_out", "mlp_pre", "mlp_out", "logits")
BOUNDS: dict[str, Callable[..., Bound]] = {
    "embeddings": lambda w, a, out: embeddings(a.u, out),
    "hidden": lambda w, a, x, y, out: add(a.u, *x, *y, out),
    "ln_1": lambda w, a, x, out: layer_norm(a.u, *x, w("ln_1")["g"], out),
    "q": lambda w, a, x, out: _third(w, a, x, 0, out),
    "k": lambda w, a, x, out: _third(w, a, x, 1, out),
    "v": lambda w, a, x, out: _third(w, a, x, 2, out),
    "attn_scores": lambda w, a, q, k, out: scores(a.u, *q, *k, out),
    "attn": lambda w, a, s, out: causal_softmax(a.u, *s, out),
    "attn_heads": lambda w, a, p, v, out: weighted_sum(a.u, *p, *v, heads(out, w.n_head)).map(
        merged
    ),
    "attn_out": lambda w, a, x, out: _linear(w, a, x, out, "attn", "c_proj"),
    "resid_attn": lambda w, a, x, y, out: add(a.u, *x, *y, out),
    "ln_2": lambda w, a, x, out: layer_norm(a.u, *x, w("ln_2")["g"], out),
    "mlp_pre": lambda w, a, x, out: _linear(w, a, x, out, "mlp", "c_fc"),
    "mlp_hidden": lambda w, a, x, out: gelu(a.u, *x, out),
    "mlp_out": lambda w, a, x, out: _linear(w, a, x, out, "mlp", "c_proj"),
    "ln_f": lambda w, a, x, out: layer_norm(a.u, *x, w("ln_f")["g"], out),
    "logits": _head,
}


def bound_of(key: str, layer: int | None) -> Callable[..., Bound]:
    """The bound of the operation making (key, layer): hidden[0] is the embeddings."""
    return BOUNDS["embeddings" if key == "hidden" and layer == 0 else key]
