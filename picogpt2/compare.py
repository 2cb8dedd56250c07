"""Compare a candidate's activations with a reference dump, key by key and
layer by layer, and name the first operation that goes wrong.

    python -m picogpt2.compare ref64.npz mine.npz
    python -m picogpt2.compare ref.safetensors mine_npy_folder/ --json

Both are dumps as ``dump`` writes them (``.npz``, ``.safetensors``, or a
folder of ``KEY.npy``); the candidate may hold any subset of the keys.
Every comparison is ``max |candidate - reference| <= atol + rtol * max
|reference|`` (per layer for stacked keys), with the tolerances of
``activations.py`` unless ``--rtol``/``--atol`` say otherwise. Logits are
judged as log-softmax (a constant shift per position is harmless), and a
position whose argmax differs is called a near-tie when the reference's
two largest logits are closer than the tolerance. Exit status: 0 within
tolerance, 1 not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from picogpt2.activations import KEYS, RTOL64, forward_order
from picogpt2.cli import Parser, prog_name, run_cli
from picogpt2.dumps import Dump, load_dump
from picogpt2.errors import InputError
from picogpt2.scoring import log_softmax


@dataclass
class Check:
    """One key (one layer of a stacked key) compared."""

    key: str
    layer: int | None
    shape: list[int]
    max_abs: float
    max_rel: float
    worst_index: list[int]
    rtol: float
    atol: float
    ok: bool
    note: str = ""

    @property
    def label(self) -> str:
        return self.key if self.layer is None else f"{self.key}[{self.layer}]"


def check(key: str, layer: int | None, ref: np.ndarray, cand: np.ndarray, tol) -> Check:
    rtol, atol = tol
    ref64 = ref.astype(np.float64)
    diff = np.abs(cand.astype(np.float64) - ref64)
    scale = float(np.max(np.abs(ref64))) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    worst = (
        [int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)] if diff.size else []
    )
    return Check(
        key=key,
        layer=layer,
        shape=list(ref.shape),
        max_abs=max_abs,
        max_rel=max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf")),
        worst_index=worst,
        rtol=rtol,
        atol=atol,
        ok=max_abs <= atol + rtol * scale,
    )


class Comparison:
    """The report: every check in forward order, the first wrong one, the
    argmax of the logits and the first generated id that differs."""

    def __init__(self, ref: Dump, cand: Dump, rtol: float | None, atol: float | None) -> None:
        self.ref, self.cand = ref, cand
        self.shared = [k for k in ref if k in cand]
        validate(ref, cand, self.shared)
        self.mode = precision(ref, cand, self.shared)
        self.rtol_override, self.atol = rtol, atol or 0.0
        self.checks: list[Check] = []
        self.argmax: dict | None = None
        self.generation: dict | None = None
        self.run()

    def tolerance(self, key: str) -> tuple[float, float]:
        if self.rtol_override is not None:
            return self.rtol_override, self.atol
        if self.mode == "float64 vs float64":
            return RTOL64, self.atol
        base = KEYS[key].rtol32 if key in KEYS else KEYS["hidden"].rtol32
        return base * (2 if self.mode == "float32 vs float32" else 1), self.atol

    def n_layer(self) -> int:
        if "hidden" in self.ref:
            return self.ref["hidden"].shape[0] - 1
        stacked = [k for k in self.shared if k in KEYS and KEYS[k].per_layer]
        return max((self.ref[k].shape[0] for k in stacked), default=0)

    def run(self) -> None:
        for key, layer in forward_order(self.n_layer()):
            if key == "ids" or key not in self.shared:
                continue
            ref, cand = self.ref[key], self.cand[key]
            if layer is not None:
                ref, cand = ref[layer], cand[layer]
            if key == "logits":
                self.checks.append(self.logits_check(ref, cand))
            else:
                self.checks.append(check(key, layer, ref, cand, self.tolerance(key)))
        extra = [k for k in self.shared if k not in KEYS and not k.startswith("gen_")]
        for key in sorted(extra):
            self.checks.append(check(key, None, self.ref[key], self.cand[key], self.tolerance(key)))
        if "logits" in self.shared:
            tol = self.tolerance("logits")
            self.argmax = argmax_report(self.ref["logits"], self.cand["logits"], tol)
        if "gen_ids" in self.shared:
            self.generation = generation_report(self.ref, self.cand, self.tolerance("logits"))

    def logits_check(self, ref: np.ndarray, cand: np.ndarray) -> Check:
        raw = check("logits", None, ref, cand, self.tolerance("logits"))
        if not np.isfinite(cand).all():  # no log-softmax of an infinity: wrong as it stands
            raw.note = "not finite, so no log-softmax"
            return raw
        result = check(
            "logits", None, log_softmax(ref), log_softmax(cand), self.tolerance("logits")
        )
        result.note = f"log-softmax; raw {raw.max_rel:.1e}{'' if raw.ok else ' NOT OK'}"
        return result

    @property
    def first_wrong(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    @property
    def ok(self) -> bool:
        argmax_ok = self.argmax is None or not self.argmax["real_disagreements"]
        gen_ok = self.generation is None or self.generation["verdict"] != "real disagreement"
        return self.first_wrong is None and argmax_ok and gen_ok


def validate(ref: Dump, cand: Dump, shared: list[str]) -> None:
    """Bad input, exit status 2: nothing shared, shapes that differ, NaN,
    or dumps of different inputs."""
    if not shared:
        raise InputError("the two dumps share no key")
    for key in shared:
        if ref[key].shape != cand[key].shape:
            raise InputError(
                f"{key}: the reference is {list(ref[key].shape)}, the candidate "
                f"{list(cand[key].shape)}"
            )
        for name, dump in (("reference", ref), ("candidate", cand)):
            if dump[key].dtype.kind == "f" and np.isnan(dump[key]).any():
                raise InputError(f"{key}: the {name} holds NaN")
    if "ids" in shared and not np.array_equal(ref["ids"], cand["ids"]):
        raise InputError("ids: the dumps are of different inputs")


def precision(ref: Dump, cand: Dump, shared: list[str]) -> str:
    floats = [k for k in shared if ref[k].dtype.kind == "f"]
    ref64 = all(ref[k].dtype == np.float64 for k in floats)
    cand64 = all(cand[k].dtype == np.float64 for k in floats)
    if ref64 and cand64:
        return "float64 vs float64"
    return "float32 vs float64" if ref64 else "float32 vs float32"


def top2_gap(logits: np.ndarray) -> np.ndarray:
    two = np.sort(logits.astype(np.float64), axis=-1)[..., -2:]
    return two[..., 1] - two[..., 0]


def argmax_report(ref: np.ndarray, cand: np.ndarray, tol: tuple[float, float]) -> dict:
    """How many positions pick the same next token; for each that does not,
    the reference's gap between its two best logits and a verdict."""
    rtol, atol = tol
    tie = atol + rtol * float(np.max(np.abs(ref)))
    differ = np.flatnonzero(np.argmax(ref, axis=-1) != np.argmax(cand, axis=-1))
    gaps = top2_gap(ref[differ])
    positions = [
        {"position": int(p), "reference_gap": float(g),
         "verdict": "near-tie" if g <= tie else "real disagreement"}
        for p, g in zip(differ, gaps, strict=True)
    ]  # fmt: skip
    return {
        "agree": len(ref) - len(differ),
        "positions_total": len(ref),
        "tie_tolerance": tie,
        "disagreements": positions,
        "real_disagreements": sum(p["verdict"] != "near-tie" for p in positions),
    }


def generation_report(ref: Dump, cand: Dump, tol: tuple[float, float]) -> dict:
    """The first generated id that differs, and whether the reference had a
    near-tie there (after it, the two continue different texts)."""
    a, b = ref["gen_ids"], cand["gen_ids"]
    differ = np.flatnonzero(a != b)
    if not len(differ):
        return {"first_difference": None, "verdict": "identical", "steps": len(a)}
    step = int(differ[0])
    report = {"first_difference": step, "steps": len(a), "verdict": "real disagreement"}
    if "gen_gap" in ref and "gen_top_logits" in ref:
        rtol, atol = tol
        gap = float(ref["gen_gap"][step])
        tie = atol + rtol * float(np.max(np.abs(ref["gen_top_logits"][step])))
        report.update(reference_gap=gap, tie_tolerance=tie)
        report["verdict"] = "near-tie" if gap <= tie else "real disagreement"
    return report


def format_report(c: Comparison) -> str:
    lines = [f"{c.mode}: tolerance max|d| <= atol + rtol * max|reference|"]
    lines.append(f"{'key':16} {'shape':22} {'max |d|':>9} {'max rel':>9} {'rtol':>8}  "
                 f"{'worst at':18} verdict")  # fmt: skip
    for ch in c.checks:
        verdict = "OK" if ch.ok else "NOT OK"
        note = f"  ({ch.note})" if ch.note else ""
        lines.append(
            f"{ch.label:16} {str(ch.shape):22} {ch.max_abs:9.2e} {ch.max_rel:9.2e} "
            f"{ch.rtol:8.0e}  {str(tuple(ch.worst_index)):18} {verdict}{note}"
        )
    if c.argmax:
        a = c.argmax
        lines.append(f"argmax: {a['agree']}/{a['positions_total']} positions agree")
        for p in a["disagreements"]:
            lines.append(
                f"  position {p['position']}: the reference's two best logits are "
                f"{p['reference_gap']:.2e} apart: {p['verdict']}"
            )
    if c.generation:
        lines.append(generation_line(c.generation))
    lines.append(closing_line(c))
    return "\n".join(lines)


def generation_line(g: dict) -> str:
    if g["first_difference"] is None:
        return f"generation: all {g['steps']} ids identical"
    text = f"generation: the ids first differ at step {g['first_difference']}"
    if "reference_gap" in g:
        text += f", where the reference's two best logits are {g['reference_gap']:.2e} apart"
    return text + f": {g['verdict']}"


def closing_line(c: Comparison) -> str:
    wrong = c.first_wrong
    if wrong is not None:
        where = KEYS[wrong.key].where if wrong.key in KEYS else "a key of your own"
        layer = (
            f"in block {wrong.layer}, " if wrong.layer is not None and wrong.key != "hidden" else ""
        )
        return (
            f"first wrong: {wrong.label} ({layer}{where}): {wrong.max_rel:.1e} of its largest "
            f"value, tolerance {wrong.rtol:.0e}; everything before it agrees, so the bug is in "
            "this operation"
        )
    if not c.ok:
        return "NOT OK: every key is within tolerance, but a token choice really differs"
    return "OK: every shared key is within tolerance"


def report_json(c: Comparison) -> dict:
    wrong = c.first_wrong
    return {
        "ok": c.ok,
        "mode": c.mode,
        "checks": [{**asdict(ch), "label": ch.label} for ch in c.checks],
        "first_wrong": None if wrong is None else {"key": wrong.key, "layer": wrong.layer},
        "argmax": c.argmax,
        "generation": c.generation,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("compare"),
        description="Compare a candidate's activations with a reference dump and name the "
        "first operation that goes wrong. Exit status 0 within tolerance, 1 not, 2 bad input.",
    )
    parser.add_argument("reference", type=Path, help="dump from python -m picogpt2.dump")
    parser.add_argument("candidate", type=Path, help="yours: .npz, .safetensors or a .npy folder")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance, all keys")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance, all keys")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        for name in ("rtol", "atol"):
            value = getattr(args, name)
            if value is not None and not value >= 0:
                raise InputError(f"--{name} must be >= 0, got {value}")
        comparison = Comparison(load_dump(args.reference), load_dump(args.candidate),
                                args.rtol, args.atol)  # fmt: skip
        if args.json:
            print(json.dumps(report_json(comparison), indent=1))
        else:
            print(format_report(comparison))
        return 0 if comparison.ok else 1

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
