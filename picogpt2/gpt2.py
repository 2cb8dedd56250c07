"""GPT-2's forward pass, as small pure functions over arrays.

Names follow OpenAI's checkpoint: ``wte`` (token embeddings, also the output
head), ``wpe`` (position embeddings), ``ln_1``/``ln_2``/``ln_f`` (layer
norms), ``c_attn`` (q, k, v projections in one), ``c_proj`` (output
projections), ``c_fc`` (the MLP's expansion). Shapes are in the comments:
``n_seq`` new positions, ``n_kv`` positions attended to, ``n_embd`` width,
``n_head`` heads of ``head_dim = n_embd // n_head``.

Pitfalls that implementations get wrong, each pinned down here:
- GELU is the tanh approximation, not the exact erf form;
- layer norm uses the biased variance with eps 1e-5 inside the square root;
- ``c_attn``'s output splits into q, k, v in that order, then into heads;
- attention scores are scaled by 1/sqrt(head_dim) before the causal mask;
- the output head is ``wte`` transposed, with no bias;
- weights are [in, out] (``x @ w``), as stored, never transposed.

Every operation goes through NumPy's functions, which hand CuPy arrays to
CuPy (NEP 13/18 dispatch), so the same lines run on either backend. Scalars
are Python floats so float32 stays float32 (NumPy 2's promotion rules).
"""

from __future__ import annotations

import math

import numpy as np

Params = dict  # the tree of weights, keyed as in the checkpoint (see model.py)
Trace = dict  # optional out-parameter collecting activations for dumps

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh approximation of GELU. (x * x * x, not x**3: NumPy's
    general power is 35x slower and this runs on every MLP activation.)"""
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; the max is subtracted so exp never overflows."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """[n_seq, n_embd] -> [n_seq, n_embd], normalised over the last axis with
    the biased variance, then scaled by ``g`` and shifted by ``b``."""
    centred = x - np.mean(x, axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return g * centred / np.sqrt(variance + eps) + b


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n_seq, n_in] @ [n_in, n_out] + [n_out] -> [n_seq, n_out]"""
    return x @ w + b


def ffn(x: np.ndarray, c_fc: Params, c_proj: Params) -> np.ndarray:
    """[n_seq, n_embd] -> [n_seq, 4*n_embd] -> [n_seq, n_embd]"""
    return linear(gelu(linear(x, **c_fc)), **c_proj)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal attention of the last ``n_seq`` positions over all ``n_kv``.

    q [n_head, n_seq, head_dim], k and v [n_head, n_kv, head_dim]
    -> (output [n_head, n_seq, head_dim], probabilities [n_head, n_seq, n_kv])
    """
    n_seq, n_kv = q.shape[1], k.shape[1]
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # [n_head, n_seq, n_kv]
    # Query i sits at position n_kv - n_seq + i and sees keys up to there.
    visible = np.tri(n_seq, n_kv, n_kv - n_seq, dtype=bool, like=q)
    probs = softmax(np.where(visible, scores, -np.inf))
    return probs @ v, probs


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[n_seq, n_embd] -> [n_head, n_seq, head_dim]"""
    n_seq, n_embd = x.shape
    return np.swapaxes(np.reshape(x, (n_seq, n_head, n_embd // n_head)), 0, 1)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[n_head, n_seq, head_dim] -> [n_seq, n_embd]"""
    n_head, n_seq, head_dim = x.shape
    return np.reshape(np.swapaxes(x, 0, 1), (n_seq, n_head * head_dim))


class KVCache:
    """Keys and values of every layer for the positions seen so far.

    Each layer's buffers are allocated once for the whole context and never
    read beyond ``length`` (how many positions they hold), so they start
    uninitialised: zeroing them would cost a pass over memory on every
    generation. One array per layer, not one for all, keeps each allocation
    small enough for the allocator to recycle between generations.
    """

    def __init__(self, n_layer: int, n_head: int, n_ctx: int, head_dim: int, like: np.ndarray):
        shape = (n_head, n_ctx, head_dim)
        self.k = [np.empty(shape, dtype=like.dtype, like=like) for _ in range(n_layer)]
        self.v = [np.empty(shape, dtype=like.dtype, like=like) for _ in range(n_layer)]
        self.length = 0

    def store(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append [n_head, n_seq, head_dim] keys and values of ``layer`` after
        the first ``length`` positions; return all of them, [n_head, n_kv, head_dim]."""
        end = self.length + k.shape[1]
        self.k[layer][:, self.length : end] = k
        self.v[layer][:, self.length : end] = v
        return self.k[layer][:, :end], self.v[layer][:, :end]


def mha(
    x: np.ndarray,
    c_attn: Params,
    c_proj: Params,
    n_head: int,
    cache: KVCache | None = None,
    layer: int = 0,
    trace: Trace | None = None,
) -> np.ndarray:
    """Multi-head causal self-attention, [n_seq, n_embd] -> [n_seq, n_embd]."""
    qkv = linear(x, **c_attn)  # [n_seq, 3*n_embd]
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))
    if cache is not None:
        k, v = cache.store(layer, k, v)  # [n_head, n_kv, head_dim]
    out, probs = attention(q, k, v)
    if trace is not None:
        trace["attn"].append(probs)
    return linear(merge_heads(out), **c_proj)


def transformer_block(
    x: np.ndarray,
    ln_1: Params,
    attn: Params,
    ln_2: Params,
    mlp: Params,
    n_head: int,
    cache: KVCache | None = None,
    layer: int = 0,
    trace: Trace | None = None,
) -> np.ndarray:
    """Pre-norm block with two residual connections, [n_seq, n_embd] -> same."""
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, cache=cache, layer=layer,
                trace=trace)  # fmt: skip
    return x + ffn(layer_norm(x, **ln_2), **mlp)


def gpt2_hidden(
    ids: np.ndarray,
    params: Params,
    n_head: int,
    cache: KVCache | None = None,
    trace: Trace | None = None,
) -> np.ndarray:
    """Token ids [n_seq] -> final normed hidden states [n_seq, n_embd].

    With a cache, the ids continue the ``cache.length`` positions already
    seen: they take positions ``wpe[past : past + n_seq]`` and attend to the
    cached keys. With a ``trace`` dict holding lists ``hidden`` and ``attn``,
    the residual stream after the embeddings and after every block, and each
    layer's attention probabilities, are appended to them, and ``ln_f`` set.
    """
    past = cache.length if cache is not None else 0
    x = params["wte"][ids] + params["wpe"][past : past + len(ids)]  # [n_seq, n_embd]
    if trace is not None:
        trace["hidden"].append(x)
    for layer, block in enumerate(params["blocks"]):
        x = transformer_block(x, **block, n_head=n_head, cache=cache, layer=layer, trace=trace)
        if trace is not None:
            trace["hidden"].append(x)
    if cache is not None:
        cache.length += len(ids)
    x = layer_norm(x, **params["ln_f"])
    if trace is not None:
        trace["ln_f"] = x
    return x


def lm_head(x: np.ndarray, wte: np.ndarray) -> np.ndarray:
    """[n_seq, n_embd] -> logits [n_seq, n_vocab]: the tied embedding, no bias."""
    return x @ wte.T


def gpt2(ids: np.ndarray, params: Params, n_head: int, cache: KVCache | None = None) -> np.ndarray:
    """Token ids [n_seq] -> logits [n_seq, n_vocab]."""
    return lm_head(gpt2_hidden(ids, params, n_head, cache), params["wte"])
