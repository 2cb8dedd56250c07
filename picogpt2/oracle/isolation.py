"""Blame by isolation: every operation of the forward pass recomputed, in
float64 with ``gpt2.py``'s own functions, from the candidate's own inputs.

A bug early in a candidate's forward pass carries its error into every
later key, and small errors add up over a matrix product, so the first key
that differs from the reference need not be where the bug is. Recomputing
key K from the candidate's values of K's inputs (``ln_1[i]`` from its
``hidden[i]``, ``q``, ``k``, ``v`` from its ``ln_1``, the scores from its
``q`` and ``k``, ...) puts the carried error on both sides, where it
cancels: what is left is K's own error, and the first operation whose own
output is wrong is the one to blame. Where the candidate did not save an
input, it is computed from the inputs before it, and what is judged is the
whole span from the keys the candidate did give, held to the composed
bound of the operations in it (``rounding.py``). Which operation
makes which key, from what, is ``activations.py``'s table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from picogpt2.activations import KEYS, LAST, Operation, Weights
from picogpt2.gpt2 import Params
from picogpt2.oracle.candidates import Layers
from picogpt2.oracle.rounding import Arithmetic, Bound, bound_of

Ref = tuple[str, int | None]  # (key, layer)


def label(key: str, layer: int | None) -> str:
    return key if layer is None else f"{key}[{layer}]"


@dataclass
class Recomputed:
    """A key recomputed in float64 from the candidate's values: the value,
    its rounding bound (per element: how far a correct implementation may
    land from it), the candidate's keys it comes from, and the keys
    recomputed on the way (empty: one operation alone; else a span)."""

    value: np.ndarray
    bound: Bound | None  # None: the candidate's own saved value
    sources: tuple[str, ...]
    inside: tuple[Ref, ...]


class Isolation:
    """The candidate's forward pass, each operation recomputed from its own
    inputs, with its rounding bound in the candidate's ``arithmetic``. Ask
    in forward order: values of earlier layers are let go."""

    def __init__(
        self, params: Params, n_head: int, cand: Layers, ids: np.ndarray, arithmetic: Arithmetic
    ):
        self.params, self.n_head, self.cand, self.ids = params, n_head, cand, ids
        self.arithmetic = arithmetic
        self.n_layer = len(params["blocks"])
        self.memo: dict[Ref, Recomputed] = {}

    def inputs(self, key: str, layer: int | None) -> list[Ref]:
        """The keys the operation making (key, layer) takes, with their layers."""
        op = KEYS[key].operation(layer)
        return [(k, self.n_layer if at == LAST else None if at is None else layer + at)
                for k, at in op.inputs]  # fmt: skip

    def value(self, key: str, layer: int | None) -> Recomputed:
        """The candidate's value of (key, layer), exact as given (no bound);
        where it gave none, one recomputed from the values before it."""
        given = self.cand.get(key, {}).get(layer)
        if given is not None:
            return Recomputed(np.asarray(given, np.float64), None, (label(key, layer),), ())
        found = self.isolated(key, layer)
        return Recomputed(found.value, found.bound, found.sources, (*found.inside, (key, layer)))

    def isolated(self, key: str, layer: int | None) -> Recomputed:
        """(key, layer) recomputed from the candidate's inputs, with its bound."""
        if (key, layer) not in self.memo:
            ins = [self.value(*ref) for ref in self.inputs(key, layer)]
            sources: tuple[str, ...] = ()
            inside: tuple[Ref, ...] = ()
            for found in ins:
                sources += tuple(s for s in found.sources if s not in sources)
                inside += tuple(r for r in found.inside if r not in inside)
            op, w = self.operation(key, layer)
            out = op.compute(w, *(found.value for found in ins))
            bound = bound_of(key, layer)(
                w, self.arithmetic, *((f.value, f.bound) for f in ins), out
            )
            self.memo[(key, layer)] = Recomputed(out, bound, sources or ("ids",), inside)
            self.forget_before(layer)
        return self.memo[(key, layer)]

    def forget_before(self, layer: int | None) -> None:
        """Let go of what later operations no longer need: every value of a
        layer before ``layer``, but the block outputs (hidden)."""
        if layer is None:
            return
        for key, at in list(self.memo):
            if at is not None and at < layer and key != "hidden":
                del self.memo[(key, at)]

    def operation(self, key: str, layer: int | None) -> tuple[Operation, Weights]:
        """The operation making (key, layer), and what it takes beside its inputs."""
        op = KEYS[key].operation(layer)
        block = None if layer is None or key == "hidden" and layer == 0 else layer + op.block
        return op, Weights(self.params, self.n_head, self.ids, block)

    def embeddings(self) -> np.ndarray:
        """hidden[0], from the ids alone."""
        op, w = self.operation("hidden", 0)
        return op.compute(w)


def span(key: str, layer: int | None, found: Recomputed) -> str | None:
    """Words for what was judged when inputs were recomputed: the span from
    the candidate's keys to ``key`` (None: one operation alone)."""
    if not found.inside:
        return None
    blocks = sorted({at + KEYS[k].operation(at).block for k, at in (*found.inside, (key, layer))
                     if at is not None and not (k == "hidden" and at == 0)})  # fmt: skip
    where = ("the whole pass" if found.sources == ("ids",) and key == "logits" else
             f"block {blocks[0]}" if len(blocks) == 1 else
             f"blocks {blocks[0]}-{blocks[-1]}" if blocks else "after the blocks")  # fmt: skip
    return f"{where}, from {', '.join(found.sources)} to {label(key, layer)}"
