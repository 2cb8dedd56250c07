"""Where one decode step's time goes, two ways.

    python benchmarks/profile_decode.py [--size 124M] [--layers N --width W] [--past 48]

Random weights with the size's shapes (or a custom one), float32, batch 1,
``--past`` positions already cached; medians of ``--repeats`` rounds.

1. Inside real steps: ``gpt2.gpt2`` on one new id with the cache (the
   reference, and what generating ran per token before #31) and
   ``DecodeStep`` (what it runs now, fastpath/decode_step.py), each step
   timed whole and each of its weight products timed where it runs; the
   rest is everything else a step does (the two alternate within a round).
2. Piece by piece: each piece of the reference's step (the matrix products,
   the biases, the layer norms, GELU, the attention over the cache, the
   head, sampling, ...) on arrays of the step's real shapes, repeated
   until its time is steady, times how often a step does it; beside the
   step itself (``gpt2`` plus the finite check and the greedy choice).
   A piece repeated runs with the caches warm; inside a step, each product
   streams megabytes of weights through them, so what the pieces do not
   explain is mostly the same calls run cold.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_model import block_linears  # noqa: E402
from tiny import tiny_tensors  # noqa: E402

from picogpt2 import gpt2  # noqa: E402
from picogpt2.fastpath import decode_step  # noqa: E402
from picogpt2.hparams import SIZES, HParams  # noqa: E402
from picogpt2.sampling import SplitMix64, sample  # noqa: E402
from picogpt2.state import KVCache  # noqa: E402
from picogpt2.weights.layout import stream_layout  # noqa: E402
from picogpt2.weights.params import map_params, params_from_tensors  # noqa: E402


def per_call(fn: Callable[[], object], seconds: float = 0.2) -> float:
    """Seconds per call of ``fn``, repeated for about ``seconds``."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def new_cache(h: HParams, past: int) -> KVCache:
    """One block's cache holding ``past`` positions (zeros)."""
    cache = KVCache(1, h.n_head, past + 64, h.head_dim, like=np.zeros(1, np.float32))
    zeros = np.zeros((1, h.n_head, past, h.head_dim), np.float32)
    cache.extend(zeros, zeros)
    return cache


def pieces(params: dict, h: HParams, past: int) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (one call on the step's shapes, calls per step)."""
    rng = np.random.default_rng(0)
    e, L = h.n_embd, h.n_layer
    block = params["blocks"][0]
    x = rng.standard_normal((1, 1, e)).astype(np.float32)
    x4 = rng.standard_normal((1, 1, 4 * e)).astype(np.float32)
    # Every block's: the weights stream from memory, as in a step.
    matrices = [(linear, x4 if linear["w"].shape[0] == 4 * e else x)
                for linear in block_linears(params)]  # fmt: skip
    cache = new_cache(h, past)
    cache.k[:, :, past] = cache.v[:, :, past] = 0  # the new position's slot, read below
    q = rng.standard_normal((1, h.n_head, 1, h.head_dim)).astype(np.float32)
    k, v = cache.k[:, :, : past + 1], cache.v[:, :, : past + 1]
    qkv = rng.standard_normal((1, 1, 3 * e)).astype(np.float32)
    heads = rng.standard_normal((1, h.n_head, 1, h.head_dim)).astype(np.float32)
    scores = gpt2.attention_scores(q, k)
    probs = gpt2.causal_softmax(scores)
    ids, wpe = np.array([[5]]), params["wpe"][past : past + 1]
    logits = rng.standard_normal(h.n_vocab).astype(np.float32)
    wte, ln = params["wte"], block["ln_1"]

    def matmuls() -> None:
        for p, inp in matrices:
            gpt2.matmul(inp, p["w"])

    outputs = [(gpt2.matmul(inp, p["w"]), p["b"]) for p, inp in matrices]

    def biases() -> None:
        for y, b in outputs:
            y + b

    def extend() -> None:
        cache.length = past
        cache.extend(q, q)

    def split() -> None:
        list(gpt2.split_heads(t, h.n_head) for t in np.split(qkv, 3, axis=-1))

    return {
        "matrix products (4 per block)": (matmuls, 1),
        "the head, x @ wte.T": (lambda: gpt2.lm_head(x, wte), 1),
        "the biases": (biases, 1),
        "layer norms": (lambda: gpt2.layer_norm(x, **ln), 2 * L + 1),
        "GELU": (lambda: gpt2.gelu(x4), L),
        "split q, k, v into heads": (split, L),
        "KV cache extend": (extend, L),
        "attention scores": (lambda: gpt2.attention_scores(q, k), L),
        "causal softmax": (lambda: gpt2.causal_softmax(scores), L),
        "probs @ v": (lambda: probs @ v, L),
        "merge heads": (lambda: gpt2.merge_heads(heads), L),
        "residual adds": (lambda: x + x, 2 * L),
        "embeddings wte[ids] + wpe": (lambda: wte[ids] + wpe, 1),
        "finite check of the logits": (lambda: np.all(np.isfinite(logits)), 1),
        "greedy choice": (lambda: sample(logits, SplitMix64(0)), 1),
    }  # fmt: skip


class _Timed:
    """A function (or ufunc, with its ``reduce``) that adds its time and
    its calls to ``clock[kind]``; a product is a weight product when its
    second operand is 2-D, an attention product otherwise (4-D)."""

    def __init__(self, fn: Callable, name: str, clock: dict[str, list[int]]) -> None:
        self.fn, self.name, self.clock = fn, name, clock
        if hasattr(fn, "reduce"):
            self.reduce = _Timed(fn.reduce, f"{name}.reduce", clock)

    def __call__(self, *args: object, **kwargs: object) -> object:
        kind = self.name
        if kind == "matmul":
            kind = "weight products" if args[1].ndim == 2 else "attention products"
        start = time.perf_counter_ns()
        out = self.fn(*args, **kwargs)
        entry = self.clock.setdefault(kind, [0, 0])
        entry[0] += time.perf_counter_ns() - start
        entry[1] += 1
        return out


N_STEPS = 32  # steps timed per round, inside real steps


@contextmanager
def clocked(kinds: tuple[str, ...]) -> Iterator[dict[str, list[int]]]:
    """Times ``gpt2.matmul`` (the reference's products) and the NumPy
    functions ``kinds`` as ``decode_step`` sees them (its ``np`` replaced by
    a namespace of NumPy's names, those timed) into the clock it yields:
    kind -> [ns, calls]. Both are put back on the way out."""
    clock: dict[str, list[int]] = {}
    names = {k: getattr(np, k) for k in dir(np) if not k.startswith("__")}
    timed_np = types.SimpleNamespace(**{**names, **{k: _Timed(names[k], k, clock) for k in kinds}})
    saved = gpt2.matmul, decode_step.np
    gpt2.matmul, decode_step.np = _Timed(gpt2.matmul, "matmul", clock), timed_np
    try:
        yield clock
    finally:
        gpt2.matmul, decode_step.np = saved


def run_steps(step: Callable, h: HParams, past: int, clock: dict[str, list[int]]) -> float:
    """ms per step over ``N_STEPS`` steps after ``past`` cached positions,
    the clock counting them alone."""
    cache = [new_cache(h, past - 1) for _ in range(h.n_layer)]
    step(np.array([[5]]), cache)  # once, so that each round starts warm
    clock.clear()
    start = time.perf_counter_ns()
    for i in range(N_STEPS):
        step(np.array([[i]]), cache)
    return (time.perf_counter_ns() - start) / N_STEPS / 1e6


def inside_steps(params: dict, h: HParams, past: int, repeats: int) -> dict[str, dict[str, float]]:
    """ms per step for the reference's step and the decoder's: the whole
    step, its weight products, and the rest; medians over rounds."""
    steps = {
        "gpt2 (the reference)": lambda ids, cache: gpt2.gpt2(
            ids, **params, n_head=h.n_head, cache=cache, last_only=True),
        "DecodeStep (generating)": decode_step.DecodeStep(params, h.n_head),
    }  # fmt: skip
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    with clocked(("matmul",)) as clock:
        for _ in range(repeats):
            for name, step in steps.items():
                total = run_steps(step, h, past, clock)
                products = clock["weight products"][0] / N_STEPS / 1e6
                rounds[name].append((total, products))
    out = {}
    for name, values in rounds.items():
        whole = statistics.median(t for t, _ in values)
        products = statistics.median(p for _, p in values)
        rest = statistics.median(t - p for t, p in values)
        out[name] = {"step": whole, "products": products, "rest": rest}
    return out


def decoder_by_call(params: dict, h: HParams, past: int, repeats: int) -> dict[str, list[float]]:
    """``DecodeStep`` inside real steps, by the NumPy function it calls:
    kind -> [ms per step, calls per step], medians over rounds; "the rest"
    is what no NumPy function took (the cache's extend, the arrays'
    methods, the Python between). The timers add about half a microsecond
    to each call."""
    used = ("add", "subtract", "multiply", "divide", "sqrt", "tanh", "exp", "matmul")
    step = decode_step.DecodeStep(params, h.n_head)
    rounds: list[dict[str, list[float]]] = []
    with clocked(used) as clock:
        for _ in range(repeats):
            total = run_steps(step, h, past, clock)
            kinds = {k: [ns / N_STEPS / 1e6, calls / N_STEPS] for k, (ns, calls) in clock.items()}
            kinds["the rest"] = [total - sum(ms for ms, _ in kinds.values()), 0]
            kinds["one step"] = [total, 0]
            rounds.append(kinds)
    out = {k: [statistics.median(r[k][0] for r in rounds), rounds[0][k][1]] for k in rounds[0]}
    return dict(sorted(out.items(), key=lambda kv: -kv[1][0]))


def report_inside(params: dict, h: HParams, past: int, repeats: int) -> None:
    """The two tables measured inside real steps."""
    inside = inside_steps(params, h, past, repeats)
    print(f"\n{'inside real steps':28} {'step':>8} {'products':>9} {'the rest':>9} {'of step':>8}")
    for name, m in inside.items():
        print(f"{name:28} {m['step']:8.3f} {m['products']:9.3f} {m['rest']:9.3f} "
              f"{m['rest'] / m['step']:8.1%}")  # fmt: skip
    by_call = decoder_by_call(params, h, past, repeats)
    step_ms = by_call.pop("one step")[0]
    print(f"\n{'DecodeStep inside real steps':28} {'ms':>8} {'calls':>9} {'of step':>8}")
    for kind, (ms, calls) in by_call.items():
        print(f"{kind:28} {ms:8.3f} {calls:9.0f} {ms / step_ms:8.1%}")
    print(f"{'one step (timers included)':28} {step_ms:8.3f}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="124M")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--past", type=int, default=48, help="positions already cached")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    h = SIZES[args.size]
    if args.layers or args.width:
        width = args.width or h.n_embd
        h = HParams(n_vocab=h.n_vocab, n_ctx=h.n_ctx, n_embd=width, n_head=width // 64,
                    n_layer=args.layers or h.n_layer)  # fmt: skip
    params = map_params(params_from_tensors(tiny_tensors(h.as_dict(), seed=0, scale=0.02), h),
                        lambda a: np.ascontiguousarray(a, np.float32))  # fmt: skip
    params = stream_layout(params)  # as generating holds them
    print(
        f"{h.n_layer} blocks, n_embd {h.n_embd}, {h.n_head} heads, vocabulary {h.n_vocab}; "
        f"{args.past} positions cached; medians of {args.repeats} rounds, ms per step"
    )
    report_inside(params, h, args.past, args.repeats)
    parts = pieces(params, h, args.past)
    rng = SplitMix64(0)

    caches = [new_cache(h, args.past) for _ in range(h.n_layer)]

    def step() -> None:
        for c in caches:
            c.length = args.past
        logits = gpt2.gpt2(np.array([[5]]), **params, n_head=h.n_head, cache=caches,
                           last_only=True)[0, 0]  # fmt: skip
        np.all(np.isfinite(logits))
        sample(logits, rng)

    rounds: dict[str, list[float]] = {name: [] for name in ["one decode step", *parts]}
    for _ in range(args.repeats):
        rounds["one decode step"].append(per_call(step, 1.0))
        for name, (fn, count) in parts.items():
            rounds[name].append(per_call(fn) * count)
    medians = {name: statistics.median(times) * 1e3 for name, times in rounds.items()}
    total = medians.pop("one decode step")
    floor = medians["matrix products (4 per block)"] + medians["the head, x @ wte.T"]
    print(f"{'the reference, piece by piece':32} {'ms':>8} {'of step':>8}")
    for name, ms in medians.items():
        print(f"{name:32} {ms:8.3f} {ms / total:8.1%}")
    rest = total - sum(medians.values())
    print(f"{'unexplained (the calls run cold)':32} {rest:8.3f} {rest / total:8.1%}")
    print(f"{'one decode step':32} {total:8.3f} {1:8.1%}")
    print(
        f"the matrix products alone: {floor:.3f} ms, {floor / total:.0%} of the step "
        f"({1e3 / total:.1f} tok/s against {1e3 / floor:.1f})"
    )


if __name__ == "__main__":
    main()
