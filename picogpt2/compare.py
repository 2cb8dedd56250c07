"""Compare a candidate's activations with a reference dump, key by key and
layer by layer, and name where it goes wrong.

    python -m picogpt2.compare ref64.npz mine.npz
    python -m picogpt2.compare ref64.npz mine.npz --model 124M      # blame by isolation
    python -m picogpt2.compare ref.safetensors mine_npy_folder/ --json

The reference is a dump as ``dump`` writes it; the candidate any subset of
its keys, under our names, llm.c's or transformers' (``oracle/candidates.py``),
as ``.npz``, ``.safetensors``, a folder of ``KEY.npy`` or one ``.npy``.
``oracle/comparison.py`` holds the rules. Exit status: 0 within tolerance, 1 not,
2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from picogpt2.activations import KEYS, describe
from picogpt2.cli.arguments import Parser, add_models_dir_argument, prog_name
from picogpt2.cli.running import run_cli
from picogpt2.oracle.comparison import Check, Generation, Model, Report, compare
from picogpt2.oracle.dumps import load_dump, value_limit
from picogpt2.oracle.plot import svg
from picogpt2.oracle.rounding import PRECISIONS, REDUCED_WEIGHTS
from picogpt2.util.atomic import atomic_write, require_new
from picogpt2.util.errors import InputError
from picogpt2.util.textio import printable
from picogpt2.weights.loading import open_model
from picogpt2.weights.params import params_from_tensors

ALONE_LEGEND = (
    "alone/bound: each operation recomputed from your own inputs, its largest error over its "
    "rounding bound (docs/oracle.md); over 1 (!) is not rounding"
)


def check_line(ch: Check, isolated: bool) -> str:
    verdict = "OK" if ch.passed else "NOT OK"
    alone = ""
    if isolated:
        alone = f" {'-':>11}" if ch.alone_margin is None else f" {ch.alone_margin:11.2e}"
        alone += "  " if ch.alone_ok is not False else " !"
    note = f"  ({ch.note})" if ch.note else ""
    return (
        f"{ch.label:16} {str(ch.shape):22} {ch.max_abs:9.2e} {ch.max_rel:9.2e} {ch.rtol:8.0e}"
        f"{alone}  {str(tuple(ch.worst_index)):18} {verdict}{note}"
    )


def near_tie(tie: bool) -> str:
    return "near-tie" if tie else "real disagreement"


def format_report(r: Report) -> str:
    lines = [f"note: {note}" for note in r.notes]
    lines.append(f"{r.mode}: against the reference, max|d| <= atol + rtol * max|reference|")
    if r.isolated:
        lines.append(ALONE_LEGEND)
    alone = f" {'alone/bound':>11}  " if r.isolated else ""
    lines.append(f"{'key':16} {'shape':22} {'max |d|':>9} {'max rel':>9} {'rtol':>8}{alone}"
                 f"  {'worst at':18} verdict")  # fmt: skip
    lines += [check_line(ch, r.isolated) for ch in r.checks]
    if r.argmax:
        a = r.argmax
        lines.append(f"argmax: {a.agree}/{a.positions_total} positions agree")
        for d in a.disagreements:
            lines.append(
                f"  position {d.position}: the reference's two best logits are "
                f"{d.reference_gap:.2e} apart: {near_tie(d.near_tie)}"
            )
    if r.distributions:
        s = r.distributions
        lines.append(
            f"distributions: KL(reference || candidate) mean {s.kl_mean:.2e}, max "
            f"{s.kl_max:.2e} (position {s.kl_max_position}); top-5 overlap "
            f"{s.top5_overlap:.1%}; greedy agreement {s.greedy_agreement:.1%}"
        )
    if r.generation:
        lines.append(generation_line(r.generation))
    if r.placement:
        lines += [f"  step {r.placement.step} recomputed with {h.name}: "
                  f"{'matches' if h.matches else 'differs'} ({h.distance:.2g} of the tolerance)"
                  for h in r.placement.hypotheses]  # fmt: skip
    lines += [f"not judged: {item}" for item in r.not_judged]
    lines += precision_hints(r)
    lines.append(conclusion(r))
    return "\n".join(lines)


def precision_hints(r: Report) -> list[str]:
    """What the errors' size says of the precision the candidate computed in."""
    lines = []
    if r.reduced_fit:
        fits, weights = r.reduced_fit, [REDUCED_WEIGHTS[p] for p in r.reduced_fit]
        which = f"--precision {fits[0]}" if len(fits) == 1 else "--precision with that type"
        lines.append(
            f"precision: {r.blamed.label} is within its bound if each matrix product converts "
            f"its input to {either(fits)} first (as llama.cpp does with {either(weights)} "
            f"weights): if yours does, give {which}"
        )
    if r.float32_sized is not None:
        lines.append(
            f"precision: the errors are the size of float32 rounding (at most "
            f"{r.float32_sized:.1e}); if your implementation computes in float32 and only "
            "stores float64 (NumPy 2 promotes float32 / float64 scalars), use --precision float32"
        )
    return lines


def either(names: list[str]) -> str:
    """Names as a list in words: one alone, two joined by "or", three as "a, b or c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def generation_line(g: Generation) -> str:
    if g.first_difference is None:
        return f"generation: all {g.steps} ids identical"
    text = f"generation: the ids first differ at step {g.first_difference}"
    if g.reference_gap is not None:
        text += f", where the reference's two best logits are {g.reference_gap:.2e} apart"
    return text + f": {near_tie(g.near_tie)}"


def conclusion(r: Report) -> str:
    """The closing line, claiming no more than the checks show, and saying
    what the exit status says."""
    blamed, wrong = r.blamed, r.first_wrong
    if blamed is not None:
        return blame_line(r, blamed)
    if (wrong is not None and wrong.key.startswith("gen_")) or (not r.ok and r.placement):
        return decode_line(r)
    if wrong is not None and r.isolated:
        head = (f"NOT OK: {wrong.label} is {wrong.max_rel:.1e} of its largest value from the "
                f"reference, over the end-to-end tolerance {wrong.rtol:.0e}")  # fmt: skip
        spans = [c.span for c in r.checks if c.span]
        if spans:
            return (f"{head}, yet every operation and span judged is within its rounding bound "
                    f"on your inputs ({'; '.join(spans[:2])}{'; ...' if len(spans) > 2 else ''}): "
                    "a span's bound composes all its operations', so a deviation this small has "
                    "no place to show there: save the keys inside it")  # fmt: skip
        return (
            f"{head}, yet every operation is within its rounding bound on its own inputs: "
            "rounding carried through the pass grew past the tolerance"
        )
    if wrong is not None:
        return unisolated(r, wrong)
    if not r.ok:
        return "NOT OK: every key is within tolerance, but a token choice really differs"
    if r.isolated:
        return (
            f"OK: every shared key is within tolerance and every operation within its rounding "
            f"bound ({len(r.checks)} checks)"
        )
    return f"OK: every shared key is within tolerance ({len(r.checks)} checks)"


EVIDENCE = {"gen_top_logprobs": "top-5 log-probabilities", "gen_top_logits": "top-5 logits",
            "gen_logprob": "log-probability of the id chosen",
            "gen_ids": "id chosen (the only figure given)"}  # fmt: skip


def decode_line(r: Report) -> str:
    """The closing line when the prompt's keys pass and the decode differs."""
    g = r.generation
    step = g.first_wrong_step
    what = ("the ids first differ" if g.real_disagreement and g.first_difference == step else
            "the figures first differ")  # fmt: skip
    text = f"NOT OK: {what} at step {step}"
    if r.placement:
        return f"{text}: {placed(r)}"
    if step == 0:
        return f"{text}, chosen from the prompt pass's last position"
    return f"{text}; to place it, give the model (--model), which recomputes that step"


def placed(r: Report) -> str:
    """Where the decode goes wrong, in words, from what was recomputed."""
    p = r.placement
    judged = [c for c in r.checks if c.key in KEYS]
    prompt = (f"the prompt pass is right ({len(judged)} checks within tolerance"
              f"{' and rounding bound' if r.isolated else ''})" if judged else
              "no key of the prompt pass was given")  # fmt: skip
    first = "the first cached position" if p.step == 1 else "a cached position"
    text = f"{prompt}; step {p.step} ({first}, position {p.position}) differs"
    found = p.found
    if len(found) == 1:
        h = found[0]
        return (f"{text}: your {EVIDENCE[p.evidence]} there match its token at {h.name}, and no "
                f"other recomputation: {h.advice}")  # fmt: skip
    if found:
        return (f"{text}: your {EVIDENCE[p.evidence]} there match its token at "
                f"{' and at '.join(h.name for h in found)}: {found[0].advice}")  # fmt: skip
    return (
        f"{text}: your {EVIDENCE[p.evidence]} there match none of the recomputations "
        "(the position after the prompt, one before or after, without the cache): look at "
        "the cached step itself (the KV cache, the position index)"
    )


def blame_line(r: Report, blamed: Check) -> str:
    """The first operation (or span) wrong on its own inputs: always NOT OK."""
    head = f"blamed: {blamed.label}, {blamed.what}"
    if not blamed.alone_from:
        return f"{head}: not finite"
    first = r.checks.index(blamed) == 0
    before = ("it is the first operation compared" if first else
              "every operation before it is within its bound on its own inputs")  # fmt: skip
    text = (
        f"{head}: recomputed from your {', '.join(blamed.alone_from)}, it is "
        f"{blamed.alone_abs:.1e} off at {tuple(blamed.alone_index)}, {blamed.alone_margin:.3g}x "
        f"{'the tolerance' if r.overridden else 'its rounding bound there'} "
        f"({blamed.alone_bound:.1e}); {before}"
    )
    if blamed.key == "hidden" and blamed.layer == 0 and not blamed.span:
        text += f"; {other_weights(blamed.alone_rel)}"
    if r.first_wrong is None:
        text += (
            "; NOT OK although every key is within the end-to-end tolerance: a real deviation, "
            "hidden there by small magnitudes"
        )
    return text


# The size of a weight's rounding to a smaller type, relative to the largest:
# a value is off by up to half a unit in its last place.
ROUNDED_TO = (("float16", 2.0**-11), ("bfloat16", 2.0**-8))


def other_weights(relative: float) -> str:
    """hidden[0] is the model's weights alone (wte[ids] + wpe): what an
    error there of ``relative`` (of its largest value) says."""
    size = next((name for name, half in ROUNDED_TO if half / 16 <= relative <= half), None)
    text = (f"hidden[0] is the weights alone, wte[ids] + wpe, and yours are {relative:.1e} of "
            "their largest value from --model's: ")  # fmt: skip
    if size is not None:
        return text + (f"the size of {size} rounding: your weights are not the reference's "
                       f"(stored in {size}, or quantized?)")  # fmt: skip
    return text + "your token or position embeddings are not the model's (other weights, or rows)"


def unisolated(r: Report, wrong: Check) -> str:
    text = (
        f"first over tolerance: {wrong.label} ({describe(wrong.key, wrong.layer)}): "
        f"{wrong.max_rel:.1e} of its largest value, tolerance {wrong.rtol:.0e}"
    )
    jump = r.first_jump
    if jump is not None and r.checks.index(jump.check) <= r.checks.index(wrong):
        text += f"; the error first jumps at {jump.check.label} ({jump.ratio:,.0f}x the key before)"
    return text + (
        "; errors carry forward and add up, so the bug is there or before it: to blame one "
        "operation, give the model (--model), which recomputes each from your own inputs"
    )


def report_json(r: Report) -> dict:
    def where(ch: Check | None) -> dict | None:
        return None if ch is None else {"key": ch.key, "layer": ch.layer, "label": ch.label}

    argmax = generation = None
    if r.argmax:
        a = r.argmax
        argmax = {"agree": a.agree, "positions_total": a.positions_total,
                  "tie_tolerance": a.tie_tolerance, "disagreements": [
                      {"position": d.position, "reference_gap": d.reference_gap,
                       "verdict": near_tie(d.near_tie)} for d in a.disagreements],
                  "real_disagreements": a.real_disagreements}  # fmt: skip
    if r.generation:
        g = r.generation
        generation = {"first_difference": g.first_difference, "steps": g.steps,
                      "verdict": "identical" if g.first_difference is None else near_tie(
                          g.near_tie)}  # fmt: skip
        if g.reference_gap is not None:
            generation |= {"reference_gap": g.reference_gap, "tie_tolerance": g.tie_tolerance}
    return {
        "ok": r.ok,
        "mode": r.mode,
        "notes": r.notes,
        "checks": [{**asdict(ch), "label": ch.label} for ch in r.checks],
        "first_wrong": where(r.first_wrong),
        "first_jump": None if r.first_jump is None else {**where(r.first_jump.check),
                                                         "ratio": r.first_jump.ratio},
        "isolated": r.isolated,
        "float32_sized": r.float32_sized,
        "reduced_fit": r.reduced_fit,
        "argmax": argmax,
        "distributions": None if r.distributions is None else asdict(r.distributions),
        "generation": generation,
        "placement": None if r.placement is None else asdict(r.placement),
        "not_judged": r.not_judged,
        "conclusion": conclusion(r),
    } | ({} if r.blamed is None else {"blamed": where(r.blamed)})  # fmt: skip


def load_weights(name: str, models_dir: Path | None) -> Model:
    files = open_model(name, models_dir, vocabulary=False)
    return Model(params_from_tensors(files.tensors, files.hparams), files.hparams.n_head)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("compare"),
        description="Compare a candidate's activations with a reference dump and name where it "
        "goes wrong; with --model, blame the first operation wrong on its own inputs. Exit "
        "status 0 within tolerance, 1 not, 2 bad input.",
    )
    parser.add_argument("reference", type=Path, help="dump from python -m picogpt2.dump")
    parser.add_argument(
        "candidate", type=Path, help="yours: .npz, .safetensors, a .npy folder or one .npy"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="the model the reference was dumped from (anything --model-size accepts): "
        "recompute each operation from your own inputs and blame the first that is wrong",
    )
    add_models_dir_argument(parser)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="what your implementation computed in (default: read from your dump's dtypes); "
        "float16, bfloat16, q8_0: float32, with each matrix product's input converted to that "
        "type first, as llama.cpp does with F16, BF16 and Q8_0 weights",
    )
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance, all keys")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance, all keys")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.svg",
        help="also draw every key's error against its tolerance, in forward order (a new SVG)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        for name in ("rtol", "atol"):
            value = getattr(args, name)
            if value is not None and not value >= 0:
                raise InputError(f"--{name} must be >= 0, got {value}")
        if args.plot is not None:
            require_new(args.plot)
        reference = load_dump(args.reference)
        candidate = load_dump(args.candidate, limit=value_limit(reference))
        model = load_weights(args.model, args.models_dir) if args.model else None

        def release() -> None:
            reference.release()
            candidate.release()

        report = compare(reference, candidate, rtol=args.rtol, atol=args.atol,
                         precision=args.precision, model=model, release=release)  # fmt: skip
        if args.plot is not None:
            title = f"{printable(args.candidate.name)} against {printable(args.reference.name)}"
            with atomic_write(args.plot) as f:
                f.write(svg(report, title).encode("utf-8"))
        if args.json:
            print(json.dumps(report_json(report), indent=1))
        else:
            print(format_report(report))
        return 0 if report.ok else 1

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
