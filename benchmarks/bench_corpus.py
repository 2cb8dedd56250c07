"""score --corpus on this machine: tokens/s with 1 and 2 local workers, against
scoring the same documents one at a time with ``perplexity.score`` (the work of
``score FILE``, the model loaded once), and the memory the workers take
together.

    python benchmarks/bench_corpus.py [--size 124M] [--rounds 3] [--copies 1] [--sentences]

The corpus is the paragraphs of the README and docs/ (English prose and
code, from a sentence to a few hundred tokens each; with ``--sentences``, its sentences,
a few to a few dozen tokens each), ``--copies`` times over; the model has
the size's shapes and random weights. The runs alternate, round after
round, each in a fresh process; the table gives medians. "1 worker, 1
core" is the command with one BLAS thread: what each of 2 workers has,
as 2 workers share this machine's 2 cores. Memory is
the peak, over the run, of the proportional set size (PSS) of the command
and its workers together: shared pages, such as the memory-mapped weights,
are divided among the processes that map them instead of counted in each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import random_model  # noqa: E402

ONE_AT_A_TIME = """
import json, sys, time
from picogpt2.model import load_model
from picogpt2.scoring.perplexity import score
model = load_model({name!r}, {models!r}, show_progress=False)
texts = [json.loads(line)["text"] for line in open({corpus!r})]
start, tokens = time.perf_counter(), 0
for text in texts:
    tokens += score(model, text)["scored_tokens"]
print(json.dumps({{"tokens": tokens, "seconds": time.perf_counter() - start}}))
"""


def write_corpus(path: Path, copies: int, sentences: bool) -> int:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n\n".join(f.read_text() for f in files)
    paragraphs = [p.strip() for p in text.split("\n\n")]
    if sentences:
        paragraphs = [s for p in paragraphs for s in re.split(r"(?<=[.:;])\s+", p)]
    texts = [p for p in paragraphs if len(p) > 40]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(copies * len(texts)):
            f.write(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n")
    return copies * len(texts)


def tree_pss(pid: int) -> int:
    """PSS in bytes of ``pid`` and its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            total += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1)) * 1024
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, AttributeError):
            continue
        todo += [int(c) for c in children]
    return total


def corpus_run(args: list[str], out: Path, env: dict[str, str]) -> tuple[float, float]:
    """(tokens/s from the command's summary line, peak PSS GB)."""
    out.unlink(missing_ok=True)
    p = subprocess.Popen([sys.executable, "-m", "picogpt2.score", *args, "--out", str(out)],
                         cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    peak = 0
    while p.poll() is None:
        peak = max(peak, tree_pss(p.pid))
        time.sleep(0.2)
    last = p.stderr.read().strip().splitlines()[-1]
    rate = re.search(r"\(([\d,]+) tokens/s\)", last)
    if p.returncode or rate is None:
        raise SystemExit(last)
    return float(rate.group(1).replace(",", "")), peak / 1e9


def one_at_a_time(models: Path, name: str, corpus: Path) -> float:
    code = ONE_AT_A_TIME.format(name=name, models=str(models), corpus=str(corpus))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout  # fmt: skip
    result = json.loads(out)
    return result["tokens"] / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="124M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--sentences", action="store_true", help="a document per sentence")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        name = random_model(models, args.size)
        corpus = models / "corpus.jsonl"
        n_docs = write_corpus(corpus, args.copies, args.sentences)
        base = ["--corpus", str(corpus), "--model-size", name, "--models-dir", str(models)]
        runs = {  # label: (workers, BLAS threads of the command; None: all cores)
            "1 worker": ("1", None),
            "1 worker, 1 core": ("1", "1"),
            "2 workers": ("2", None),
        }
        rates: dict[str, list[float]] = {"one at a time": [], **{label: [] for label in runs}}
        memory: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.rounds):
            rates["one at a time"].append(one_at_a_time(models, name, corpus))
            for label, (workers, threads) in runs.items():
                env = {**os.environ, **({"OPENBLAS_NUM_THREADS": threads} if threads else {})}
                rate, peak = corpus_run([*base, "--workers", workers], models / "out.jsonl", env)
                rates[label].append(rate)
                memory[label].append(peak)
    median = {k: statistics.median(v) for k, v in rates.items()}
    unit = "sentences" if args.sentences else "paragraphs"
    print(f"{args.size}, random weights; {n_docs} documents (this README's {unit}, "
          f"{args.copies} times); medians of {args.rounds} alternating rounds")  # fmt: skip
    print(f"{'run':16} {'tokens/s':>9} {'vs 1 worker':>12} {'peak PSS GB':>12}")
    for label, rate in median.items():
        peak = f"{statistics.median(memory[label]):12.2f}" if label in memory else f"{'':>12}"
        print(f"{label:16} {rate:9.0f} {rate / median['1 worker']:11.2f}x {peak}")
    per_core = median["2 workers"] / median["1 worker, 1 core"]
    print(f"2 workers against 1 worker on 1 core: {per_core:.2f}x")
    ratio = statistics.median(memory["2 workers"]) / statistics.median(memory["1 worker"])
    print(f"memory of 2 workers together: {ratio:.2f}x one worker's")


if __name__ == "__main__":
    main()
