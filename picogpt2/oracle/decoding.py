"""Where a decode goes wrong: when a candidate's generated ids first differ
from the reference's at step k, its step k is recomputed under each
mistake a decode loop makes, and the one its figures match is named.

Step 0 is chosen from the prompt pass; step k >= 1 feeds the id chosen at
step k - 1, at position ``P + k - 1`` (``P`` prompt tokens), attending to
every position before it (the KV cache). The recomputations, in float64
with ``gpt2.py``'s own forward pass over the prompt and the ids before
step k: that token at the right position (the reference), at position 0,
at the position counted from the prompt's end (``k - 1``), one before,
one after, and attending to itself alone (a cache that was dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from picogpt2 import gpt2
from picogpt2.weights.params import map_params


@dataclass
class Hypothesis:
    """One way step k may have been computed, and whether the candidate's
    figures there match it (``distance``: their largest difference from
    it, over the tolerance; under 1 matches)."""

    name: str
    advice: str
    distance: float

    @property
    def matches(self) -> bool:
        return self.distance <= 1


@dataclass
class Placement:
    """What step k of the candidate's decode matches: ``evidence`` names
    the candidate's figures compared, ``position`` the right one."""

    step: int
    position: int
    evidence: str
    hypotheses: list[Hypothesis]

    @property
    def found(self) -> list[Hypothesis]:
        return [h for h in self.hypotheses if h.matches and h.name != RIGHT]


RIGHT = "the right position"


def hypotheses(prompt: int, step: int) -> dict[str, tuple[int | None, str]]:
    """name -> (the position the step's token takes, None: alone at its own
    position; what to check)."""
    right = prompt + step - 1
    candidates = {
        RIGHT: (right, ""),
        "position 0 (wpe[0])": (0, "check the position index after the prompt"),
        f"position {step - 1}, counted from the prompt's end (wpe[{step - 1}])": (
            step - 1, "the position index must count the prompt's tokens too"),
        f"the position before (wpe[{right - 1}])": (
            right - 1, "the position index is one short: wpe[past], not wpe[past - 1]"),
        f"the position after (wpe[{right + 1}])": (
            right + 1, "the position index is one long: wpe[past], not wpe[past + 1]"),
        "itself alone, without the cache": (
            None, "the step attends to no earlier position: check the KV cache is kept and "
            "extended"),
    }  # fmt: skip
    seen, out = set(), {}
    for name, (position, advice) in candidates.items():
        if position is None or (0 <= position and position not in seen):
            out[name] = (position, advice)
            seen.add(position)
    return out


def step_logits(
    params: gpt2.Params, n_head: int, ids: np.ndarray, position: int | None
) -> np.ndarray:
    """The logits of ids' last token at ``position`` (None: alone, at its
    own), attending to the ids before it: [n_vocab], float64."""
    wpe = np.array(params["wpe"], dtype=np.float64)
    last = len(ids) - 1
    if position is None:
        wpe[0] = wpe[last]
        ids = ids[-1:]
    else:
        wpe[last] = wpe[position]
    rest = {k: v for k, v in params.items() if k != "wpe"}
    return gpt2.gpt2(ids[None], wpe=wpe, **rest, n_head=n_head, last_only=True)[0, -1]


def distance(logits: np.ndarray, cand: dict, step: int, evidence: str, tol: float) -> float:
    """The candidate's figures at ``step`` against ``logits``, over the
    tolerance ``tol`` (relative to the logits' largest magnitude)."""
    allowed = 2 * tol * float(np.max(np.abs(logits)))  # both sides round
    logprobs = gpt2.log_softmax(logits)
    if evidence == "gen_ids":
        return 0.0 if int(np.argmax(logits)) == int(cand["gen_ids"][step]) else float("inf")
    if evidence == "gen_logprob":
        theirs, ours = cand["gen_logprob"][step], logprobs[int(cand["gen_ids"][step])]
    else:
        top = np.asarray(cand["gen_top_ids"][step], np.int64)
        theirs = np.asarray(cand[evidence][step], np.float64)
        ours = (logprobs if evidence == "gen_top_logprobs" else logits)[top]
        if evidence == "gen_top_logits":  # as log-softmax over the five: a shift is no error
            theirs, ours = theirs - theirs.max(), ours - ours.max()
    return float(np.max(np.abs(np.asarray(theirs, np.float64) - ours))) / allowed


def place(params: gpt2.Params, n_head: int, prompt: np.ndarray, reference_ids: np.ndarray,
          cand: dict, step: int, tol: float) -> Placement | None:  # fmt: skip
    """Step ``step`` of the candidate's decode, recomputed under each
    hypothesis (None for step 0: the prompt pass, not a cached step)."""
    if step < 1:
        return None
    top = "gen_top_ids" in cand
    evidence = ("gen_top_logprobs" if top and "gen_top_logprobs" in cand else
                "gen_top_logits" if top and "gen_top_logits" in cand else
                "gen_logprob" if "gen_logprob" in cand else "gen_ids")  # fmt: skip
    params64 = map_params(params, lambda a: np.asarray(a, np.float64))
    ids = np.concatenate([np.asarray(prompt, np.int64), np.asarray(reference_ids[:step], np.int64)])
    found = []
    for name, (position, advice) in hypotheses(len(prompt), step).items():
        if position is not None and position >= len(params64["wpe"]):
            continue
        logits = step_logits(params64, n_head, ids, position)
        found.append(Hypothesis(name, advice, distance(logits, cand, step, evidence, tol)))
    return Placement(step, len(prompt) + step - 1, evidence, found)
