"""CRC-32C over a buffer the size of GPT-2 124M's shard (497,759,232 bytes):
our vectorised NumPy CRC-32C against zlib's CRC-32 in C (another polynomial,
the same amount of work) as the reference, side by side, median of --repeats.

    python benchmarks/bench_crc32c.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from picogpt2.util.crc32c import crc32c  # noqa: E402

SHARD_124M = 497_759_232


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=SHARD_124M)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = np.random.default_rng(0).integers(0, 256, args.bytes, dtype=np.uint8)
    rivals = {"picogpt2 crc32c (NumPy)": crc32c, "zlib.crc32 (C, CRC-32)": zlib.crc32}
    results = {}
    for label, fn in rivals.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn(data)
            times.append(time.perf_counter() - start)
        results[label] = statistics.median(times)
    ref = results["zlib.crc32 (C, CRC-32)"]
    print(f"{'implementation':26} {'MB':>6} {'median s':>9} {'MB/s':>7} {'vs zlib':>8}")
    for label, seconds in results.items():
        print(
            f"{label:26} {args.bytes / 1e6:6.0f} {seconds:9.2f} "
            f"{args.bytes / seconds / 1e6:7.0f} {seconds / ref:7.2f}x"
        )


if __name__ == "__main__":
    main()
