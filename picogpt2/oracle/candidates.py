"""Reading a candidate's activations under the names people save them, into
ours, one layer at a time: what ``compare`` judges.

Three namings are understood, each change said in a one-line note:

- ours (``dump``'s keys, ``activations.py``), stacked over layers
  (``q`` [n_layer, n_head, n, head_dim]) or one layer at a time (``q[0]``
  in an ``.npz``, or ``q.0.npy`` in a folder);
- llm.c's ``ActivationTensors``: ``encoded``, ``ln1``, ``qkv``, ``preatt``,
  ``att``, ``atty``, ``attproj``, ``residual2``, ``ln2``, ``fch``,
  ``fch_gelu``, ``fcproj``, ``residual3``, ``lnf`` and ``logits``, with
  their batch axis (B = 1) and the padded vocabulary;
- transformers' outputs: ``hidden_states`` (n_layer + 1 of them, the last
  after ``ln_f``: transformers' convention, not a bug) and ``attentions``;
- llama.cpp's graph nodes, one layer each (``attn_norm-0``; the recipe in
  docs/llamacpp.md saves them): ``inpL``, ``attn_norm``, ``wqkv_b`` (q, k
  and v side by side), ``kq`` (q k^T before the scale: scaled here),
  ``kq_soft_max``, ``kqv_out``, ``ffn_inp``, ``ffn_norm``, ``ffn_up_b``,
  ``ffn_gelu``, ``ffn_out``, ``l_out``, ``result_norm`` and
  ``result_output``; the attention's columns (the KV cache's cells, padded)
  are trimmed to the tokens, and an array saved in ggml's order (``ne``,
  fastest first) is read in NumPy's.

A batch axis of 1 is dropped and a padded vocabulary trimmed to the
reference's. Arrays stay views of the files they were read from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from picogpt2.activations import KEYS
from picogpt2.util.errors import InputError

Layers = dict[str, dict[int | None, np.ndarray]]  # key -> layer (None: not per layer) -> array

# llm.c's name -> ours, for the tensors that are one of our keys as they are
# (the table's ``llmc``); the others are remapped below: encoded is hidden[0],
# residual3 hidden[1:], qkv is q, k and v side by side.
LLMC = {key.llmc: key.name for key in KEYS.values() if key.llmc}
LLMC_OTHER = ("encoded", "qkv", "residual3")
# Dimensions with the batch axis: one more than ours (a stacked key: one
# layer of it, plus llm.c's layer axis); encoded is one layer of hidden.
LLMC_NDIM = {**{name: KEYS[key].ndim + 1 for name, key in LLMC.items()}, "encoded": 3,
             "qkv": 4, "residual3": 4}  # fmt: skip
LLMC_IGNORED = ("ln1_mean", "ln1_rstd", "ln2_mean", "ln2_rstd", "lnf_mean", "lnf_rstd", "probs",
                "losses")  # fmt: skip
TRANSFORMERS = ("hidden_states", "attentions")
# llama.cpp's node -> (our key, layer offset): l_out-i is hidden[i + 1];
# wqkv_b (split) and kq (scaled) are read apart below.
LLAMACPP = {"attn_norm": ("ln_1", 0), "kq_soft_max": ("attn", 0), "kqv_out": ("attn_heads", 0),
            "ffn_inp": ("resid_attn", 0), "ffn_norm": ("ln_2", 0), "ffn_up_b": ("mlp_pre", 0),
            "ffn_gelu": ("mlp_hidden", 0), "ffn_out": ("mlp_out", 0), "l_out": ("hidden", 1),
            "kq": ("attn_scores", 0), "wqkv_b": ("q", 0)}  # fmt: skip
LLAMACPP_TOP = {"inpL": ("hidden", 0), "result_norm": ("ln_f", None),
                "result_output": ("logits", None)}  # fmt: skip
LLAMACPP_NODE = re.compile(rf"^(?P<node>{'|'.join(LLAMACPP)})-(?P<i>\d+)$")
ONE_LAYER = re.compile(r"^(?P<key>[a-z_0-9]+?)(?:\[(?P<i>\d+)\]|\.(?P<j>\d+))$")


@dataclass
class Activations:
    """A dump, one layer at a time, under our names, with what was changed."""

    layers: Layers = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, layer: int | None, array: np.ndarray) -> None:
        self.layers.setdefault(key, {})[layer] = array

    def floats(self) -> list[np.ndarray]:
        return [a for by in self.layers.values() for a in by.values() if a.dtype.kind == "f"]


def read_ours(dump: Mapping[str, np.ndarray], reference: Activations | None = None) -> Activations:
    """A dump in our names (the reference always is); a candidate's stacked
    keys are checked against ``reference`` before they are split."""
    out = Activations()
    single = []
    for name, array in dump.items():
        one = ONE_LAYER.match(name)
        if one and one["key"] in KEYS:
            if not KEYS[one["key"]].per_layer:
                raise InputError(f"{name}: {one['key']} is not per layer: save it as {one['key']}")
            out.add(one["key"], int(one["i"] or one["j"]), array)
            single.append(name)
        elif name in KEYS and KEYS[name].per_layer:
            for i, layer in enumerate(_stacked(name, array, name, 0, reference)):
                out.add(name, i, layer)
        else:
            out.add(name, None, array)
    if single:
        shown = ", ".join(sorted(single)[:3]) + (", ..." if len(single) > 3 else "")
        out.notes.append(f"read {len(single)} keys saved one layer at a time ({shown})")
    return out


def read_candidate(dump: Mapping[str, np.ndarray], reference: Activations) -> Activations:
    """A candidate's dump in any of the namings, shaped like ``reference``.
    Every array's dtype and shape is checked before its values are read:
    numbers only (no complex, bool or text), and stacked keys that are the
    reference's layers."""
    for name, array in dump.items():
        if array.dtype.kind not in "fiu":
            raise InputError(
                f"{name}: the candidate holds {array.dtype} values, not numbers (integers for "
                "ids, floats for the activations)"
            )
    llmc = [name for name in dump if name in LLMC or name in LLMC_OTHER]
    theirs = [name for name in dump if name in TRANSFORMERS]
    llama = [name for name in dump if LLAMACPP_NODE.match(name) or name in LLAMACPP_TOP]
    named = llmc + theirs + llama
    ours = {k: v for k, v in dump.items() if k not in LLMC_IGNORED and k not in named}
    out = read_ours(ours, reference)
    if llmc:
        _read_llmc({k: dump[k] for k in llmc}, reference, out)
    if theirs:
        _read_transformers({k: dump[k] for k in theirs}, reference, out)
    if llama:
        _read_llamacpp({k: dump[k] for k in llama}, reference, out)
    if any(k in dump for k in LLMC_IGNORED):
        out.notes.append("llm.c's means, reciprocal standard deviations, probs and losses: "
                         "not compared")  # fmt: skip
    _match_shapes(out, reference)
    return out


def _n_head(reference: Activations) -> int | None:
    for key in ("q", "attn", "attn_scores"):
        if key in reference.layers:
            return next(iter(reference.layers[key].values())).shape[0]
    return None


def _read_llmc(dump: Mapping[str, np.ndarray], reference: Activations, out: Activations) -> None:
    """llm.c's ActivationTensors: [L, B, ...] per block, [B, ...] after."""
    squeezed = [name for name, a in dump.items() if a.ndim == LLMC_NDIM[name]
                and a.shape[_batch_axis(name)] == 1]  # fmt: skip
    for name, array in dump.items():
        if name in squeezed:
            array = np.squeeze(array, axis=_batch_axis(name))
        _add_llmc(name, array, _n_head(reference), out, reference)
    out.notes.append(
        f"read llm.c's names: {', '.join(sorted(dump))} (encoded and residual3 are hidden, "
        "preatt is attn_scores, atty attn_heads, fch mlp_pre, ...)"
    )
    if squeezed:
        out.notes.append(f"dropped the batch axis of 1 of {', '.join(sorted(squeezed))}")


def _add_llmc(
    name: str, array: np.ndarray, n_head: int | None, out: Activations, reference: Activations
) -> None:
    if name == "qkv":
        _split_qkv(_stacked(name, array, "ln_1", 0, reference), n_head, out)
    elif name == "encoded":
        out.add("hidden", 0, array)
    elif name in LLMC and not KEYS[LLMC[name]].per_layer:
        out.add(LLMC[name], None, array)
    else:  # stacked over the blocks; residual3 is each block's output
        key, first = ("hidden", 1) if name == "residual3" else (LLMC[name], 0)
        for i, layer in enumerate(_stacked(name, array, key, first, reference)):
            out.add(key, first + i, layer)


def _batch_axis(name: str) -> int:
    """llm.c's batch axis: first, but after the layer axis of a stacked tensor."""
    one_layer = name == "encoded" or name in LLMC and not KEYS[LLMC[name]].per_layer
    return 0 if one_layer else 1


def _split_qkv(
    qkv: np.ndarray, n_head: int | None, out: Activations, name: str = "qkv", first: int = 0
) -> None:
    """llm.c's qkv [L, T, 3C] (llama.cpp's wqkv_b: one layer, ``first``) ->
    our q, k, v [n_head, T, head_dim] per layer."""
    if n_head is None:
        out.notes.append(f"{name}: not compared (the reference holds no q, attn or attn_scores "
                         "to tell the number of heads)")  # fmt: skip
        return
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head):
        raise InputError(
            f"{name}: the candidate is {list(qkv.shape)}: its width {qkv.shape[-1]} is not 3 x "
            f"{n_head} heads of one width, or it is not [n_layer, (1,) n, 3*n_embd]"
        )
    for i, layer in enumerate(qkv):
        n, width = layer.shape[0], layer.shape[-1] // 3
        for j, key in enumerate(("q", "k", "v")):
            part = layer[:, j * width : (j + 1) * width].reshape(n, n_head, width // n_head)
            out.add(key, first + i, np.swapaxes(part, 0, 1))


def _read_llamacpp(
    dump: Mapping[str, np.ndarray], reference: Activations, out: Activations
) -> None:
    """llama.cpp's nodes, one layer each (module docstring)."""
    flipped = []
    for name, array in dump.items():
        node = LLAMACPP_NODE.match(name)
        key, offset = LLAMACPP[node["node"]] if node else LLAMACPP_TOP[name]
        layer = None if offset is None else (int(node["i"]) if node else 0) + offset
        qkv = node is not None and node["node"] == "wqkv_b"
        expected = _qkv_shape(reference) if qkv else _reference_shape(reference, key, layer)
        if _in_ggml_order(array.shape, expected):
            array = array.reshape(array.shape[::-1])
            flipped.append(name)
        if qkv:
            _split_qkv(array[None], _n_head(reference), out, name, layer)
            continue
        if key in ("attn", "attn_scores"):
            array = _attention(name, key, array, reference, out)
        if array is not None:
            out.add(key, layer, array)
    out.notes.append(
        "read llama.cpp's nodes: attn_norm is ln_1, wqkv_b q k v, kq attn_scores (times "
        "1/sqrt(head_dim)), kq_soft_max attn, kqv_out attn_heads, ffn_inp resid_attn, ffn_up_b "
        "mlp_pre, ffn_gelu mlp_hidden, ffn_out mlp_out, l_out-i hidden[i+1], inpL hidden[0]; "
        "the attention's columns trimmed to the tokens"
    )
    if flipped:
        shown = ", ".join(sorted(flipped)[:3]) + (", ..." if len(flipped) > 3 else "")
        out.notes.append(f"read {shown} in ggml's order (ne, fastest first) as NumPy's")


def _in_ggml_order(shape: tuple[int, ...], expected: tuple[int, ...] | None) -> bool:
    """Saved with ggml's ``ne`` as its shape: reversed, its first two axes
    are the reference's (the attention's last may be the cache's length)."""
    flipped = shape[::-1]
    return bool(expected) and shape != expected and flipped != shape and (
        flipped[:2] == expected[:2])  # fmt: skip


def _attention(
    name: str, key: str, array: np.ndarray, reference: Activations, out: Activations
) -> np.ndarray | None:
    """kq and kq_soft_max [n_head, n, n_kv]: the cache's cells past the
    tokens dropped; kq is q k^T before softmax applies the scale."""
    if array.ndim == 3:
        array = array[..., : array.shape[-2]]
    if key == "attn":
        return array
    head_dim = _head_dim(reference)
    if head_dim is None:
        out.notes.append(f"{name}: not compared (the reference holds no q or hidden to tell "
                         "head_dim)")  # fmt: skip
        return None
    return array / np.sqrt(head_dim)


def _qkv_shape(reference: Activations) -> tuple[int, ...] | None:
    """wqkv_b's shape, [n, 3*n_embd], from the reference's q [n_head, n, head_dim]."""
    q = next(iter(reference.layers.get("q", {}).values()), None)
    return None if q is None else (q.shape[1], 3 * q.shape[0] * q.shape[2])


def _head_dim(reference: Activations) -> int | None:
    """head_dim, from the reference's q, or its width over its heads."""
    q = next(iter(reference.layers.get("q", {}).values()), None)
    hidden = next(iter(reference.layers.get("hidden", {}).values()), None)
    n_head = _n_head(reference)
    if q is not None:
        return q.shape[-1]
    return None if hidden is None or n_head is None else hidden.shape[-1] // n_head


def _read_transformers(
    dump: Mapping[str, np.ndarray], reference: Activations, out: Activations
) -> None:
    """``hidden_states`` [n_layer + 1, (1,) n, n_embd], the last after ln_f;
    ``attentions`` [n_layer, (1,) n_head, n, n]."""
    for name, array in dump.items():
        if array.ndim == (5 if name == "attentions" else 4) and array.shape[1] == 1:
            array = np.squeeze(array, axis=1)
            out.notes.append(f"dropped the batch axis of 1 of {name}")
        if name == "attentions":
            for i, layer in enumerate(_stacked(name, array, "attn", 0, reference)):
                out.add("attn", i, layer)
            continue
        *blocks, last = _stacked(name, array, "hidden", 0, reference)
        for i, layer in enumerate(blocks):
            out.add("hidden", i, layer)
        out.add("ln_f", None, last)
        out.notes.append(
            f"hidden_states: the first {len(blocks)} are hidden[0..{len(blocks) - 1}]; the last "
            "is after ln_f (transformers' convention), so it is compared as ln_f"
        )


def _stacked(
    name: str, array: np.ndarray, key: str, first: int, reference: Activations | None
) -> np.ndarray:
    """The candidate's ``name``, checked to stack the reference's layers of
    ``key`` from layer ``first`` on, before any layer is split off: one axis
    more than a layer (two, with a batch axis of 1), and no more layers than
    the reference has (a flat array is not ten million layers)."""
    layers = {} if reference is None else reference.layers.get(key, {})
    held = sorted((i, a) for i, a in layers.items() if i is not None and i >= first)
    one, count = (held[0][1], len(held)) if held else (None, None)
    if array.ndim == 0:
        stacks = f"{count} layers of {list(one.shape)}" if one is not None else "layers"
        raise InputError(f"{name}: the candidate is [], where the reference stacks {stacks}")
    if one is not None and array.ndim - 1 not in (one.ndim, one.ndim + 1):
        error = _shape_error(key, first, array.shape[1:], one.shape)
        raise InputError(f"{error}; the array: {name} {list(array.shape)}")
    if count is not None and len(array) > count:
        raise InputError(
            f"{name}: the candidate stacks {len(array):,} layers of {key}, the reference "
            f"{count} ({list(array.shape)})"
        )
    return array


def _match_shapes(cand: Activations, reference: Activations) -> None:
    """Drop a leading batch axis of 1, trim a padded vocabulary, then insist
    on the reference's shapes, naming what is expected."""
    for key, by_layer in cand.layers.items():
        for layer, array in by_layer.items():
            expected = _reference_shape(reference, key, layer)
            if expected is None or array.shape == expected:
                continue
            if array.ndim == len(expected) + 1 and array.shape[0] == 1:
                array = by_layer[layer] = array[0]
                _note_once(cand, f"dropped the batch axis of 1 of {key}")
            if (
                key == "logits"
                and array.shape[:-1] == expected[:-1]
                and array.shape[-1] > expected[-1]
            ):
                array = by_layer[layer] = array[..., : expected[-1]]
                _note_once(cand, f"logits: the padded vocabulary trimmed to {expected[-1]}")
            if array.shape != expected:
                raise InputError(_shape_error(key, layer, array.shape, expected))


def _reference_shape(reference: Activations, key: str, layer: int | None) -> tuple | None:
    by_layer = reference.layers.get(key, {})
    array = by_layer.get(layer)
    return None if array is None else array.shape


def _note_once(cand: Activations, note: str) -> None:
    if note not in cand.notes:
        cand.notes.append(note)


def _shape_error(key: str, layer: int | None, got: tuple, expected: tuple) -> str:
    label = key if layer is None else f"{key}[{layer}]"
    layout = KEYS[key].shape if key in KEYS else "the reference's"
    return (
        f"{label}: the candidate is {list(got)}, the reference {list(expected)} (our layout: "
        f"{layout}, or one layer of it under {key}[i]; no batch axis)"
    )
