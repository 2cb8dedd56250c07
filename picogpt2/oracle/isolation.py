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
is the whole span from the keys the candidate did give.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from picogpt2 import gpt2
from picogpt2.oracle.candidates import Layers
from picogpt2.weights.params import Params

Ref = tuple[str, int | None]  # (key, layer)

# Each operation in words, and what it takes: (key, layer offset) pairs;
# hidden at layer i is the block's input, at i + 1 its output.
OPERATIONS: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {
    "ln_1": ("ln_1, the layer norm before attention", (("hidden", 0),)),
    "q": ("the queries: c_attn of ln_1, its first third, in heads", (("ln_1", 0),)),
    "k": ("the keys: c_attn of ln_1, its second third, in heads", (("ln_1", 0),)),
    "v": ("the values: c_attn of ln_1, its last third, in heads", (("ln_1", 0),)),
    "attn_scores": ("the attention scores, q k^T / sqrt(head_dim)", (("q", 0), ("k", 0))),
    "attn": ("softmax of the causally masked scores", (("attn_scores", 0),)),
    "attn_heads": ("attn @ v, the heads merged", (("attn", 0), ("v", 0))),
    "attn_out": ("c_proj of the merged heads", (("attn_heads", 0),)),
    "resid_attn": (
        "the first residual connection, x + attn_out",
        (("hidden", 0), ("attn_out", 0)),
    ),  # fmt: skip
    "ln_2": ("ln_2, the layer norm before the MLP", (("resid_attn", 0),)),
    "mlp_pre": ("c_fc of ln_2", (("ln_2", 0),)),
    "mlp_hidden": ("GELU of c_fc's output", (("mlp_pre", 0),)),
    "mlp_out": ("c_proj of the GELU's output", (("mlp_hidden", 0),)),
}
EMBEDDINGS = "the embeddings, wte[ids] + wpe"
SECOND_RESIDUAL = "the second residual connection, resid_attn + mlp_out"
FINAL = {"ln_f": "ln_f, the final layer norm", "logits": "the output head, ln_f @ wte.T"}


def describe(key: str, layer: int | None) -> str:
    """What the operation producing ``key`` at ``layer`` is, in words."""
    if key == "hidden":
        return EMBEDDINGS if layer == 0 else f"{SECOND_RESIDUAL} (block {layer - 1})"
    if key in FINAL:
        return FINAL[key]
    return f"{OPERATIONS[key][0]} (block {layer})" if key in OPERATIONS else "a key of your own"


def label(key: str, layer: int | None) -> str:
    return key if layer is None else f"{key}[{layer}]"


def _f64(tree: dict) -> dict:
    return {name: np.asarray(w, np.float64) for name, w in tree.items()}


class Isolation:
    """The candidate's forward pass, each operation recomputed from its own
    inputs. Ask in forward order: values of earlier layers are let go."""

    def __init__(self, params: Params, n_head: int, cand: Layers, ids: np.ndarray) -> None:
        self.params, self.n_head, self.cand, self.ids = params, n_head, cand, ids
        self.n_layer = len(params["blocks"])
        self.memo: dict[Ref, tuple[np.ndarray, tuple[str, ...]]] = {}

    def inputs(self, key: str, layer: int | None) -> list[Ref]:
        if key == "hidden":
            return [] if layer == 0 else [("resid_attn", layer - 1), ("mlp_out", layer - 1)]
        if key == "ln_f":
            return [("hidden", self.n_layer)]
        if key == "logits":
            return [("ln_f", None)]
        return [(k, layer + offset) for k, offset in OPERATIONS[key][1]]

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
        """The spec's operation (``gpt2.py``) on one sequence, in float64."""
        if key == "hidden":
            return self.embeddings() if layer == 0 else args[0] + args[1]
        if key == "ln_f":
            return gpt2.layer_norm(args[0], **_f64(self.params["ln_f"]))
        if key == "logits":
            return gpt2.lm_head(args[0][None], np.asarray(self.params["wte"], np.float64))[0]
        return self.block_op(key, self.params["blocks"][layer], args)

    def embeddings(self) -> np.ndarray:
        wte, wpe = self.params["wte"], self.params["wpe"]
        return np.asarray(wte[self.ids], np.float64) + np.asarray(wpe[: len(self.ids)], np.float64)

    def block_op(self, key: str, block: Params, args: list[np.ndarray]) -> np.ndarray:
        ops: dict[str, Callable[[], np.ndarray]] = {
            "ln_1": lambda: gpt2.layer_norm(args[0], **_f64(block["ln_1"])),
            "attn_scores": lambda: gpt2.attention_scores(args[0], args[1]),
            "attn": lambda: gpt2.causal_softmax(args[0]),
            "attn_heads": lambda: gpt2.merge_heads((args[0] @ args[1])[None])[0],
            "attn_out": lambda: gpt2.linear(args[0][None], **_f64(block["attn"]["c_proj"]))[0],
            "resid_attn": lambda: args[0] + args[1],
            "ln_2": lambda: gpt2.layer_norm(args[0], **_f64(block["ln_2"])),
            "mlp_pre": lambda: gpt2.linear(args[0][None], **_f64(block["mlp"]["c_fc"]))[0],
            "mlp_hidden": lambda: gpt2.gelu(args[0]),
            "mlp_out": lambda: gpt2.linear(args[0][None], **_f64(block["mlp"]["c_proj"]))[0],
        }
        if key in ops:
            return ops[key]()
        qkv = gpt2.linear(args[0][None], **_f64(block["attn"]["c_attn"]))  # q, k or v
        third = np.split(qkv, 3, axis=-1)["qkv".index(key)]
        return gpt2.split_heads(third, self.n_head)[0]
