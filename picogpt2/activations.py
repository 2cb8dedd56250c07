"""The activations a dump holds: each key's shape, the point in the math it
is taken at (``gpt2.py`` records it there), and the tolerance to hold an
implementation to. ``n`` is the number of input tokens; keys marked per
layer are stacked over the ``n_layer`` blocks, in the order of the forward
pass.

Tolerances are relative to the largest magnitude of the reference (per
layer for stacked keys): a comparison passes when ``max |candidate -
reference| <= atol + rtol * max |reference|``. ``rtol32`` holds a float32
implementation against our float64 reference (its own rounding only);
against our float32 dump it is doubled (both sides round). Two float64
implementations must agree to ``RTOL64``. The float32 figure is 14x the
largest error measured (below); a real bug moves a value by far more.
"""

from __future__ import annotations

from dataclasses import dataclass

# Measured on 124M shapes (random weights, 64 and 512 tokens): our float32
# pass, and transformers' in float32, differ from our float64 pass by at
# most 1.4e-6 of the largest magnitude, for every key and layer.
RTOL32 = 2e-5
RTOL64 = 1e-10
# An operation alone (compare --model recomputes it from the candidate's own
# inputs) carries none of the error before it, only its own rounding: our
# float32 at most 4e-7, sums taken left to right in float32 at most 2.4e-6
# (mlp_out's 3072-term sums), elementwise operations 1e-7 (124M shapes;
# benchmarks/calibrate_float32.py). So these are much tighter than RTOL32,
# and a bug too small to see in the carried error shows alone.
ALONE_ELEMENTWISE = 1e-6  # adds, softmax, GELU
ALONE_NORM = 5e-6  # layer norms: sums over n_embd
ALONE_PRODUCT = 1e-5  # matrix products over n_embd, or over the positions
ALONE_LONG = 2e-5  # the MLP's projection, over 4*n_embd


@dataclass(frozen=True)
class Key:
    name: str
    shape: str
    where: str
    rtol32: float
    alone32: float = ALONE_PRODUCT
    per_layer: bool = True


# The inside of block i, in forward order (dump --detail).
BLOCK = (
    Key("ln_1", "[n_layer, n, n_embd]", "ln_1(x), the input of attention", RTOL32, ALONE_NORM),
    Key("q", "[n_layer, n_head, n, head_dim]", "queries: c_attn's first third, in heads", RTOL32),
    Key("k", "[n_layer, n_head, n, head_dim]", "keys: c_attn's second third", RTOL32),
    Key("v", "[n_layer, n_head, n, head_dim]", "values: c_attn's last third", RTOL32),
    Key(
        "attn_scores",
        "[n_layer, n_head, n, n]",
        "q k^T / sqrt(head_dim), before the mask (judged on the causal triangle)",
        RTOL32,
    ),
    Key(
        "attn",
        "[n_layer, n_head, n, n]",
        "softmax of the masked scores: masked entries (j > i) exactly 0",
        RTOL32,
        ALONE_ELEMENTWISE,
    ),
    Key("attn_heads", "[n_layer, n, n_embd]", "attn @ v, the heads merged, before c_proj", RTOL32),
    Key("attn_out", "[n_layer, n, n_embd]", "c_proj of attn_heads", RTOL32),
    Key(
        "resid_attn",
        "[n_layer, n, n_embd]",
        "x + attn_out: the residual stream mid-block",
        RTOL32,
        ALONE_ELEMENTWISE,
    ),
    Key(
        "ln_2",
        "[n_layer, n, n_embd]",
        "ln_2 of the residual stream, the MLP's input",
        RTOL32,
        ALONE_NORM,
    ),
    Key("mlp_pre", "[n_layer, n, 4*n_embd]", "c_fc(ln_2), before GELU", RTOL32),
    Key("mlp_hidden", "[n_layer, n, 4*n_embd]", "gelu(mlp_pre)", RTOL32, ALONE_ELEMENTWISE),
    Key("mlp_out", "[n_layer, n, n_embd]", "c_proj of mlp_hidden", RTOL32, ALONE_LONG),
)
HIDDEN = Key(
    "hidden",
    "[n_layer+1, n, n_embd]",
    "the residual stream: [0] = wte[ids] + wpe, [i+1] = block i's output (no final norm)",
    RTOL32,
    ALONE_ELEMENTWISE,
)
LN_F = Key("ln_f", "[n, n_embd]", "ln_f(hidden[-1])", RTOL32, ALONE_NORM, per_layer=False)
LOGITS = Key(
    "logits", "[n, n_vocab]", "ln_f @ wte.T, compared as log-softmax", RTOL32, per_layer=False
)
IDS = Key("ids", "[n] int64", "the input tokens (must be equal)", 0.0, per_layer=False)

KEYS = {key.name: key for key in (IDS, HIDDEN, *BLOCK, LN_F, LOGITS)}
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
