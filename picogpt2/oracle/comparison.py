"""Judging a candidate's activations against a reference dump, key by key
and layer by layer, and naming where it goes wrong (``compare``).

Every judgement is ``max |candidate - reference| <= atol + rtol * max
|reference|``, per layer for stacked keys, with the tolerances of
``activations.py`` for the precision the candidate computed in (read from
its dtypes, or given). Logits are judged as log-softmax (a constant shift
per position changes no probability), attention scores on the causal
triangle alone (what lies above it is never used). With the model's
weights, each operation is also recomputed from the candidate's own inputs
(``isolation.py``): the first operation whose own output is wrong is the
one blamed. Everything is read a layer at a time from memory-mapped files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from picogpt2.activations import ALONE32, KEYS, RTOL32, RTOL64, describe, forward_order
from picogpt2.gpt2 import log_softmax
from picogpt2.oracle.candidates import Activations, read_candidate, read_ours
from picogpt2.oracle.isolation import Isolation, label
from picogpt2.util.errors import InputError
from picogpt2.weights.params import Params

CHUNK = 64  # rows at a time: a 1024 x 50257 logits array is never copied whole
JUMP = 10  # an error this many times the previous key's has jumped
TOP = 5


@dataclass
class Check:
    """One key (one layer of a stacked key) compared; ``alone`` is the
    error of its operation alone (isolation), from the candidate's keys
    ``alone_from``."""

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
    alone_rel: float | None = None
    alone_ok: bool | None = None
    alone_from: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return label(self.key, self.layer)


def blocks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of ``array``, ``CHUNK`` rows at a time (a 0-d array
    whole, an empty one once): a memory-mapped array is never read whole."""
    if array.ndim == 0:
        yield 0, array
        return
    for start in range(0, max(len(array), 1), CHUNK):
        yield start, array[start : start + CHUNK]


def measure(
    ref: np.ndarray, cand: np.ndarray, transform=None, mask: np.ndarray | None = None
) -> tuple[float, float, list[int]]:
    """(max |d|, max |reference|, where |d| is largest), a block of rows at
    a time; ``transform`` is applied to each block (row-wise), ``mask``
    (broadcast over the leading axes) picks the entries judged."""
    worst, scale, at = 0.0, 0.0, [0] * ref.ndim
    for (start, r), (_, c) in zip(blocks(ref), blocks(cand), strict=True):
        r, c = np.asarray(r, np.float64), np.asarray(c, np.float64)
        if transform is not None:
            r, c = transform(r), transform(c)
        with np.errstate(invalid="ignore"):  # inf - inf: not finite either way
            d = np.abs(c - r)
        d = np.where(np.isnan(d), np.inf, d)
        if mask is not None:
            d, r = np.where(mask, d, 0.0), np.where(mask, r, 0.0)
        scale = max(scale, float(np.max(np.abs(r))) if r.size else 0.0)
        if d.size and float(d.max()) > worst:
            worst = float(d.max())
            at = [int(i) for i in np.unravel_index(int(np.argmax(d)), d.shape)]
            at[0] += start if ref.ndim else 0
    return worst, scale, at


def causal(scores: np.ndarray) -> np.ndarray:
    """Where attention scores [..., n, n] are used: the causal triangle (what
    lies above it is masked, and llm.c leaves it unset)."""
    return np.tril(np.ones(scores.shape[-2:], bool))


def refuse_nan(array: np.ndarray, what: str, name: str) -> None:
    """NaN is bad input, exit status 2 (an infinity is a wrong value)."""
    if array.dtype.kind == "f" and any(np.isnan(b).any() for _, b in blocks(array)):
        raise InputError(f"{what}: the {name} holds NaN")


def verdict(key: str, layer: int | None, ref, cand, tol, **how) -> Check:
    worst, scale, at = measure(ref, cand, **how)
    rtol, atol = tol
    rel = worst / scale if scale else (0.0 if worst == 0 else float("inf"))
    return Check(
        key, layer, list(ref.shape), worst, rel, at, rtol, atol, worst <= atol + rtol * scale
    )


def float_precision(acts: Activations) -> str | None:
    floats = acts.floats()
    if not floats:
        return None
    return "float64" if all(a.dtype == np.float64 for a in floats) else "float32"


@dataclass
class Model:
    """What isolation needs of the model: its weights, as the tree."""

    params: Params
    n_head: int


class Comparison:
    """The report: every check in forward order, the first over tolerance,
    where the error jumps, the operation blamed (with a model), the argmax
    of the logits and how close the distributions are, and the first
    generated id that differs."""

    def __init__(
        self,
        ref: Mapping[str, np.ndarray],
        cand: Mapping[str, np.ndarray],
        *,
        rtol: float | None = None,
        atol: float | None = None,
        precision: str | None = None,
        model: Model | None = None,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.reference = read_ours(ref)
        self.candidate = read_candidate(cand, self.reference)
        self.notes = self.candidate.notes
        self.shared = self.shared_refs()
        self.validate()
        ref_precision = float_precision(self.reference) or "float64"
        self.precision = precision or float_precision(self.candidate) or ref_precision
        self.mode = f"{self.precision} vs {ref_precision}"
        self.rtol_override, self.atol = rtol, atol or 0.0
        self.isolation = self.isolate(model) if model else None
        self.checks = []
        for key, layer in self.shared:  # one layer of each file read at a time, then let go
            self.checks.append(self.check(key, layer))
            release()
        self.argmax = self.logit_summary = self.generation = None
        if "logits" in self.candidate.layers:
            self.compare_logits()
            release()
        if "gen_ids" in self.candidate.layers:
            ref, cand = self.flat(self.reference), self.flat(self.candidate)
            self.generation = generation_report(ref, cand, self.tolerance("logits"))

    # -- what is compared --------------------------------------------------------

    def n_layer(self) -> int:
        hidden = self.reference.layers.get("hidden", {})
        if hidden:
            return max(hidden) if None not in hidden else 0
        stacked = [by for k, by in self.reference.layers.items() if k in KEYS and None not in by]
        return max((max(by) + 1 for by in stacked), default=0)

    def shared_refs(self) -> list[tuple[str, int | None]]:
        """(key, layer) held by both, in forward order, then keys of one's own."""
        ref, cand = self.reference.layers, self.candidate.layers
        both = [(k, i) for k, i in forward_order(self.n_layer())
                if k != "ids" and i in ref.get(k, {}) and i in cand.get(k, {})]  # fmt: skip
        extra = sorted(k for k in ref.keys() & cand.keys() if k not in KEYS
                       and not k.startswith("gen_"))  # fmt: skip
        return both + [(k, None) for k in extra]

    def validate(self) -> None:
        """Bad input, exit status 2: nothing shared, NaN, other inputs."""
        ref, cand = self.reference.layers, self.candidate.layers
        if not self.shared and "gen_ids" not in ref.keys() & cand.keys():
            raise InputError(
                f"the two dumps share no key: the reference holds {', '.join(sorted(ref))}; the "
                f"candidate {', '.join(sorted(cand)) or 'nothing'} (save yours under these "
                "names, llm.c's or transformers': see compare in the README)"
            )
        for name, acts in (("reference", ref), ("candidate", cand)):  # the rest: as compared
            for key in [k for k in acts if k.startswith("gen_")]:
                refuse_nan(acts[key][None], key, name)
        both_ids = "ids" in cand and "ids" in ref
        if both_ids and not np.array_equal(ref["ids"][None], cand["ids"][None]):
            raise InputError("ids: the dumps are of different inputs")

    def tolerance(self, key: str) -> tuple[float, float]:
        if self.rtol_override is not None:
            return self.rtol_override, self.atol
        if self.mode == "float64 vs float64":
            return RTOL64, self.atol
        return RTOL32 * (2 if self.mode.endswith("float32") else 1), self.atol

    def alone_tolerance(self, key: str) -> tuple[float, float]:
        """An operation alone carries only its own rounding, in the
        candidate's precision (``activations.py``)."""
        if self.rtol_override is not None:
            return self.rtol_override, self.atol
        alone32 = ALONE32[KEYS[key].made_by.rounding]
        return (RTOL64 if self.precision == "float64" else alone32), self.atol

    # -- the checks ----------------------------------------------------------------

    def how(self, key: str, ref: np.ndarray) -> dict:
        if key == "logits":
            return {"transform": log_softmax}
        if key == "attn_scores":  # what lies above the diagonal is never used
            return {"mask": causal(ref)}
        return {}

    def check(self, key: str, layer: int | None) -> Check:
        ref = self.reference.layers[key][layer]
        cand = self.candidate.layers[key][layer]
        refuse_nan(ref, label(key, layer), "reference")
        refuse_nan(cand, label(key, layer), "candidate")
        if key == "logits":
            result = self.logits_check(ref, cand)
        else:
            result = verdict(key, layer, ref, cand, self.tolerance(key), **self.how(key, ref))
        if key == "attn":
            result = self.attn_check(result, layer)
        if self.isolation is not None and key in KEYS and not np.isfinite(cand).all():
            result.alone_rel, result.alone_ok = float("inf"), False  # wrong as it stands
        elif self.isolation is not None and key in KEYS:
            alone, sources = self.isolation.isolated(key, layer)
            on_its_own = verdict(key, layer, alone, cand, self.alone_tolerance(key),
                                 **self.how(key, alone))  # fmt: skip
            result.alone_rel, result.alone_ok = on_its_own.max_rel, on_its_own.ok
            result.alone_from = sources
        return result

    def attn_check(self, result: Check, layer: int | None) -> Check:
        """Softmax moves its outputs by the scores' absolute error, so the
        probabilities are held to the tolerance of the scores' magnitude
        when the reference has them (large with trained weights)."""
        scores = self.reference.layers.get("attn_scores", {}).get(layer)
        if scores is None:
            return result
        _, scale, _ = measure(scores, scores, mask=causal(scores))
        if scale <= 1:
            return result
        rtol, atol = self.tolerance("attn")
        result.ok = result.max_abs <= atol + rtol * scale
        result.max_rel = result.max_abs / scale
        result.note = f"relative to the scores' largest value, {scale:.3g}"
        return result

    def logits_check(self, ref: np.ndarray, cand: np.ndarray) -> Check:
        raw = verdict("logits", None, ref, cand, self.tolerance("logits"))
        if not np.isfinite(cand).all():  # no log-softmax of an infinity: wrong as it stands
            raw.note = "not finite, so no log-softmax"
            return raw
        result = verdict("logits", None, ref, cand, self.tolerance("logits"), transform=log_softmax)
        result.note = f"log-softmax; raw {raw.max_rel:.1e}"
        return result

    def isolate(self, model: Model) -> Isolation:
        ids = self.reference.layers.get("ids", {}).get(None)
        if ids is None:
            raise InputError("isolation needs the reference's ids: dump it with picogpt2's dump")
        n_layer, n_embd = len(model.params["blocks"]), model.params["wte"].shape[1]
        hidden = self.reference.layers.get("hidden", {}).get(0)
        if n_layer != self.n_layer() or (hidden is not None and hidden.shape[-1] != n_embd):
            raise InputError(
                f"--model has {n_layer} blocks {n_embd} wide; the reference dump is of another "
                "model: give the model it was dumped from"
            )
        isolation = Isolation(model.params, model.n_head, self.candidate.layers, np.asarray(ids))
        if hidden is not None:
            worst, scale, _ = measure(hidden, isolation.embeddings())
            if worst > 1e-5 * scale:
                raise InputError(
                    "the reference's hidden[0] is not --model's embeddings of its ids: give the "
                    "model the reference was dumped from"
                )
        return isolation

    @staticmethod
    def flat(acts: Activations) -> dict[str, np.ndarray]:
        return {k: by[None] for k, by in acts.layers.items() if None in by}

    # -- the logits ---------------------------------------------------------------

    def compare_logits(self) -> None:
        ref = self.reference.layers["logits"].get(None)
        cand = self.candidate.layers["logits"].get(None)
        if ref is None or cand is None or not np.isfinite(cand).all():
            return
        self.argmax = argmax_report(ref, cand, self.tolerance("logits"))
        self.logit_summary = distribution_summary(ref, cand)

    # -- the verdicts --------------------------------------------------------------

    @property
    def first_wrong(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    @property
    def blamed(self) -> Check | None:
        """The first operation whose own output is wrong (isolation)."""
        return next((c for c in self.checks if c.alone_ok is False), None)

    @property
    def first_jump(self) -> tuple[Check, float] | None:
        """The first key whose error is ``JUMP`` times the previous key's,
        and not too small to matter; with the ratio."""
        for before, check in zip(self.checks, self.checks[1:], strict=False):
            ratio = check.max_rel / before.max_rel if before.max_rel else float("inf")
            if ratio >= JUMP and check.max_rel >= check.rtol / JUMP:
                return check, ratio
        return None

    @property
    def float32_sized(self) -> float | None:
        """In float64 mode, the largest failing error when every failure is
        the size of float32 rounding: a float32 computation kept in float64."""
        if self.mode != "float64 vs float64" or self.rtol_override is not None:
            return None
        failing = [c.max_rel for c in self.checks if not c.ok]
        failing += [c.alone_rel for c in self.checks if c.alone_ok is False]
        worst = max(failing, default=0.0)
        return worst if 0 < worst <= 5 * RTOL32 else None

    @property
    def ok(self) -> bool:
        argmax_ok = self.argmax is None or not self.argmax["real_disagreements"]
        gen_ok = self.generation is None or self.generation["verdict"] != "real disagreement"
        return self.first_wrong is None and argmax_ok and gen_ok

    def conclusion(self) -> str:
        """The closing line, claiming no more than the checks show."""
        blamed, wrong = self.blamed, self.first_wrong
        if blamed is not None and not blamed.alone_from:
            return f"blamed: {blamed.label}, {describe(blamed.key, blamed.layer)}: not finite"
        if blamed is not None:
            before = "every operation before it is right on its own inputs" if (
                self.checks.index(blamed)) else "it is the first operation compared"  # fmt: skip
            return (
                f"blamed: {blamed.label}, {describe(blamed.key, blamed.layer)}: recomputed from "
                f"your {', '.join(blamed.alone_from)}, it is {blamed.alone_rel:.1e} of its "
                f"largest value off (tolerance {self.alone_tolerance(blamed.key)[0]:.0e}); "
                f"{before}"
            )
        if wrong is not None and self.isolation is not None:
            return (
                f"NOT OK: {wrong.label} is {wrong.max_rel:.1e} of its largest value from the "
                f"reference, yet every operation is right on its own inputs: the difference is "
                "rounding carried through the pass"
            )
        if wrong is not None:
            return self.unisolated(wrong)
        if not self.ok:
            return "NOT OK: every key is within tolerance, but a token choice really differs"
        return f"OK: every shared key is within tolerance ({len(self.checks)} checks)"

    def unisolated(self, wrong: Check) -> str:
        text = (
            f"first over tolerance: {wrong.label} ({describe(wrong.key, wrong.layer)}): "
            f"{wrong.max_rel:.1e} of its largest value, tolerance {wrong.rtol:.0e}"
        )
        jump = self.first_jump
        if jump is not None and self.checks.index(jump[0]) <= self.checks.index(wrong):
            text += f"; the error first jumps at {jump[0].label} ({jump[1]:,.0f}x the key before)"
        return text + (
            "; errors carry forward and add up, so the bug is there or before it: to blame one "
            "operation, give the model (--model), which recomputes each from your own inputs"
        )


def top2_gap(logits: np.ndarray) -> np.ndarray:
    two = np.sort(np.asarray(logits, np.float64), axis=-1)[..., -2:]
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


def distribution_summary(ref: np.ndarray, cand: np.ndarray) -> dict:
    """How close the next-token distributions are, for implementations that
    are close but not exact: KL(reference || candidate) per position (mean
    and max), the overlap of the five most likely tokens, greedy agreement."""
    kl, overlap = [], []
    for (_, r), (_, c) in zip(blocks(ref), blocks(cand), strict=True):
        p, q = log_softmax(np.asarray(r)), log_softmax(np.asarray(c))
        kl.append(np.sum(np.exp(p) * (p - q), axis=-1))
        top_p = np.argsort(-p, axis=-1, kind="stable")[:, :TOP]
        top_q = np.argsort(-q, axis=-1, kind="stable")[:, :TOP]
        overlap += [len(set(a) & set(b)) / TOP for a, b in zip(top_p, top_q, strict=True)]
    kl = np.concatenate(kl)
    agree = np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "kl_max_position": int(np.argmax(kl)),
        "top5_overlap": float(np.mean(overlap)),
        "greedy_agreement": float(np.mean(agree)),
    }


def generation_report(ref: dict, cand: dict, tol: tuple[float, float]) -> dict:
    """The first generated id that differs, and whether the reference had a
    near-tie there (after it, the two continue different texts)."""
    a, b = ref["gen_ids"], cand["gen_ids"]
    if a.shape != b.shape:
        raise InputError(f"gen_ids: the reference holds {len(a)}, the candidate {len(b)}")
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
