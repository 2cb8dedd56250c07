"""How far an honest float32 GPT-2 lands from our float64 reference: the
figures behind compare's float32 tolerance (2e-5 of each tensor's largest
magnitude, per layer).

    python benchmarks/calibrate_float32.py [--size 124M] [--tokens 10,64] [--layers 12]

Three float32 forward passes are measured against our float64 pass, over
random weights with the size's real shapes (the error depends on the shapes
and the magnitudes, not on trained values):

- ``ours``: picogpt2's float32 pass (NumPy's BLAS sums in blocks and pairs);
- ``naive``: the same math with every sum taken left to right in float32,
  as the simplest C loop does (matrix products, layer norm means, softmax
  sums, attention);
- ``naive64``: the same loops accumulating in float64, rounding
  each result to float32 once.

The table gives, per key, the largest relative error over the layers
(max |d| / max |reference|, as compare measures it) and its margin to the
tolerance.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tiny import tiny_tensors  # noqa: E402

from picogpt2 import gpt2  # noqa: E402
from picogpt2.activations import BLOCK, RTOL32, forward_order  # noqa: E402
from picogpt2.gpt2 import log_softmax  # noqa: E402
from picogpt2.hparams import SIZES  # noqa: E402
from picogpt2.oracle.comparison import measure  # noqa: E402
from picogpt2.oracle.isolation import Isolation  # noqa: E402
from picogpt2.state import Trace  # noqa: E402
from picogpt2.weights.params import map_params, params_from_tensors  # noqa: E402

KEYS = ["hidden", *(k.name for k in BLOCK), "ln_f", "logits"]


def sequential_sum(products: np.ndarray, axis: int, accumulate: np.dtype) -> np.ndarray:
    """Sum along ``axis`` left to right in ``accumulate``, rounded to float32."""
    return np.cumsum(products, axis=axis, dtype=accumulate).take(-1, axis=axis).astype(np.float32)


class Naive:
    """gpt2.py's reductions, redone as plain loops would do them: every sum
    left to right, accumulated in ``accumulate``."""

    def __init__(self, accumulate: np.dtype) -> None:
        self.accumulate = accumulate

    def functions(self) -> dict[str, Callable]:
        names = ("matmul", "layer_norm", "softmax", "attention_scores", "attention", "lm_head")
        return {name: getattr(self, name) for name in names}

    def sum(self, products: np.ndarray, axis: int) -> np.ndarray:
        return sequential_sum(products, axis, self.accumulate)

    def matmul(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        n_batch, n_seq, n_in = x.shape
        rows = x.reshape(-1, n_in)
        return np.stack([self.sum(row[:, None] * w, 0) for row in rows]).reshape(n_batch, n_seq, -1)

    def mean(self, x: np.ndarray) -> np.ndarray:
        return self.sum(x, -1)[..., None] / np.float32(x.shape[-1])

    def layer_norm(self, x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5):
        centred = x - self.mean(x)
        return g * centred / np.sqrt(self.mean(centred * centred) + np.float32(eps)) + b

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

        return self.per_head(one, q, k) / np.float32(math.sqrt(q.shape[-1]))

    def attention(self, q, k, v, trace=gpt2.NO_TRACE):
        scores = self.attention_scores(q, k)
        probs = gpt2.causal_softmax(scores)
        trace.record(attn_scores=scores, attn=probs)

        def one(p_, v_):  # [n_seq, n_kv], [n_kv, head_dim]
            return self.sum(p_[:, :, None] * v_[None, :, :], 1)

        return self.per_head(one, probs, v)

    def lm_head(self, x: np.ndarray, wte: np.ndarray) -> np.ndarray:
        return self.matmul(x, wte.T)


def run(params, n_head: int, ids: np.ndarray, patch: dict[str, Callable]) -> dict:
    """Every key of one forward pass, with gpt2.py's functions ``patch``ed."""
    saved = {name: getattr(gpt2, name) for name in patch}
    for name, fn in patch.items():
        setattr(gpt2, name, fn)
    try:
        trace = Trace()
        logits = gpt2.gpt2(ids[None], **params, n_head=n_head, trace=trace)
    finally:
        for name, fn in saved.items():
            setattr(gpt2, name, fn)
    out = {"logits": logits[0], "ln_f": trace.arrays["ln_f"][0]}
    out["hidden"] = np.stack([trace.arrays["embeddings"][0]]
                             + [t.arrays["hidden"][0] for t in trace.layers])  # fmt: skip
    for key in KEYS[1:-2]:
        out[key] = np.stack([t.arrays[key][0] for t in trace.layers])
    return out


def worst(candidate: np.ndarray, reference: np.ndarray, key: str) -> float:
    """compare's measure, per layer, the worst layer (logits as log-softmax)."""
    if key == "logits":
        candidate, reference = (z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1,
                                keepdims=True)) - z.max(-1, keepdims=True)
                                for z in (candidate.astype(np.float64), reference))  # fmt: skip
    if key in ("logits", "ln_f"):
        candidate, reference = candidate[None], reference[None]
    pairs = zip(candidate, reference, strict=True)
    errors = [np.max(np.abs(c - r)) / np.max(np.abs(r)) for c, r in pairs]
    return float(max(errors))


def alone(params, n_head: int, result: dict[str, np.ndarray], ids: np.ndarray) -> dict:
    """Each key's error against its operation recomputed in float64 from the
    pass's own inputs (compare --model's isolation), the worst layer."""
    n_layer = len(params["blocks"])
    layers = {k: ({None: v} if k in ("ln_f", "logits") else dict(enumerate(v)))
              for k, v in result.items()}  # fmt: skip
    isolation = Isolation(params, n_head, layers, ids)
    errors: dict[str, float] = {}
    for key, layer in forward_order(n_layer):
        if key == "ids":
            continue
        expected, _ = isolation.isolated(key, layer)
        how = {"transform": log_softmax} if key == "logits" else {}
        if key == "attn_scores":
            how = {"mask": np.tril(np.ones(expected.shape[-2:], bool))}
        worst_abs, scale, _ = measure(expected, layers[key][layer], **how)
        errors[key] = max(errors.get(key, 0.0), worst_abs / scale)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="124M")
    parser.add_argument("--tokens", default="10,64", help="prompt lengths, comma-separated")
    parser.add_argument("--layers", type=int, default=None, help="fewer blocks, to go faster")
    parser.add_argument(
        "--variants", default="ours,naive,naive64", help="which passes to measure, comma-separated"
    )
    args = parser.parse_args()
    h = SIZES[args.size]
    if args.layers:
        h = type(h)(**{**h.as_dict(), "n_layer": args.layers})
    tensors = tiny_tensors(h.as_dict(), seed=0, scale=0.02)
    params64 = map_params(params_from_tensors(tensors, h), lambda a: a.astype(np.float64))
    params32 = map_params(params_from_tensors(tensors, h), lambda a: a.astype(np.float32))
    variants = {"ours": {}, "naive": Naive(np.dtype(np.float32)).functions(),
                "naive64": Naive(np.dtype(np.float64)).functions()}  # fmt: skip
    variants = {name: variants[name] for name in args.variants.split(",")}
    rng = np.random.default_rng(1)
    print(f"{args.size} shapes ({h.n_layer} blocks), random weights; relative error against our "
          f"float64 pass, the worst layer; tolerance {RTOL32:g}")  # fmt: skip
    for n in (int(t) for t in args.tokens.split(",")):
        ids = rng.integers(0, h.n_vocab, n)
        reference = run(params64, h.n_head, ids, {})
        results = {name: run(params32, h.n_head, ids, patch) for name, patch in variants.items()}
        print(f"\n{n} tokens")
        print(f"{'key':12}" + "".join(f"{name:>22}" for name in variants))
        for key in KEYS:
            cells = [worst(results[name][key], reference[key], key) for name in variants]
            print(f"{key:12}" + "".join(f"{e:12.2e} ({RTOL32 / e:5.1f}x)" for e in cells))
        print(f"\n{n} tokens, each operation alone (recomputed from the pass's own inputs)")
        print(f"{'key':12}" + "".join(f"{name:>22}" for name in variants))
        alones = {name: alone(params32, h.n_head, results[name], ids) for name in variants}
        for key in KEYS:
            print(f"{key:12}" + "".join(f"{alones[name][key]:22.2e}" for name in variants))


if __name__ == "__main__":
    main()
