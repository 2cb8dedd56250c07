"""compare's time and peak memory on large dumps: it reads them a layer at a
time from memory-mapped files, so its memory should stay far below the
size of the two files together.

    python benchmarks/bench_compare.py [--size 124M] [--tokens 1024] [--layers 12]

Makes a model of the size's shapes with random weights, a float64
``--detail`` dump of ``--tokens`` positions as the reference and a float32
one as the candidate, then runs ``compare`` (and ``compare --model``) in
fresh processes, reporting wall time and peak resident memory (VmHWM) of
each, beside the dumps' sizes on disk.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import random_model  # noqa: E402

PEAK = """
import runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("picogpt2.compare", run_name="__main__")
except SystemExit:
    pass
status = open("/proc/self/status").read()
print("VmHWM", int(status.split("VmHWM:")[1].split()[0]), file=sys.stderr)
"""


def timed(argv: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of ``python -m picogpt2.compare ARGV``."""
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PEAK.format(argv=["compare", *argv])],
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    seconds = time.perf_counter() - start
    peak = [line for line in r.stderr.splitlines() if line.startswith("VmHWM")]
    if not peak:
        raise SystemExit(r.stderr)
    return seconds, int(peak[0].split()[1]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="124M")
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        name = random_model(models, args.size)
        ids = ",".join(map(str, np.random.default_rng(0).integers(0, 50257, args.tokens)))
        dumps = {}
        for dtype in ("float64", "float32"):
            dumps[dtype] = models / f"{dtype}.npz"
            subprocess.run([sys.executable, "-m", "picogpt2.dump", "--ids", ids, "--dtype", dtype,
                            "--detail", "--out", str(dumps[dtype]), "--model-size", name,
                            "--models-dir", str(models)], check=True, cwd=ROOT,
                           capture_output=True)  # fmt: skip
        sizes = {k: v.stat().st_size / 1e9 for k, v in dumps.items()}
        base = [str(dumps["float64"]), str(dumps["float32"])]
        model = ["--model", name, "--models-dir", str(models)]
        rows = {"compare": timed(base), "compare --model": timed([*base, *model])}
    print(
        f"{args.size}, {args.tokens} positions, --detail dumps: reference (float64) "
        f"{sizes['float64']:.2f} GB, candidate (float32) {sizes['float32']:.2f} GB on disk"
    )
    print(f"{'command':18} {'seconds':>8} {'peak RSS GB':>12}")
    for label, (seconds, peak) in rows.items():
        print(f"{label:18} {seconds:8.1f} {peak:12.2f}")


if __name__ == "__main__":
    main()
