"""Speed of two checkouts of picogpt2, old against new: decode and prefill,
each measured in its own fresh process, the two checkouts alternating
round after round (this machine is shared and noisy, so each pair of
processes runs within seconds of each other). Prints medians and ratios.

    python benchmarks/bench_versions.py OLD_CHECKOUT [--new NEW_CHECKOUT] [--size 124M] [--rounds 8]

Both load the same random weights with the size's real shapes (written once
in our safetensors layout, which every picogpt2 version loads), through
``picogpt2.load_model``; decode is tokens/s of 64 greedy tokens after a
16-token prompt, timed as T(65) - T(1); prefill is the time of one forward
pass over 128 tokens (the best of 3 within the process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import random_model  # noqa: E402

PROMPT, N_DECODE, N_PREFILL = 16, 64, 128

MEASURE = """
import json, sys, time
sys.path.insert(0, {checkout!r})
import picogpt2
assert picogpt2.__file__.startswith({checkout!r}), picogpt2.__file__
model = picogpt2.load_model({name!r}, {models!r}, download=False)
ids = list(range({prompt}))
model.generate(ids, 2)  # warm up

def seconds(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t

one = min(seconds(lambda: model.generate(ids, 1)) for _ in range(3))
many = seconds(lambda: model.generate(ids, {n_decode} + 1))
prefill = min(seconds(lambda: model.logits(list(range({n_prefill})))) for _ in range(3))
print(json.dumps({{"decode": {n_decode} / (many - one), "prefill_ms": 1000 * prefill}}))
"""


def measure(checkout: Path, models: Path, name: str) -> dict[str, float]:
    code = MEASURE.format(checkout=str(checkout), name=name, models=str(models), prompt=PROMPT,
                          n_decode=N_DECODE, n_prefill=N_PREFILL)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=checkout, check=True)  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--new", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--size", default="124M")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    checkouts = {"old": args.old.resolve(), "new": args.new.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        name = random_model(Path(tmp), args.size)
        runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for r in range(args.rounds):
            for version in ("old", "new") if r % 2 == 0 else ("new", "old"):
                runs[version].append(measure(checkouts[version], Path(tmp), name))
    medians = {
        v: {k: statistics.median(run[k] for run in runs[v]) for k in runs[v][0]} for v in runs
    }
    print(f"{args.size}, random weights, float32; {args.rounds} rounds, alternating processes")
    print(f"{'version':8} {'decode tok/s':>13} {'prefill 128 ms':>15}  checkout")
    for v in ("old", "new"):
        m = medians[v]
        print(f"{v:8} {m['decode']:13.1f} {m['prefill_ms']:15.1f}  {checkouts[v]}")
    old, new = medians["old"], medians["new"]
    print(
        f"new / old: decode speed {new['decode'] / old['decode']:.2f}x, "
        f"prefill time {new['prefill_ms'] / old['prefill_ms']:.2f}x"
    )


if __name__ == "__main__":
    main()
