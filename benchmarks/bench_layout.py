"""The weights' layout: how fast this BLAS streams each of GPT-2's
matrices as the checkpoint stores it and contiguous along its longer side
(``wte`` and every ``mlp/c_proj`` transposed, the others as stored), and
what a copy into that layout costs.

    python benchmarks/bench_layout.py [--size 124M] [--rows 1,16] [--repeats 7]

For each kind of matrix (every block's are alike), ``rows`` rows times the
matrix as a product reads it (``x @ w``; the head ``x @ wte.T``), in both
layouts, over copies of it that together exceed the last-level cache (so
every product streams from memory, as in a decode step); GB/s of matrix
read, medians of interleaved rounds. Then a whole step's products both
ways (what "matmuls only" in bench_model.py measures, each block's
matrices distinct), and the copies the layout needs (here from memory; a
new process also faults in the file's pages and fresh memory). Random
values (speed does not depend on them), float32. Generating holds them so
(picogpt2/weights/layout.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from picogpt2.hparams import SIZES  # noqa: E402
from picogpt2.weights.layout import longer_side_contiguous  # noqa: E402

STREAMED_BYTES = 160e6  # more than any last-level cache here


def kinds(size: str) -> dict[str, tuple[int, int]]:
    """A kind of matrix -> its shape as the product reads it, [in, out]."""
    h = SIZES[size]
    e = h.n_embd
    return {"c_attn": (e, 3 * e), "attn/c_proj": (e, e), "mlp/c_fc": (e, 4 * e),
            "mlp/c_proj": (4 * e, e), "head (wte.T)": (e, h.n_vocab)}  # fmt: skip


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def products(rows: int, matrices: list[np.ndarray]):
    """One call: ``rows`` rows times each of ``matrices`` in turn."""
    inputs = {n: np.ones((rows, n), np.float32) for n in {w.shape[0] for w in matrices}}

    def run() -> None:
        for w in matrices:
            inputs[w.shape[0]] @ w

    return run


def compare(runs: dict[str, object], repeats: int) -> tuple[dict[str, float], float]:
    """Median seconds of each run over interleaved rounds, and the median
    over rounds of the first's time over the second's."""
    for run in runs.values():
        run()  # warm up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            times[k].append(seconds(run))
    first, second = times.values()
    return ({k: statistics.median(t) for k, t in times.items()},
            statistics.median(a / b for a, b in zip(first, second, strict=True)))  # fmt: skip


Pools = dict[str, tuple[list[np.ndarray], list[np.ndarray]]]


def per_matrix(size: str, rows: list[int], repeats: int) -> Pools:
    """The table by matrix; returns each kind's copies, as stored and laid out."""
    rng = np.random.default_rng(0)
    print(f"{'matrix [in, out]':26} {'rows':>4} {'as stored':>10} {'longer side':>12} "
          f"{'ratio':>6}  layout")  # fmt: skip
    pools: Pools = {}
    for name, (n_in, n_out) in kinds(size).items():
        if name.startswith("head"):  # wte [n_vocab, n_embd] as stored; the product reads wte.T
            as_read = rng.standard_normal((n_out, n_in), np.float32).T
        else:
            as_read = rng.standard_normal((n_in, n_out), np.float32)
        copies = max(1, int(STREAMED_BYTES // as_read.nbytes))
        stored = [as_read.copy(order="K") for _ in range(copies)]
        laid = [longer_side_contiguous(w) for w in stored]
        pools[name] = stored, laid
        held = "as stored" if laid[0] is stored[0] else "transposed"  # what the layout does
        for r in rows:
            mean, ratio = compare({"as stored": products(r, stored),
                                   "longer side": products(r, laid)}, repeats)  # fmt: skip
            rate = {k: as_read.nbytes * copies / t / 1e9 for k, t in mean.items()}
            print(f"{name + f' [{n_in}, {n_out}]':26} {r:4} {rate['as stored']:10.1f} "
                  f"{rate['longer side']:12.1f} {ratio:5.2f}x  {held}")  # fmt: skip
    return pools


def per_step(pools: Pools, n_layer: int, rows: list[int], repeats: int) -> None:
    """A step's products in a step's order, each block's matrices another
    copy (cycling through each kind's), the head last."""
    step: list[list[np.ndarray]] = [[], []]
    for b in range(n_layer):
        for name in list(pools)[:-1]:
            for i, pool in enumerate(pools[name]):
                step[i].append(pool[b % len(pool)])
    for i, pool in enumerate(pools["head (wte.T)"]):
        step[i].append(pool[0])
    for r in rows:
        mean, ratio = compare({"as stored": products(r, step[0]),
                               "longer side": products(r, step[1])}, repeats)  # fmt: skip
        print(
            f"one step's products, {r} row{'s' if r > 1 else ''}: as stored "
            f"{mean['as stored'] * 1e3:.1f} ms, longer side {mean['longer side'] * 1e3:.1f} ms "
            f"({ratio:.2f}x faster)"
        )


def copy_cost(pools: Pools, n_layer: int) -> None:
    """The copies the layout needs (``wte`` once, ``mlp/c_proj`` per block), timed."""
    moved = {name: stored[0] for name, (stored, laid) in pools.items() if laid[0] is not stored[0]}
    sources = [w.copy(order="K") for name, w in moved.items()
               for _ in range(1 if name.startswith("head") else n_layer)]  # fmt: skip
    start = time.perf_counter()
    for w in sources:
        longer_side_contiguous(w)
    total, took = sum(w.nbytes for w in sources), time.perf_counter() - start
    print(
        f"the copies the layout needs: {total / 1e6:.0f} MB made in {took:.2f} s "
        f"({total / took / 1e9:.1f} GB/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="124M", choices=list(SIZES))
    parser.add_argument("--rows", default="1,16", help="rows per product, comma-separated")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    n_layer = SIZES[args.size].n_layer
    print(f"{args.size}, float32; GB/s of matrix streamed, medians of {args.repeats} rounds")
    pools = per_matrix(args.size, rows, args.repeats)
    print()
    per_step(pools, n_layer, rows, args.repeats)
    copy_cost(pools, n_layer)


if __name__ == "__main__":
    main()
