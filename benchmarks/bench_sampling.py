"""Choosing one token: ``sampling.sample`` against the rules applied
literally (``by_the_rules`` in tests/test_sampling.py: every logit
converted, all 50,257 sorted), both on the same logits in the same run.

    python benchmarks/bench_sampling.py [--repeats 7] [--n-vocab 50257]

Logits as float32 from a normal distribution (sd 3, no ties) and the same
rounded to quarters (thousands of ties); each setting alternates the two
implementations, the table shows the median time of a call of each and the
median of their per-round ratios. The two draw the same tokens (tested).
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
sys.path.insert(0, str(ROOT / "tests"))

from test_sampling import by_the_rules  # noqa: E402

from picogpt2.sampling import SplitMix64, sample  # noqa: E402

SETTINGS = {
    "top-k 40": {"top_k": 40},
    "top-k 40, top-p 0.9": {"top_k": 40, "top_p": 0.9},
    "top-p 0.9": {"top_p": 0.9},
    "temperature 0.8": {"temperature": 0.8},
    "top-k 50, penalty 1.2": {"top_k": 50, "penalty": 1.2},
}


def seconds_per_call(choose, logits: np.ndarray, settings: dict, calls: int) -> float:
    rng = SplitMix64(1)
    start = time.perf_counter()
    for _ in range(calls):
        choose(logits, rng, **settings)
    return (time.perf_counter() - start) / calls


def ours(logits, rng, penalty=None, **settings):
    return sample(logits, rng, repetition_penalty=penalty, **settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--n-vocab", type=int, default=50257)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    values = rng.standard_normal(args.n_vocab) * 3
    kinds = {"distinct": values, "quarters": np.round(values * 4) / 4}
    seen = rng.random(args.n_vocab) < 0.002  # about 100 ids: a prompt and its continuation
    print(f"one call on {args.n_vocab} float32 logits; medians of {args.repeats} rounds")
    print(f"{'setting':22} {'logits':9} {'by the rules':>13} {'sample':>9} {'speed-up':>9}")
    for label, settings in SETTINGS.items():
        if "penalty" in settings:
            settings = {**settings, "seen": seen}
        for kind, z in kinds.items():
            logits = z.astype(np.float32)
            rules, fast = [], []
            for _ in range(args.repeats):
                rules.append(seconds_per_call(by_the_rules, logits, settings, 5))
                fast.append(seconds_per_call(ours, logits, settings, 50))
            ratio = statistics.median(r / f for r, f in zip(rules, fast, strict=True))
            print(
                f"{label:22} {kind:9} {statistics.median(rules) * 1e3:10.3f} ms "
                f"{statistics.median(fast) * 1e3:6.3f} ms {ratio:8.1f}x"
            )


if __name__ == "__main__":
    main()
