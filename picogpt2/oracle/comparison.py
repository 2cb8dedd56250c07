"""Judging a candidate's activations against a reference dump, key by key
and layer by layer, and naming where it goes wrong: ``compare`` returns a
``Report``, which the command prints.

Every judgement is ``max |candidate - reference| <= atol + rtol * max
|reference|``, per layer for stacked keys, with the tolerances of
``activations.py`` for the precision the candidate computed in (read from
its dtypes, or given). Logits are judged as log-softmax (a constant shift
per position changes no probability), attention scores on the causal
triangle alone (what lies above it is never used). With the model's
weights, each operation is also recomputed from the candidate's own inputs
(``isolation.py``): the first operation whose own output is wrong is the
one blamed. Everything is read a chunk of rows at a time from
memory-mapped files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from picogpt2.activations import KEYS, RTOL32, RTOL64, RTOL_REDUCED, describe, forward_order
from picogpt2.gpt2 import Params, log_softmax
from picogpt2.oracle import rounding
from picogpt2.oracle.candidates import Activations, read_candidate, read_ours
from picogpt2.oracle.decoding import Placement, place
from picogpt2.oracle.isolation import Isolation, Recomputed, label, span
from picogpt2.util.errors import InputError

CHUNK = 64  # rows at a time: a 1024 x 50257 logits array is never copied whole
JUMP = 10  # an error this many times the previous key's has jumped
TOP = 5


@dataclass
class Check:
    """One key (one layer of a stacked key) compared, against the reference
    (``max_abs``, ``max_rel``, held to ``rtol``) and, with a model, on its
    own inputs (the candidate's keys ``alone_from``; ``span``: the words for
    what was judged when some were recomputed): ``alone_margin``, the
    largest of its errors over their rounding bounds (over 1 is not
    rounding), at ``alone_index``, where the error is ``alone_abs`` and its
    bound ``alone_bound``; ``alone_rel``, the largest error over the
    largest value."""

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
    alone_margin: float | None = None
    alone_abs: float | None = None
    alone_bound: float | None = None
    alone_index: list[int] | None = None
    span: str | None = None
    steps: list[int] = field(default_factory=list)  # a generated key's steps over tolerance

    @property
    def label(self) -> str:
        return label(self.key, self.layer)

    @property
    def what(self) -> str:
        """What was judged alone, in words: the operation, or the span."""
        return self.span or describe(self.key, self.layer)

    @property
    def passed(self) -> bool:
        """Within tolerance of the reference, and right on its own inputs."""
        return self.ok and self.alone_ok is not False


@dataclass
class Disagreement:
    """A position whose next token differs; ``near_tie``: the reference's
    two best logits are within the tolerance there (rounding can flip it)."""

    position: int
    reference_gap: float
    near_tie: bool


@dataclass
class Argmax:
    """How many positions pick the same next token, and each that does not."""

    agree: int
    positions_total: int
    tie_tolerance: float
    disagreements: list[Disagreement]

    @property
    def real_disagreements(self) -> int:
        return sum(not d.near_tie for d in self.disagreements)


@dataclass
class Distributions:
    """How close the next-token distributions are: KL(reference ||
    candidate) per position, the overlap of the five most likely tokens,
    greedy agreement."""

    kl_mean: float
    kl_max: float
    kl_max_position: int
    top5_overlap: float
    greedy_agreement: float


@dataclass
class Generation:
    """The first generated id that differs (None: all identical) and, when
    the reference recorded its logits there, whether it was a near-tie."""

    steps: int
    first_difference: int | None
    near_tie: bool = False
    reference_gap: float | None = None
    tie_tolerance: float | None = None
    first_wrong_step: int | None = None  # the first step whose id or figures really differ

    @property
    def real_disagreement(self) -> bool:
        return self.first_difference is not None and not self.near_tie


@dataclass
class Jump:
    """The first key whose error is ``JUMP`` times the key's before it."""

    check: Check
    ratio: float


@dataclass
class Report:
    """A comparison: every check in forward order, and what they show."""

    mode: str  # "float32 vs float64": the candidate's precision, then the reference's
    notes: list[str]
    checks: list[Check]
    isolated: bool  # each operation was recomputed from the candidate's own inputs
    overridden: bool  # --rtol or --atol replaced the tolerances
    argmax: Argmax | None = None
    distributions: Distributions | None = None
    generation: Generation | None = None
    not_judged: list[str] = field(default_factory=list)  # the candidate's keys, and why not
    placement: Placement | None = None  # where a decode that differs goes wrong
    # The reduced precisions under whose bounds the blamed product passes.
    reduced_fit: list[str] = field(default_factory=list)
    first_wrong: Check | None = field(init=False)
    blamed: Check | None = field(init=False)  # the first operation wrong on its own inputs
    first_jump: Jump | None = field(init=False)

    def __post_init__(self) -> None:
        self.first_wrong = next((c for c in self.checks if not c.ok), None)
        self.blamed = next((c for c in self.checks if c.alone_ok is False), None)
        self.first_jump = _first_jump(self.checks)

    @property
    def ok(self) -> bool:
        """Every key within tolerance, every operation within its rounding
        bound on its own inputs, and no token choice really differs: the
        one verdict (the exit status, the JSON's ``ok``, the closing line)."""
        argmax_ok = self.argmax is None or not self.argmax.real_disagreements
        generation_ok = self.generation is None or not self.generation.real_disagreement
        return (self.first_wrong is None and self.blamed is None and argmax_ok
                and generation_ok)  # fmt: skip

    @property
    def float32_sized(self) -> float | None:
        """In float64 mode, the largest failing error when every failure is
        the size of float32 rounding: a float32 computation kept in float64."""
        if self.mode != "float64 vs float64" or self.overridden:
            return None
        failing = [c.max_rel for c in self.checks if not c.ok]
        failing += [c.alone_rel for c in self.checks if c.alone_ok is False]
        worst = max(failing, default=0.0)
        return worst if 0 < worst <= 5 * RTOL32 else None


@dataclass
class Model:
    """What isolation needs of the model: its weights, as the tree."""

    params: Params
    n_head: int


def compare(
    ref: Mapping[str, np.ndarray],
    cand: Mapping[str, np.ndarray],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    precision: str | None = None,
    model: Model | None = None,
    release: Callable[[], None] = lambda: None,
) -> Report:
    """Judge the candidate dump ``cand`` against the reference ``ref``:
    ``precision`` is what the candidate computed in (None: read from its
    dtypes), ``rtol`` and ``atol`` replace every tolerance, ``model``
    blames by isolation, and ``release`` is called after each key (to let
    go of the pages of memory-mapped files read so far)."""
    reference = read_ours(ref)
    candidate = read_candidate(cand, reference)
    shared = shared_refs(reference, candidate)
    validate(reference, candidate, shared)
    ref_precision = float_precision(reference) or "float64"
    judge = _Judge(
        reference,
        candidate,
        precision or float_precision(candidate) or ref_precision,
        ref_precision,
        rtol,
        atol or 0.0,
    )
    isolation = judge.isolation(model) if model else None
    checks = []
    for key, layer in shared:  # one layer of each file read at a time, then let go
        checks.append(judge.check(key, layer, isolation))
        release()
    ref_flat, cand_flat = flat(reference), flat(candidate)
    generation = None
    if "gen_ids" in cand_flat and "gen_ids" in ref_flat:
        generation = generation_report(ref_flat, cand_flat, judge.tolerance())
        checks += generation_checks(ref_flat, cand_flat, generation, judge.tolerance())
        generation.first_wrong_step = first_wrong_step(checks, generation)
    report = Report(judge.mode, candidate.notes, checks, isolation is not None, rtol is not None,
                    generation=generation,
                    not_judged=not_judged(reference, candidate, generation))  # fmt: skip
    logits = _logits(reference, candidate)
    if logits is not None:
        report.argmax = argmax_report(*logits, judge.tolerance())
        report.distributions = distribution_summary(*logits)
        release()
    if isolation is not None and report.blamed is not None and judge.precision == "float32":
        report.reduced_fit = reduced_fit(report.blamed, model, isolation, candidate, judge.tiny)
    if model is not None and generation is not None and generation.first_wrong_step is not None:
        report.placement = place(model.params, model.n_head, ref_flat["ids"],
                                 ref_flat["gen_ids"], cand_flat, generation.first_wrong_step,
                                 judge.tolerance()[0])  # fmt: skip
    return report


def reduced_fit(
    blamed: Check, model: Model, isolation: Isolation, candidate: Activations, tiny: float
) -> list[str]:
    """The reduced precisions (``rounding.REDUCED``) under whose bounds a
    float32 candidate's blamed matrix product passes on its own inputs:
    what llama.cpp's kernels do with F16, BF16 or Q8_0 weights, not a bug
    (none: it is over every bound, or it is no such product)."""
    if blamed.key not in rounding.PRODUCTS or blamed.span:
        return []
    cand = candidate.layers[blamed.key][blamed.layer]
    fits = []
    for precision in rounding.REDUCED:
        arithmetic = rounding.Arithmetic(precision)
        other = Isolation(model.params, model.n_head, isolation.cand, isolation.ids, arithmetic)
        found = other.isolated(blamed.key, blamed.layer)
        if margins(blamed.key, found.value, found.bound, cand, tiny)[0] <= 1:
            fits.append(precision)
    return fits


# -- measuring ---------------------------------------------------------------------


def row_chunks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of ``array``, ``CHUNK`` rows at a time (a 0-d array
    whole, an empty one once): a memory-mapped array is never read whole."""
    if array.ndim == 0:
        yield 0, array
        return
    for start in range(0, max(len(array), 1), CHUNK):
        yield start, array[start : start + CHUNK]


def differences(
    ref: np.ndarray, cand: np.ndarray, transform=None, mask: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(first row, the reference's rows as read, as judged, |cand - ref|), a
    chunk of rows at a time: ``transform`` is applied to each chunk
    (row-wise), ``mask`` (broadcast over the leading axes) picks the entries
    judged (the rest count as 0); NaN counts as an infinite difference."""
    for (start, raw), (_, c) in zip(row_chunks(ref), row_chunks(cand), strict=True):
        r, c = np.asarray(raw, np.float64), np.asarray(c, np.float64)
        if transform is not None:
            r, c = transform(r), transform(c)
        with np.errstate(invalid="ignore"):  # inf - inf: not finite either way
            d = np.abs(c - r)
        d = np.where(np.isnan(d), np.inf, d)
        if mask is not None:
            d, r = np.where(mask, d, 0.0), np.where(mask, r, 0.0)
        yield start, raw, r, d


def relative(worst: float, scale: float) -> float:
    """An error over the largest magnitude (0 of 0 is 0, anything of 0 infinite)."""
    return worst / scale if scale else (0.0 if worst == 0 else float("inf"))


def measure(
    ref: np.ndarray, cand: np.ndarray, transform=None, mask: np.ndarray | None = None
) -> tuple[float, float, list[int]]:
    """(max |d|, max |reference|, where |d| is largest), a chunk of rows at
    a time (``differences``)."""
    worst, scale, at = 0.0, 0.0, [0] * ref.ndim
    for start, _, r, d in differences(ref, cand, transform, mask):
        scale = max(scale, float(np.max(np.abs(r))) if r.size else 0.0)
        if d.size and float(d.max()) > worst:
            worst = float(d.max())
            at = [int(i) for i in np.unravel_index(int(np.argmax(d)), d.shape)]
            at[0] += start if ref.ndim else 0
    return worst, scale, at


def margins(
    key: str, value: np.ndarray, bound: rounding.Bound, cand: np.ndarray, tiny: float
) -> tuple[float, float, float, list[int], float, float]:
    """The largest |cand - value| / bound, a chunk of rows at a time: that
    ratio, the error and the bound there, where; and the largest error and
    the largest |value|. Measured as ``how`` says (logits as log-softmax,
    their bound carried there; scores on the causal triangle); ``tiny``
    added to every bound."""
    mask = causal(value) if key == "attn_scores" else None
    best, worst, scale = (0.0, 0.0, tiny, [0] * value.ndim), 0.0, 0.0
    for start, raw, r, d in differences(value, cand, how(key, value).get("transform"), mask):
        rows = slice(start, start + len(raw)) if value.ndim else ...
        b = rounding.Bound(bound.worst[rows], bound.scale[rows])
        if key == "logits":
            b = rounding.log_softmax(raw, b)
        limit = b.limit() + tiny
        ratio = d / limit
        if not ratio.size:
            continue
        worst, scale = max(worst, float(d.max())), max(scale, float(np.max(np.abs(r))))
        if float(ratio.max()) > best[0]:
            i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            at = [int(j) for j in i]
            at[0] += start if value.ndim else 0
            best = (float(ratio[i]), float(d[i]), float(limit[i]), at)
    return (*best, worst, scale)


def causal(scores: np.ndarray) -> np.ndarray:
    """Where attention scores [..., n, n] are used: the causal triangle (what
    lies above it is masked, and llm.c leaves it unset)."""
    return np.tril(np.ones(scores.shape[-2:], bool))


def judged(key: str, array: np.ndarray) -> Iterator[np.ndarray]:
    """The values of ``array`` that are judged, a chunk of rows at a time:
    of the attention scores, the causal triangle alone (what lies above it
    is never used, so never read for NaN or infinity either: llm.c leaves
    it unset, masked_fill puts -inf there)."""
    mask = causal(array) if key == "attn_scores" and array.ndim >= 2 else None
    for _, rows in row_chunks(array):
        yield rows if mask is None else np.where(mask, rows, 0.0)


def finite(key: str, array: np.ndarray) -> bool:
    return all(np.isfinite(rows).all() for rows in judged(key, array))


def refuse_nan(key: str, reference: np.ndarray, what: str) -> None:
    """NaN where the reference's value is judged is bad input, exit status 2
    (in a candidate it is a wrong value: a softmax that overflowed)."""
    if reference.dtype.kind == "f" and any(np.isnan(r).any() for r in judged(key, reference)):
        raise InputError(f"{what}: the reference holds NaN")


def verdict(key: str, layer: int | None, ref, cand, tol, **how) -> Check:
    worst, scale, at = measure(ref, cand, **how)
    rtol, atol = tol
    return Check(
        key,
        layer,
        list(ref.shape),
        worst,
        relative(worst, scale),
        at,
        rtol,
        atol,
        worst <= atol + rtol * scale,
    )


def how(key: str, ref: np.ndarray) -> dict:
    """How a key is measured: logits as log-softmax, scores on the triangle."""
    if key == "logits":
        return {"transform": log_softmax}
    if key == "attn_scores":  # what lies above the diagonal is never used
        return {"mask": causal(ref)}
    return {}


# -- what is compared -----------------------------------------------------------------


def float_precision(acts: Activations) -> str | None:
    floats = acts.floats()
    if not floats:
        return None
    return "float64" if all(a.dtype == np.float64 for a in floats) else "float32"


def n_layer(reference: Activations) -> int:
    hidden = reference.layers.get("hidden", {})
    if hidden:
        return max(hidden) if None not in hidden else 0
    stacked = [by for k, by in reference.layers.items() if k in KEYS and None not in by]
    return max((max(by) + 1 for by in stacked), default=0)


def shared_refs(reference: Activations, candidate: Activations) -> list[tuple[str, int | None]]:
    """(key, layer) held by both, in forward order, then keys of one's own."""
    ref, cand = reference.layers, candidate.layers
    both = [(k, i) for k, i in forward_order(n_layer(reference))
            if k != "ids" and i in ref.get(k, {}) and i in cand.get(k, {})]  # fmt: skip
    extra = sorted(k for k in ref.keys() & cand.keys() if k not in KEYS
                   and not k.startswith("gen_"))  # fmt: skip
    return both + [(k, None) for k in extra]


def validate(reference: Activations, candidate: Activations, shared: list) -> None:
    """Bad input, exit status 2: nothing shared, NaN, other inputs."""
    ref, cand = reference.layers, candidate.layers
    if not shared and "gen_ids" not in ref.keys() & cand.keys():
        raise InputError(
            f"the two dumps share no key: the reference holds {', '.join(sorted(ref))}; the "
            f"candidate {', '.join(sorted(cand)) or 'nothing'} (save yours under these "
            "names, llm.c's or transformers': see docs/oracle.md)"
        )
    for key in [k for k in ref if k.startswith("gen_")]:  # the rest: as compared
        refuse_nan(key, ref[key][None], key)
    both_ids = "ids" in cand and "ids" in ref
    if both_ids and not np.array_equal(ref["ids"][None], cand["ids"][None]):
        raise InputError("ids: the dumps are of different inputs")


def flat(acts: Activations) -> dict[str, np.ndarray]:
    """The keys that are not per layer."""
    return {k: by[None] for k, by in acts.layers.items() if None in by}


def _logits(reference: Activations, candidate: Activations) -> tuple | None:
    """The two logits, when both hold them and the candidate's are finite."""
    ref = reference.layers.get("logits", {}).get(None)
    cand = candidate.layers.get("logits", {}).get(None)
    if ref is None or cand is None or not finite("logits", cand):
        return None
    return ref, cand


class _Judge:
    """The checks of one comparison, with its tolerances."""

    def __init__(
        self,
        reference: Activations,
        candidate: Activations,
        precision: str,
        ref_precision: str,
        rtol: float | None,
        atol: float,
    ) -> None:
        self.reference, self.candidate, self.precision = reference, candidate, precision
        self.arithmetic = rounding.Arithmetic(precision)
        self.tiny = self.arithmetic.tiny
        self.mode = f"{precision} vs {ref_precision}"
        self.rtol_override, self.atol = rtol, atol

    def tolerance(self) -> tuple[float, float]:
        """(rtol, atol) against the reference, the same for every key
        (``activations.py``: ``RTOL32``, doubled when both round, ``RTOL64``, or
        a reduced precision's)."""
        if self.rtol_override is not None:
            return self.rtol_override, self.atol
        if self.mode == "float64 vs float64":
            return RTOL64, self.atol
        if self.precision in RTOL_REDUCED:
            return RTOL_REDUCED[self.precision], self.atol
        return RTOL32 * (2 if self.mode.endswith("float32") else 1), self.atol

    def check(self, key: str, layer: int | None, isolation: Isolation | None) -> Check:
        ref = self.reference.layers[key][layer]
        cand = self.candidate.layers[key][layer]
        refuse_nan(key, ref, label(key, layer))
        if key == "logits":
            result = self.logits_check(ref, cand)
        else:
            result = verdict(key, layer, ref, cand, self.tolerance(), **how(key, ref))
        if key == "attn":
            result = self.attn_check(result, layer)
        if isolation is not None and key in KEYS:
            if not finite(key, cand):  # NaN or infinity: wrong as it stands
                result.alone_rel = result.alone_margin = float("inf")
                result.alone_ok = False
            else:
                self.alone_check(result, isolation.isolated(key, result.layer), cand)
        return result

    def alone_check(self, result: Check, found: Recomputed, cand: np.ndarray) -> None:
        """The candidate's key against its operation recomputed from its own
        inputs: the largest of its errors over their rounding bounds (with
        --rtol or --atol, over that tolerance instead)."""
        key = result.key
        if self.rtol_override is not None:
            worst, scale, at = measure(found.value, cand, **how(key, found.value))
            result.alone_rel = relative(worst, scale)
            allowed = self.atol + self.rtol_override * scale
            margin = relative(worst, allowed)
            result.alone_margin, result.alone_abs, result.alone_bound = margin, worst, allowed
            result.alone_index = at
        else:
            m = margins(key, found.value, found.bound, cand, self.tiny)
            result.alone_margin, result.alone_abs, result.alone_bound, result.alone_index = m[:4]
            worst, scale = m[4:]
            result.alone_rel = relative(worst, scale)
        result.alone_ok = result.alone_margin <= 1
        result.alone_from = found.sources
        result.span = span(key, result.layer, found)

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
        rtol, atol = self.tolerance()
        result.ok = result.max_abs <= atol + rtol * scale
        result.max_rel = result.max_abs / scale
        result.note = f"relative to the scores' largest value, {scale:.3g}"
        return result

    def logits_check(self, ref: np.ndarray, cand: np.ndarray) -> Check:
        raw = verdict("logits", None, ref, cand, self.tolerance())
        if not finite("logits", cand):  # no log-softmax of an infinity: wrong as it stands
            raw.note = "not finite, so no log-softmax"
            return raw
        result = verdict("logits", None, ref, cand, self.tolerance(), transform=log_softmax)
        result.note = f"log-softmax; raw {raw.max_rel:.1e}"
        return result

    def isolation(self, model: Model) -> Isolation:
        ids = self.reference.layers.get("ids", {}).get(None)
        if ids is None:
            raise InputError("isolation needs the reference's ids: dump it with picogpt2's dump")
        blocks, n_embd = len(model.params["blocks"]), model.params["wte"].shape[1]
        hidden = self.reference.layers.get("hidden", {}).get(0)
        if blocks != n_layer(self.reference) or (hidden is not None and hidden.shape[-1] != n_embd):
            raise InputError(
                f"--model has {blocks} blocks {n_embd} wide; the reference dump is of another "
                "model: give the model it was dumped from"
            )
        isolation = Isolation(
            model.params, model.n_head, self.candidate.layers, np.asarray(ids), self.arithmetic
        )
        if hidden is not None:
            worst, scale, _ = measure(hidden, isolation.embeddings())
            if worst > 1e-5 * scale:
                raise InputError(
                    "the reference's hidden[0] is not --model's embeddings of its ids: give the "
                    "model the reference was dumped from"
                )
        return isolation


# -- what the checks show -------------------------------------------------------------


def _first_jump(checks: list[Check]) -> Jump | None:
    """The first key whose error is ``JUMP`` times the previous key's, and
    not too small to matter."""
    checks = [c for c in checks if c.key in KEYS]
    for before, check in zip(checks, checks[1:], strict=False):
        ratio = check.max_rel / before.max_rel if before.max_rel else float("inf")
        if ratio >= JUMP and check.max_rel >= check.rtol / JUMP:
            return Jump(check, ratio)
    return None


def top2_gap(logits: np.ndarray) -> np.ndarray:
    two = np.sort(np.asarray(logits, np.float64), axis=-1)[..., -2:]
    return two[..., 1] - two[..., 0]


def argmax_report(ref: np.ndarray, cand: np.ndarray, tol: tuple[float, float]) -> Argmax:
    """How many positions pick the same next token; for each that does not,
    the reference's gap between its two best logits, and whether that is
    within the tolerance (a near-tie)."""
    rtol, atol = tol
    tie = atol + rtol * float(np.max(np.abs(ref)))
    differ = np.flatnonzero(np.argmax(ref, axis=-1) != np.argmax(cand, axis=-1))
    gaps = top2_gap(ref[differ])
    positions = [Disagreement(int(p), float(g), bool(g <= tie))
                 for p, g in zip(differ, gaps, strict=True)]  # fmt: skip
    return Argmax(len(ref) - len(differ), len(ref), tie, positions)


def most_likely(logprobs: np.ndarray) -> np.ndarray:
    """The ``TOP`` most likely ids of each row, in no order (a partition,
    not a sort of the whole vocabulary)."""
    if logprobs.shape[-1] <= TOP:
        return np.broadcast_to(np.arange(logprobs.shape[-1]), logprobs.shape)
    return np.argpartition(-logprobs, TOP - 1, axis=-1)[:, :TOP]


def distribution_summary(ref: np.ndarray, cand: np.ndarray) -> Distributions:
    """How close the next-token distributions are, for implementations that
    are close but not exact: KL(reference || candidate) per position (mean
    and max), the overlap of the five most likely tokens, greedy agreement."""
    kl, overlap = [], []
    for (_, r), (_, c) in zip(row_chunks(ref), row_chunks(cand), strict=True):
        p, q = log_softmax(np.asarray(r)), log_softmax(np.asarray(c))
        kl.append(np.sum(np.exp(p) * (p - q), axis=-1))
        top_p, top_q = most_likely(p), most_likely(q)
        overlap += [len(set(a) & set(b)) / TOP for a, b in zip(top_p, top_q, strict=True)]
    kl = np.concatenate(kl)
    agree = np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)
    return Distributions(float(kl.mean()), float(kl.max()), int(np.argmax(kl)),
                         float(np.mean(overlap)), float(np.mean(agree)))  # fmt: skip


def generation_report(ref: dict, cand: dict, tol: tuple[float, float]) -> Generation:
    """The first generated id that differs, and whether the reference had a
    near-tie there (after it, the two continue different texts)."""
    a, b = ref["gen_ids"], cand["gen_ids"]
    if a.shape != b.shape:
        raise InputError(f"gen_ids: the reference holds {len(a)}, the candidate {len(b)}")
    differ = np.flatnonzero(a != b)
    if not len(differ):
        return Generation(len(a), None)
    step = int(differ[0])
    report = Generation(len(a), step)
    if "gen_gap" in ref and "gen_top_logits" in ref:
        rtol, atol = tol
        report.reference_gap = float(ref["gen_gap"][step])
        report.tie_tolerance = atol + rtol * float(np.max(np.abs(ref["gen_top_logits"][step])))
        report.near_tie = report.reference_gap <= report.tie_tolerance
    return report


GEN_CHOSEN = "gen_logprob"  # of the id chosen: judged before the first difference only
GEN_FIGURES = ("gen_logprob", "gen_top_logprobs", "gen_top_logits", "gen_gap")


def generation_checks(
    ref: dict, cand: dict, g: Generation, tol: tuple[float, float]
) -> list[Check]:
    """The candidate's figures of each generated step against the
    reference's, while the two decode the same text: up to the first
    difference (the chosen id's log-probability before it). Log-probabilities
    and the gap move by up to twice the logits' error, so they are held to
    the tolerance of the logits' largest magnitude, doubled; logits as
    shifted to their largest (a shift is no error); the five ids up to
    near-ties."""
    rtol, atol = tol
    steps = g.steps if g.first_difference is None else g.first_difference + 1
    logits = ref.get("gen_top_logits")
    checks = []
    for key in [k for k in GEN_FIGURES + ("gen_top_ids",) if k in ref and k in cand]:
        n = steps - (key == GEN_CHOSEN and g.first_difference is not None)
        r, c = ref[key][:n], cand[key][:n]
        if r.shape != c.shape:
            raise InputError(f"{key}: the reference holds {list(ref[key].shape)}, the candidate "
                             f"{list(cand[key].shape)}")  # fmt: skip
        if n == 0:
            continue
        if key == "gen_top_ids":
            checks.append(top_ids_check(r, c, logits, tol))
            continue
        transform = (lambda a: a - np.max(a, axis=-1, keepdims=True)) if key == "gen_top_logits" \
            else None  # fmt: skip
        worst, scale, at = measure(r, c, transform=transform)
        if logits is not None and key != "gen_top_logits":
            scale = 2 * float(np.max(np.abs(np.asarray(logits[:n], np.float64))))
        note = f"steps 0-{n - 1}" + (
            ", of the logits' magnitude"
            if scale and key != "gen_top_logits" and logits is not None
            else ""
        )
        check = Check(key, None, list(r.shape), worst, relative(worst, scale), at, rtol, atol,
                      worst <= atol + rtol * scale, note)  # fmt: skip
        check.steps = over(r, c, transform, atol + rtol * scale)
        checks.append(check)
    return checks


def over(ref: np.ndarray, cand: np.ndarray, transform, allowed: float) -> list[int]:
    """The steps (rows) whose largest error is over ``allowed``."""
    steps: list[int] = []
    for start, _, _, d in differences(ref, cand, transform):
        largest = np.max(d.reshape(len(d), -1), axis=-1)
        steps += [start + int(i) for i in np.flatnonzero(largest > allowed)]
    return steps


def top_ids_check(ref: np.ndarray, cand: np.ndarray, logits, tol: tuple[float, float]) -> Check:
    """The five most likely ids of each step, equal but where the
    reference's logits of neighbouring ranks are within the tolerance
    (rounding may order them either way)."""
    rtol, atol = tol
    real, at, steps = 0, [0, 0], []
    for step, rank in zip(*np.nonzero(np.asarray(ref) != np.asarray(cand)), strict=True):
        if logits is not None:
            row = np.asarray(logits[step], np.float64)
            tie = atol + rtol * float(np.max(np.abs(row)))
            near = [row[r] for r in (rank - 1, rank + 1) if 0 <= r < len(row)]
            if any(abs(row[rank] - x) <= tie for x in near):
                continue
        real += 1
        at = [int(step), int(rank)] if real == 1 else at
        steps.append(int(step))
    check = Check("gen_top_ids", None, list(ref.shape), float(real), real / ref.size, at, 0.0,
                  0.0, real == 0, f"{real} of {ref.size} differ beyond near-ties")  # fmt: skip
    check.steps = sorted(set(steps))
    return check


def not_judged(reference: Activations, candidate: Activations, g: Generation | None) -> list[str]:
    """The candidate's keys that no check looks at, each with the reason."""
    ref, out = reference.layers, []
    for key in sorted(candidate.layers):
        if key.startswith("gen_") and "gen_ids" not in ref:
            out.append(f"{key}: the reference has no generation (dump it with --generate N)")
        elif key not in ref:
            out.append(f"{key}: the reference has no {key}")
        elif key.startswith("gen_") and key != "gen_ids" and g and g.first_difference is not None:
            last = g.first_difference - (key == GEN_CHOSEN)
            if last < g.steps - 1:
                out.append(f"{key}: steps after {last}: from the first difference the two "
                           "decode different texts")  # fmt: skip
    return out


def first_wrong_step(checks: list[Check], g: Generation) -> int | None:
    """The first step whose chosen id really differs or whose figures are
    over tolerance (each figure check's ``steps`` holds those, in order)."""
    steps = [c.steps[0] for c in checks if c.key.startswith("gen_") and c.steps]
    if g.real_disagreement:
        steps.append(g.first_difference)
    return min(steps, default=None)
