"""The activations of a forward pass, and the operation that makes each:
GPT-2's graph, once.

``gpt2.py`` records each key at the line that computes it (a ``Trace``), a
dump holds them, and ``compare`` judges them. For every key this table
says its shape, the operation that makes it (in words, and as code: the
spec's own functions, on one sequence), the keys that operation takes, and
how far rounding alone may move its output (its bound, from its arithmetic:
``oracle/rounding.py``). ``n`` is the number of input tokens; keys marked per layer are
stacked over the ``n_layer`` blocks, in the order of the forward pass.
Everything else derives from this table: blame by isolation recomputes each
operation from a candidate's own inputs (``oracle/isolation.py``), llm.c's
names are read through ``llmc`` (``oracle/candidates.py``), and the key
table of docs/oracle.md is rendered from it (``tests/test_docs.py``).

A candidate is judged twice. Its operations, each recomputed from its own
inputs, are held to their rounding bounds, element by element (``compare
--model``). Its keys are held to the reference, carried errors and all, by
the end-to-end tolerance, relative to the largest magnitude of the
reference (per layer for stacked keys): ``max |candidate - reference| <=
atol + rtol * max |reference|``. ``RTOL32`` holds a float32 implementation
against our float64 reference; against our float32 dump it is doubled (both
sides round). Two float64 implementations must agree to ``RTOL64``. The
float32 figure is measured (below), not derived: how rounding grows through
a whole pass depends on the weights; it is the guide when the model is not
given, and a check beside the bounds when it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from picogpt2 import gpt2

# Measured on 124M shapes (random weights, 64 and 512 tokens): our float32
# pass, and transformers' in float32, differ from our float64 pass by at
# most 1.4e-6 of the largest magnitude, for every key and layer.
RTOL32 = 2e-5
RTOL64 = 1e-10
# Candidates that convert each matrix product's input to float16, bfloat16
# or Q8_0 blocks (--precision; llama.cpp's CPU kernels with such weights):
# about ten times the largest error a correct one carried at 124M's widths,
# 12 blocks, 64 and 256 tokens (benchmarks/calibrate_float32.py: 1.0e-3,
# 9.0e-3 and 2.9e-2).
RTOL_REDUCED = {"float16": 1e-2, "bfloat16": 1e-1, "q8_0": 3e-1}
LAST = "last"  # an input's layer: the last block's output (what ln_f takes)


class Weights:
    """What an operation takes beside its inputs: the model's weights (in
    float64 when asked for), ``n_head``, the input ids, and the block the
    operation is in."""

    def __init__(self, params: gpt2.Params, n_head: int, ids: np.ndarray, block: int | None):
        self.params, self.n_head, self.ids, self.block = params, n_head, ids, block

    def __call__(self, *path: str) -> dict[str, np.ndarray]:
        """The weights at ``path`` (in the block, if the operation is in
        one), float64: ``w("attn", "c_proj")`` -> {"w": ..., "b": ...}."""
        node = self.params if self.block is None else self.params["blocks"][self.block]
        for name in path:
            node = node[name]
        return {k: np.asarray(v, np.float64) for k, v in node.items()}


def _one(fn: Callable[..., np.ndarray], x: np.ndarray, **weights: np.ndarray) -> np.ndarray:
    """``fn`` on one sequence (the spec's functions take a batch)."""
    return fn(x[None], **weights)[0]


def third_weights(w: Weights, i: int) -> tuple[np.ndarray, np.ndarray]:
    """c_attn's columns (and bias) that make q, k or v (``i``: 0, 1, 2)."""
    c_attn = w("attn", "c_attn")
    return np.split(c_attn["w"], 3, axis=-1)[i], np.split(c_attn["b"], 3)[i]


def _third(w: Weights, x: np.ndarray, i: int) -> np.ndarray:
    """q, k or v (third ``i`` of c_attn's output), in heads."""
    weight, bias = third_weights(w, i)
    return gpt2.split_heads(gpt2.linear(x[None], weight, bias), w.n_head)[0]


def heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[n, n_embd] -> [n_head, n, head_dim]"""
    return gpt2.split_heads(x[None], n_head)[0]


def merged(x: np.ndarray) -> np.ndarray:
    """[n_head, n, head_dim] -> [n, n_embd]"""
    return gpt2.merge_heads(x[None])[0]


def _embeddings(w: Weights) -> np.ndarray:
    wte, wpe = w.params["wte"], w.params["wpe"]
    return np.asarray(wte[w.ids], np.float64) + np.asarray(wpe[: len(w.ids)], np.float64)


@dataclass(frozen=True)
class Operation:
    """What makes a key: in words, the keys it takes (``(key, layer
    offset)``: an offset from the key's own layer, None for a key that is
    not per layer, ``LAST`` for the last block's output), the spec's code
    for it (``compute(weights, *inputs)``, one sequence), and what its
    rounding bound is made of, in words (``oracle/rounding.py`` derives
    each bound). ``block`` is the offset of the block it belongs to (-1: a
    block's output is hidden[i + 1])."""

    what: str
    inputs: tuple[tuple[str, int | str | None], ...]
    compute: Callable[..., np.ndarray]
    rounding: str
    block: int = 0


@dataclass(frozen=True)
class Key:
    """One activation: its name, its shape, the operation that makes it (at
    layer 0, ``first`` when it differs: hidden[0] is the embeddings), its
    name in llm.c's ``ActivationTensors`` when that is this very tensor,
    and what else an implementer must know of it."""

    name: str
    shape: str
    made_by: Operation | None
    first: Operation | None = None
    per_layer: bool = True
    llmc: str = ""
    note: str = ""

    def operation(self, layer: int | None) -> Operation | None:
        """The operation that makes this key at ``layer``."""
        return self.first if layer == 0 and self.first else self.made_by

    @property
    def ndim(self) -> int:
        return self.shape.count(",") + 1


def _block_key(name: str, shape: str, what: str, inputs: tuple, compute: Callable, rounding: str,
               llmc: str = "", note: str = "") -> Key:  # fmt: skip
    return Key(name, shape, Operation(what, inputs, compute, rounding), llmc=llmc, note=note)


# The words for each bound (docs/oracle.md gives the formulas and figures).
SUM = "sum of {} products"
ELEMENTWISE = "one rounding"
E, H = "[n_layer, n, n_embd]", "[n_layer, n_head, n, head_dim]"
# The inside of block i, in forward order (dump --detail).
BLOCK = (
    _block_key("ln_1", E, "ln_1, the layer norm before attention", (("hidden", 0),),
               lambda w, x: gpt2.layer_norm(x, **w("ln_1")),
               "layer norm: sums of n_embd", "ln1"),
    _block_key("q", H, "the queries: c_attn of ln_1, its first third, in heads", (("ln_1", 0),),
               lambda w, x: _third(w, x, 0), SUM.format("n_embd"),
               note="head h is columns [h·head_dim, (h+1)·head_dim) of its third"),
    _block_key("k", H, "the keys: c_attn of ln_1, its second third, in heads", (("ln_1", 0),),
               lambda w, x: _third(w, x, 1), SUM.format("n_embd")),
    _block_key("v", H, "the values: c_attn of ln_1, its last third, in heads", (("ln_1", 0),),
               lambda w, x: _third(w, x, 2), SUM.format("n_embd")),
    _block_key("attn_scores", "[n_layer, n_head, n, n]",
               "the attention scores, q k^T / sqrt(head_dim)", (("q", 0), ("k", 0)),
               lambda w, q, k: gpt2.attention_scores(q, k),
               SUM.format("head_dim"), "preatt",
               "before the mask: row i is query position i, column j key position j; judged "
               "on the causal triangle (j <= i) alone"),
    _block_key("attn", "[n_layer, n_head, n, n]", "softmax of the causally masked scores",
               (("attn_scores", 0),), lambda w, s: gpt2.causal_softmax(s),
               "softmax: exp of s - max, a sum of i + 1", "att",
               "the masked entries (j > i) are exactly 0"),
    _block_key("attn_heads", E, "attn @ v, the heads merged", (("attn", 0), ("v", 0)),
               lambda w, p, v: merged(p @ v),
               SUM.format("i + 1"), "atty",
               "side by side, head 0's head_dim columns first, before c_proj"),
    _block_key("attn_out", E, "c_proj of the merged heads", (("attn_heads", 0),),
               lambda w, x: _one(gpt2.linear, x, **w("attn", "c_proj")),
               SUM.format("n_embd"), "attproj"),
    _block_key("resid_attn", E, "the first residual connection, x + attn_out",
               (("hidden", 0), ("attn_out", 0)), lambda w, x, y: x + y, ELEMENTWISE,
               "residual2", "the residual stream mid-block"),
    _block_key("ln_2", E, "ln_2, the layer norm before the MLP", (("resid_attn", 0),),
               lambda w, x: gpt2.layer_norm(x, **w("ln_2")),
               "layer norm: sums of n_embd", "ln2"),
    _block_key("mlp_pre", "[n_layer, n, 4*n_embd]", "c_fc of ln_2", (("ln_2", 0),),
               lambda w, x: _one(gpt2.linear, x, **w("mlp", "c_fc")),
               SUM.format("n_embd"), "fch", "before GELU"),
    _block_key("mlp_hidden", "[n_layer, n, 4*n_embd]", "GELU of c_fc's output",
               (("mlp_pre", 0),), lambda w, x: gpt2.gelu(x), "GELU: tanh, a few roundings",
               "fch_gelu", "GELU's tanh form"),
    _block_key("mlp_out", E, "c_proj of the GELU's output", (("mlp_hidden", 0),),
               lambda w, x: _one(gpt2.linear, x, **w("mlp", "c_proj")),
               SUM.format("4*n_embd"), "fcproj"),
)  # fmt: skip
HIDDEN = Key(
    "hidden",
    "[n_layer+1, n, n_embd]",
    Operation("the second residual connection, resid_attn + mlp_out",
              (("resid_attn", -1), ("mlp_out", -1)), lambda w, x, y: x + y, ELEMENTWISE, -1),
    first=Operation("the embeddings, wte[ids] + wpe", (), _embeddings, ELEMENTWISE),
    note="the residual stream: hidden[0] = wte[ids] + wpe[:n] (recorded as embeddings), "
    "hidden[i+1] = block i's output, before any final norm",
)  # fmt: skip
LN_F = Key(
    "ln_f",
    "[n, n_embd]",
    Operation("ln_f, the final layer norm", (("hidden", LAST),),
              lambda w, x: gpt2.layer_norm(x, **w("ln_f")),
              "layer norm: sums of n_embd"),
    per_layer=False,
    llmc="lnf",
)  # fmt: skip
LOGITS = Key(
    "logits",
    "[n, n_vocab]",
    Operation("the output head, ln_f @ wte.T", (("ln_f", None),),
              lambda w, x: gpt2.lm_head(x[None], np.asarray(w.params["wte"], np.float64))[0],
              SUM.format("n_embd")),
    per_layer=False,
    note="every position; compared as log-softmax",
)  # fmt: skip
IDS = Key("ids", "[n] int64", None, per_layer=False, note="the input tokens (must be equal)")

KEYS = {key.name: key for key in (IDS, HIDDEN, *BLOCK, LN_F, LOGITS)}
EMBEDDINGS = "embeddings"  # what gpt2 records hidden[0] as, before the blocks
ATTN_DEFAULT = "attn"  # the one block key a plain dump holds (with --attn)

# dump --generate N: one row per generated token (teacher forcing: the
# figures come from one forward pass over the prompt and the first N-1 new
# ids). The other keys still cover the prompt only.
GENERATION = {
    "gen_ids": "[N] int64: the ids chosen",
    "gen_logprob": "[N] float64: log-softmax of the chosen id",
    "gen_top_ids": "[N, 5] int64: the five most likely ids",
    "gen_top_logprobs": "[N, 5] float64: their log-softmax",
    "gen_top_logits": "[N, 5]: their logits",
    "gen_gap": "[N] float64: the gap between the two largest logits",
}


def forward_order(n_layer: int) -> list[tuple[str, int | None]]:
    """(key, layer) in the order the forward pass computes them; layer
    None for keys that are not stacked."""
    order: list[tuple[str, int | None]] = [("ids", None), ("hidden", 0)]
    for i in range(n_layer):
        order += [(key.name, i) for key in BLOCK] + [("hidden", i + 1)]
    return order + [("ln_f", None), ("logits", None)]


def describe(key: str, layer: int | None) -> str:
    """What makes ``key`` at ``layer``, in words, with its block."""
    if key in GENERATION:
        return GENERATION[key].split(": ", 1)[1] + " (dump --generate)"
    op = KEYS[key].operation(layer) if key in KEYS else None
    if op is None:
        return "a key of your own"
    if layer is None or (key == "hidden" and layer == 0):
        return op.what
    return f"{op.what} (block {layer + op.block})"
