"""How compare's verdicts land, both ways: correct implementations against
the rounding bounds (``picogpt2/oracle/rounding.py``) and the end-to-end
tolerance, and subtle bugs against the same bounds.

    python benchmarks/calibrate_float32.py [--lengths 16,256,1024] [--layers 2] [--vocab 2048]

Random weights with 124M's widths (the errors depend on the shapes and the
magnitudes, not on trained values; the vocabulary is cut, since no sum
runs over it). Every candidate is judged as ``compare --model`` judges it,
in process, against our float64 pass:

- clean: ``blas`` (our float32 pass: BLAS's blocked sums), ``pairwise``
  (every sum pairwise, as NumPy's ``sum``), ``left`` (every sum left to
  right in float32, as the simplest C loop), ``left64`` (left to right,
  accumulated in float64, rounded once), ``f64`` (left to right in
  float64, judged as float64); ``float16``, ``bfloat16``, ``q8_0`` (our
  float32 pass with every product's input converted first, as llama.cpp
  does with F16, BF16 and Q8_0 weights; judged at that precision: ask for
  them with ``--variants``); each with every key, and ``sparse`` with only
  ``hidden``, ``ln_f`` and ``logits`` (each block judged as one span);
- bugs: the four subtle ones of docs/oracle.md and the eleven of the
  tests, each in our float32 pass.

A clean row's figure is its worst margin (error over bound, over every
element of every key; under 1 passes); a bug's is its margin at the
operation blamed (over 1 is caught). The end-to-end column is the worst
carried error over its tolerance.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from ports import (  # noqa: E402
    LeftToRight,
    Pairwise,
    eps_outside,
    eps_small,
    exact_gelu,
    gelu_cubic,
    reduced_matmul,
    scale_half,
    thirds,
    traced,
    unbiased,
    wpe_shift,
    zero_bias,
)
from tiny import tiny_tensors  # noqa: E402

from picogpt2.hparams import SIZES, HParams  # noqa: E402
from picogpt2.oracle.comparison import Model, compare  # noqa: E402
from picogpt2.oracle.rounding import REDUCED  # noqa: E402
from picogpt2.weights.params import map_params, params_from_tensors  # noqa: E402

SPARSE = ("ids", "hidden", "ln_f", "logits")


BUGS: dict[str, tuple[dict, Callable | None]] = {  # name -> (gpt2.py patches, weight edit)
    "gelu 0.0447": ({"gelu": gelu_cubic}, None),
    "eps 1e-6": ({"layer_norm": eps_small}, None),
    "scale in float16": ({"attention_scores": scale_half}, None),
    "wpe off by one": ({}, wpe_shift),
    "gelu constant": ({"SQRT_2_OVER_PI": math.sqrt(2.0 / 3.14)}, None),
    "gelu erf": ({"gelu": exact_gelu}, None),
    "unbiased variance": ({"layer_norm": unbiased}, None),
    "eps outside": ({"layer_norm": eps_outside}, None),
    "scale 1/head_dim": (
        {"attention_scores": lambda q, k: q @ np.swapaxes(k, -1, -2) / q.shape[-1]},
        None,
    ),  # fmt: skip
    "q k swapped": ({}, thirds((1, 0, 2))),
    "k v swapped": ({}, thirds((0, 2, 1))),
    "no c_attn bias": ({}, zero_bias("attn", "c_attn")),
    "no attn c_proj bias": ({}, zero_bias("attn", "c_proj")),
    "no c_fc bias": ({}, zero_bias("mlp", "c_fc")),
    "no mlp c_proj bias": ({}, zero_bias("mlp", "c_proj")),
}


def judged(reference: dict, candidate: dict, model: Model, precision: str) -> dict:
    report = compare(reference, candidate, model=model, precision=precision)
    summed = [c for c in report.checks if c.label != "hidden[0]"]  # hidden[0]: one rounding
    alone = max(summed, key=lambda c: c.alone_margin)
    carried = max(report.checks, key=lambda c: c.max_rel / c.rtol)
    per_key: dict[str, float] = {}
    for c in report.checks:
        name = "embeddings" if c.label == "hidden[0]" else c.key
        per_key[name] = max(per_key.get(name, 0.0), c.alone_margin)
    return {"ok": report.ok, "blamed": report.blamed, "alone": alone, "per_key": per_key,
            "carried": carried.max_rel / carried.rtol, "carried_at": carried.label}  # fmt: skip


def clean_table(h: HParams, params32, params64, model: Model, lengths: list[int],
                names: list[str], rng: np.random.Generator) -> None:  # fmt: skip
    """Each correct variant at each length, every key and sparse keys."""
    variants = {
        "blas": ({}, params32, "float32"),
        "pairwise": (Pairwise(np.float32, np.float32).functions(), params32, "float32"),
        "left": (LeftToRight(np.float32, np.float32).functions(), params32, "float32"),
        "left64": (LeftToRight(np.float64, np.float32).functions(), params32, "float32"),
        "f64": (LeftToRight(np.float64, np.float64).functions(), params64, "float64"),
        **{precision: ({"matmul": reduced_matmul(precision)}, params32, precision)
           for precision in REDUCED},
    }  # fmt: skip
    print(
        "(the embeddings are one correctly rounded addition each: their margin reaches 1.0 in "
        "every float32 candidate, and never passes it; the worst below is of the rest)"
    )
    detail: dict[tuple[str, int], dict[str, float]] = {}
    print(f"\n{'candidate':22} {'n':>5} {'keys':>6} {'worst alone/bound':>18} {'at':16} "
          f"{'carried/tol':>12} {'at':12} verdict  seconds")  # fmt: skip
    for n in lengths:
        ids = rng.integers(0, h.n_vocab, n)
        reference = traced(params64, ids, {}, h.n_head)
        for name in names:
            patch, params, precision = variants[name]
            start = time.perf_counter()
            candidate = traced(params, ids, patch, h.n_head)
            for keys, cand in (("all", candidate), ("sparse", sparse(candidate))):
                j = judged(reference, cand, model, precision)
                detail.setdefault((name, n), j["per_key"])
                verdict = "OK" if j["ok"] else f"NOT OK ({j['blamed'] and j['blamed'].label})"
                print(f"{name + ' ' + precision:22} {n:5} {keys:>6} "
                      f"{j['alone'].alone_margin:18.3g} {j['alone'].label:16} "
                      f"{j['carried']:12.3g} {j['carried_at']:12} {verdict:8} "
                      f"{time.perf_counter() - start:6.1f}")  # fmt: skip
    if detail:
        columns = list(detail)
        print("\nthe worst margin of each key, over its layers (all keys saved)")
        print(f"{'key':12}" + "".join(f"{f'{v} {n}':>14}" for v, n in columns))
        for key in next(iter(detail.values())):
            print(f"{key:12}" + "".join(f"{detail[c][key]:14.3g}" for c in columns))


def bug_table(h: HParams, params32, params64, model: Model, n: int, bugs: list[str],
              rng: np.random.Generator) -> None:  # fmt: skip
    """Each bug in our float32 pass: where it is blamed, and its margin."""
    ids = rng.integers(0, h.n_vocab, n)
    reference = traced(params64, ids, {}, h.n_head)
    print(f"\n{n} positions, our float32 pass with one bug")
    print(f"{'bug':22} {'keys':>6} {'blamed':16} {'margin':>10} {'carried/tol':>12} verdict")
    for bug in bugs:
        patch, edit = BUGS[bug]
        params = map_params(params32, lambda a: a.copy())
        if edit is not None:
            edit(params)
        candidate = traced(params, ids, patch, h.n_head)
        for keys, cand in (("all", candidate), ("sparse", sparse(candidate))):
            j = judged(reference, cand, model, "float32")
            blamed = j["blamed"]
            margin = blamed.alone_margin if blamed else j["alone"].alone_margin
            print(f"{bug:22} {keys:>6} {blamed.label if blamed else '-':16} {margin:10.3g} "
                  f"{j['carried']:12.3g} {'OK' if j['ok'] else 'NOT OK'}")  # fmt: skip


def sparse(candidate: dict) -> dict:
    return {k: candidate[k] for k in SPARSE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,256,1024", help="prompt lengths, comma-separated")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=12, help="n_head (16: head_dim 48)")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--variants", default="blas,pairwise,left,left64,f64")
    parser.add_argument("--bugs", default=",".join(BUGS), help="'' for none")
    parser.add_argument("--bug-length", type=int, default=64)
    args = parser.parse_args()
    h = HParams(**{**SIZES["124M"].as_dict(), "n_layer": args.layers, "n_head": args.heads,
                   "n_vocab": args.vocab})  # fmt: skip
    tensors = tiny_tensors(h.as_dict(), seed=3, scale=0.02)
    params64 = map_params(params_from_tensors(tensors, h), lambda a: a.astype(np.float64))
    params32 = map_params(params_from_tensors(tensors, h), lambda a: a.astype(np.float32))
    model = Model(params32, h.n_head)
    rng = np.random.default_rng(1)
    print(f"124M widths, {h.n_layer} blocks, n_head {h.n_head}, vocabulary {h.n_vocab}; random "
          "weights")  # fmt: skip
    lengths = [int(t) for t in args.lengths.split(",") if t]
    clean_table(h, params32, params64, model, lengths, args.variants.split(","), rng)
    bugs = [b for b in args.bugs.split(",") if b]
    if bugs:
        bug_table(h, params32, params64, model, args.bug_length, bugs, rng)


if __name__ == "__main__":
    main()
