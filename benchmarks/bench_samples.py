"""Several samples at once: decode tokens/s for 1, 2, 4, 8 and 16 samples of
one prompt, decoded as one batch, against one sample, and against the
"matmuls only" floor with as many rows.

    python benchmarks/bench_samples.py [--size 124M] [--repeats 5] [--top-k 40]
                                       [--top-p P] [--temperature T]

Random weights with the real shapes (speed does not depend on the values),
float32. A sample decodes 32 tokens after a 16-token prompt, timed as
T(33) - T(1) so the prompt is not counted; tokens/s counts every sample's
tokens. Sampling is top-k 40 by default (OpenAI's suggestion for GPT-2;
``--top-k 0`` turns it off, for ``--top-p`` or ``--temperature`` alone),
each sample with its own seed, and no sample stops early. All batch sizes run round
after round in one process (this machine is shared and noisy); the table
shows medians.

"matmuls only" runs just the matrix products of one decode step with n
rows (every weight matrix, then the head): the least time any NumPy
implementation of the step could take on this BLAS. Its ratio column is the
most that batching can give here. "of floor" is the median over rounds of
the decode rate's share of the floor's rate in the same round. Both run on
the weights as generating holds them (picogpt2/weights/layout.py); "as
stored" decodes from them as the checkpoint lays them out, and "gain" is
the median over rounds of the ratio: what that layout gains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_model import MatmulsOnly, as_stored, random_model  # noqa: E402

PROMPT, N_DECODE = 16, 32
BATCHES = (1, 2, 4, 8, 16)


def ours_rate(model, n_samples: int, sampling: dict) -> float:
    """Decode tokens/s of all samples together."""
    prompt = list(range(PROMPT))

    def run(n_tokens: int) -> float:
        start = time.perf_counter()
        model.generate_many(prompt, n_tokens, n_samples, seed=1, ignore_eot=True, **sampling)
        return time.perf_counter() - start

    first = run(1)
    return n_samples * N_DECODE / (run(N_DECODE + 1) - first)


def floor_rate(model, n_samples: int) -> float:
    """Tokens/s if a decode step were its matrix products alone (on the
    weights as generating holds them)."""
    matmuls = MatmulsOnly(model)
    matmuls.products(n_samples, n_samples)  # the inputs made before the clock starts
    start = time.perf_counter()
    for _ in range(N_DECODE):
        matmuls.products(n_samples, n_samples)
    return n_samples * N_DECODE / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="124M")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--top-k", type=int, default=40, help="0: no top-k (default 40)")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--temperature", type=float)
    args = parser.parse_args()
    sampling = {"top_k": args.top_k or None, "top_p": args.top_p, "temperature": args.temperature}
    if not any(sampling.values()):
        parser.error("give a sampling setting: this benchmark samples")
    described = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in sampling.items() if v)

    import picogpt2

    name = random_model(args.models_dir, args.size)
    model = picogpt2.load_model(name, args.models_dir, download=False)
    stored = as_stored(picogpt2.load_model(name, args.models_dir, download=False))
    for m in (model, stored):
        m.generate_many(list(range(PROMPT)), 4, 8, seed=1, **sampling)  # warm up
    ours: dict[int, list[float]] = {n: [] for n in BATCHES}
    before: dict[int, list[float]] = {n: [] for n in BATCHES}
    floor: dict[int, list[float]] = {n: [] for n in BATCHES}
    for _ in range(args.repeats):
        for n in BATCHES:
            ours[n].append(ours_rate(model, n, sampling))
            before[n].append(ours_rate(stored, n, sampling))
            floor[n].append(floor_rate(model, n))
    print(
        f"{args.size}, float32, {described}; {N_DECODE} tokens per sample after "
        f"{PROMPT}; medians of {args.repeats} interleaved rounds"
    )
    print(
        f"{'samples':>7} {'tok/s':>8} {'vs 1':>6} {'floor tok/s':>12} {'vs 1':>6} {'of floor':>9} "
        f"{'as stored':>10} {'gain':>6}"
    )
    base, floor_base = statistics.median(ours[1]), statistics.median(floor[1])
    for n in BATCHES:
        rate, best = statistics.median(ours[n]), statistics.median(floor[n])
        share = statistics.median(r / f for r, f in zip(ours[n], floor[n], strict=True))
        gain = statistics.median(r / b for r, b in zip(ours[n], before[n], strict=True))
        print(
            f"{n:7} {rate:8.1f} {rate / base:5.2f}x {best:12.1f} {best / floor_base:5.2f}x "
            f"{share:8.0%} {statistics.median(before[n]):10.1f} {gain:5.2f}x"
        )


if __name__ == "__main__":
    main()
