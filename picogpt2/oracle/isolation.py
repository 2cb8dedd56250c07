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
input, it is computed from the inputs before it, and the operation judged
is the whole span from the keys the candidate did give. Which operation
makes which key, from what, is ``activations.py``'s table.
"""

from __future__ import annotations

import numpy as np

from picogpt2.activations import KEYS, LAST, Weights
from picogpt2.gpt2 import Params
from picogpt2.oracle.candidates import Layers

Ref = tuple[str, int | None]  # (key, layer)


def label(key: str, layer: int | None) -> str:
    return key if layer is None else f"{key}[{layer}]"


class Isolation:
    """The candidate's forward pass, each operation recomputed from its own
    inputs. Ask in forward order: values of earlier layers are let go."""

    def __init__(self, params: Params, n_head: int, cand: Layers, ids: np.ndarray) -> None:
        self.params, self.n_head, self.cand, self.ids = params, n_head, cand, ids
        self.n_layer = len(params["blocks"])
        self.memo: dict[Ref, tuple[np.ndarray, tuple[str, ...]]] = {}

    def inputs(self, key: str, layer: int | None) -> list[Ref]:
        """The keys the operation making (key, layer) takes, with their layers."""
        op = KEYS[key].operation(layer)
        return [(k, self.n_layer if at == LAST else None if at is None else layer + at)
                for k, at in op.inputs]  # fmt: skip

    def value(self, key: str, layer: int | None) -> tuple[np.ndarray, tuple[str, ...]]:
        """The candidate's value of (key, layer) or, where it gave none, one
        recomputed from the values before it; and the candidate's keys it
        comes from."""
        given = self.cand.get(key, {}).get(layer)
        if given is not None:
            return np.asarray(given, np.float64), (label(key, layer),)
        return self.isolated(key, layer)

    def isolated(self, key: str, layer: int | None) -> tuple[np.ndarray, tuple[str, ...]]:
        """(key, layer) recomputed from the candidate's inputs, and the
        candidate's keys those came from."""
        if (key, layer) not in self.memo:
            values, sources = [], ()
            for ref in self.inputs(key, layer):
                value, source = self.value(*ref)
                values.append(value)
                sources += tuple(s for s in source if s not in sources)
            self.memo[(key, layer)] = self.compute(key, layer, values), sources or ("ids",)
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

    def compute(self, key: str, layer: int | None, args: list[np.ndarray]) -> np.ndarray:
        """The spec's operation making (key, layer), on one sequence, in float64."""
        op = KEYS[key].operation(layer)
        block = None if layer is None or key == "hidden" and layer == 0 else layer + op.block
        return op.compute(Weights(self.params, self.n_head, self.ids, block), *args)

    def embeddings(self) -> np.ndarray:
        """hidden[0], from the ids alone."""
        return self.compute("hidden", 0, [])
