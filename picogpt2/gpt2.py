"""GPT-2's forward pass, as small pure functions over arrays.

Read it bottom-up: ``gpt2`` is the whole model, and every function it calls
takes exactly the weights its name stands for, so the call graph is the
weight tree. Names follow OpenAI's checkpoint: ``wte`` (token embeddings,
also the output head), ``wpe`` (position embeddings), ``ln_1``/``ln_2``/
``ln_f`` (layer norms), ``c_attn`` (q, k, v projections in one), ``c_proj``
(output projections), ``c_fc`` (the MLP's expansion). Shapes are in the
comments: ``n_batch`` sequences run side by side (samples of one prompt),
``n_seq`` new positions, ``n_kv`` positions attended to, ``n_embd`` width,
``n_head`` heads of ``head_dim = n_embd // n_head``. The batch changes
nothing in the math: every row is its own sequence.

Pitfalls that implementations get wrong, each pinned down here:
- GELU is the tanh approximation, not the exact erf form;
- layer norm uses the biased variance with eps 1e-5 inside the square root;
- ``c_attn``'s output splits into q, k, v in that order (thirds of its
  3*n_embd columns), then into heads: head h of q is columns
  [h*head_dim, (h+1)*head_dim) of the first third, and likewise for k and
  v; merging the heads puts them back side by side in that order (head 0's
  head_dim columns first) before ``c_proj``;
- attention scores are scaled by 1/sqrt(head_dim) before the causal mask;
- the output head is ``wte`` transposed, with no bias;
- weights are [in, out] (``x @ w``), as stored, never transposed.

Two optional arguments carry state (``state.py``), and neither changes the
math: a layer's ``KVCache`` (the keys and values of the positions it has
seen, so decoding one more token costs one position's work) and a ``Trace``
(an out-parameter that records activations for dumps; the default records
nothing).

Every operation goes through NumPy's functions, which hand CuPy arrays to
CuPy (NEP 13/18 dispatch), so the same lines run on either backend. Scalars
are Python floats so float32 stays float32 (NumPy 2's promotion rules).

Generating runs this pass for a prompt of several tokens; one new position
(each token after it) runs ``fastpath/decode_step.py``, these operations
written into buffers, equal to ``gpt2(..., last_only=True)`` bit for bit
(tested).
"""

from __future__ import annotations

import math

import numpy as np

from picogpt2.state import NO_TRACE, KVCache, Trace

Params = dict  # the weight tree, keyed as in the checkpoint (weights/params.py builds it)

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715  # the cubic term's coefficient in GELU's tanh approximation
LAYER_NORM_EPS = 1e-5


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh approximation of GELU. (x * x * x, not x**3: NumPy's
    general power is 35x slower and this runs on every MLP activation.)"""
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + GELU_CUBIC * (x * x * x))))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; the max is subtracted so exp never overflows."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log(softmax(x)) over the last axis, in float64. Not a step of the
    forward pass, which ends at the logits: it is how scores and dumps
    report them."""
    z = x.astype(np.float64)
    top = np.max(z, axis=-1, keepdims=True)
    return z - top - np.log(np.sum(np.exp(z - top), axis=-1, keepdims=True))


def layer_norm(
    x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = LAYER_NORM_EPS
) -> np.ndarray:
    """[..., n_embd] -> [..., n_embd], normalised over the last axis with
    the biased variance, then scaled by ``g`` and shifted by ``b``."""
    centred = x - np.mean(x, axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return g * centred / np.sqrt(variance + eps) + b


def matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[n_batch, n_seq, n_in] @ [n_in, n_out] -> [n_batch, n_seq, n_out], as
    one matrix product of all n_batch * n_seq rows. (NumPy would multiply a
    3-D x batch row by batch row, reading all of ``w`` once per row: the
    whole cost of decoding several samples.)"""
    n_batch, n_seq, n_in = x.shape
    return np.reshape(np.reshape(x, (n_batch * n_seq, n_in)) @ w, (n_batch, n_seq, -1))


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n_batch, n_seq, n_in] @ [n_in, n_out] + [n_out] -> [n_batch, n_seq, n_out]"""
    return matmul(x, w) + b


def ffn(x: np.ndarray, c_fc: Params, c_proj: Params, trace: Trace = NO_TRACE) -> np.ndarray:
    """[n_batch, n_seq, n_embd] -> [n_batch, n_seq, 4*n_embd] -> [n_batch, n_seq, n_embd]"""
    pre = linear(x, **c_fc)  # [n_batch, n_seq, 4*n_embd]
    h = gelu(pre)
    out = linear(h, **c_proj)
    trace.record(mlp_pre=pre, mlp_hidden=h, mlp_out=out)
    return out


def attention_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """How well each query matches each key, scaled by 1/sqrt(head_dim):
    q [..., n_seq, head_dim], k [..., n_kv, head_dim] -> [..., n_seq, n_kv]"""
    return q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])


def causal_softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the keys each query may see: [..., n_seq, n_kv] -> same,
    the masked entries exactly 0. Query i sits at position n_kv - n_seq + i
    and sees keys up to there."""
    n_seq, n_kv = scores.shape[-2:]
    visible = np.tri(n_seq, n_kv, n_kv - n_seq, dtype=bool, like=scores)
    return softmax(np.where(visible, scores, -np.inf))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, trace: Trace = NO_TRACE) -> np.ndarray:
    """Causal attention of the last ``n_seq`` positions over all ``n_kv``:
    q [n_batch, n_head, n_seq, head_dim], k and v [n_batch, n_head, n_kv,
    head_dim] -> [n_batch, n_head, n_seq, head_dim]"""
    scores = attention_scores(q, k)  # [n_batch, n_head, n_seq, n_kv]
    probs = causal_softmax(scores)
    trace.record(attn_scores=scores, attn=probs)
    return probs @ v


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[n_batch, n_seq, n_embd] -> [n_batch, n_head, n_seq, head_dim]"""
    n_batch, n_seq, n_embd = x.shape
    return np.swapaxes(np.reshape(x, (n_batch, n_seq, n_head, n_embd // n_head)), 1, 2)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[n_batch, n_head, n_seq, head_dim] -> [n_batch, n_seq, n_embd]"""
    n_batch, n_head, n_seq, head_dim = x.shape
    return np.reshape(np.swapaxes(x, 1, 2), (n_batch, n_seq, n_head * head_dim))


def mha(
    x: np.ndarray,
    c_attn: Params,
    c_proj: Params,
    n_head: int,
    cache: KVCache | None = None,
    trace: Trace = NO_TRACE,
) -> np.ndarray:
    """Multi-head causal self-attention, [n_batch, n_seq, n_embd] -> same.
    With a cache, ``x`` continues the positions it holds and attends to them."""
    qkv = linear(x, **c_attn)  # [n_batch, n_seq, 3*n_embd]
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))
    trace.record(q=q, k=k, v=v)  # [n_batch, n_head, n_seq, head_dim] each
    if cache is not None:
        k, v = cache.extend(k, v)  # [n_batch, n_head, n_kv, head_dim]
    heads = merge_heads(attention(q, k, v, trace))  # [n_batch, n_seq, n_embd]
    out = linear(heads, **c_proj)
    trace.record(attn_heads=heads, attn_out=out)
    return out


def transformer_block(
    x: np.ndarray,
    ln_1: Params,
    attn: Params,
    ln_2: Params,
    mlp: Params,
    n_head: int,
    cache: KVCache | None = None,
    trace: Trace = NO_TRACE,
) -> np.ndarray:
    """Pre-norm block with two residual connections, [n_batch, n_seq, n_embd] -> same."""
    h = layer_norm(x, **ln_1)
    x = x + mha(h, **attn, n_head=n_head, cache=cache, trace=trace)
    trace.record(ln_1=h, resid_attn=x)
    h = layer_norm(x, **ln_2)
    x = x + ffn(h, **mlp, trace=trace)
    trace.record(ln_2=h, hidden=x)
    return x


def lm_head(x: np.ndarray, wte: np.ndarray) -> np.ndarray:
    """[n_batch, n_seq, n_embd] -> logits [n_batch, n_seq, n_vocab]: the tied
    embedding, no bias."""
    return matmul(x, wte.T)


def gpt2(
    ids: np.ndarray,
    wte: np.ndarray,
    wpe: np.ndarray,
    blocks: list[Params],
    ln_f: Params,
    n_head: int,
    cache: list[KVCache] | None = None,
    trace: Trace = NO_TRACE,
    *,
    last_only: bool = False,
) -> np.ndarray:
    """Token ids [n_batch, n_seq] -> logits [n_batch, n_seq, n_vocab].

    With ``cache`` (one ``KVCache`` per block), the ids continue the
    positions already cached: they take positions ``past .. past + n_seq``
    and attend to everything before them. ``last_only`` computes the logits
    of the last position alone, [n_batch, 1, n_vocab]: all that choosing the
    next token needs, and the head is the largest matrix of the smaller
    models.
    """
    past = cache[0].length if cache else 0  # every layer has seen the same positions
    x = wte[ids] + wpe[past : past + ids.shape[-1]]  # [n_batch, n_seq, n_embd]
    trace.record(embeddings=x)
    for i, block in enumerate(blocks):
        x = transformer_block(
            x, **block, n_head=n_head, cache=cache[i] if cache else None, trace=trace.layer(i)
        )
    x = layer_norm(x, **ln_f)  # [n_batch, n_seq, n_embd]
    trace.record(ln_f=x)
    return lm_head(x[:, -1:] if last_only else x, wte)
