"""GGUF files of the ``gpt2`` architecture (llama.cpp's), read and written.

llama.cpp's names and layouts, as its converter writes them (NumPy's order;
``ne`` in the file is the reverse):

    token_embd.weight             [n_vocab, n_embd]     model/wte
    position_embd.weight          [n_ctx, n_embd]       model/wpe
    output_norm.{weight,bias}     [n_embd]              model/ln_f/{g,b}
    output.weight                 [n_vocab, n_embd]     the head: must equal wte (tied)
    blk.{i}.attn_norm.{weight,bias}                     model/h{i}/ln_1/{g,b}
    blk.{i}.attn_qkv.{weight,bias}    [3*n_embd, n_embd]   model/h{i}/attn/c_attn
    blk.{i}.attn_output.{weight,bias} [n_embd, n_embd]     model/h{i}/attn/c_proj
    blk.{i}.ffn_norm.{weight,bias}                      model/h{i}/ln_2/{g,b}
    blk.{i}.ffn_up.{weight,bias}      [4*n_embd, n_embd]   model/h{i}/mlp/c_fc
    blk.{i}.ffn_down.{weight,bias}    [n_embd, 4*n_embd]   model/h{i}/mlp/c_proj

Linear weights are [out, in] (the transpose of OpenAI's), each row a run of
blocks of its type. The sizes are the metadata's ``gpt2.context_length``,
``gpt2.embedding_length``, ``gpt2.block_count`` and
``gpt2.attention.head_count`` (``gpt2.feed_forward_length`` must be
4 n_embd, the layer norm's epsilon 1e-5); ``n_vocab`` is token_embd's rows.
The vocabulary is the file's own (``tokenizer.ggml.tokens`` and
``tokenizer.ggml.merges``, read by ``vocabulary.py``), or the folder's
beside it when the file has none.

Reading dequantizes every tensor exactly as ggml does (``ggml_types``) and
transposes the linear weights, into float32 cached beside the file
(``cache``), as for llm.c's files. Writing makes what llama.cpp's
converter makes: F32, or F16 (``--outtype f16``: the matrices and token
embeddings in float16, rounded to nearest even; the norms, biases and
position embeddings stay float32).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from picogpt2.hparams import HParams
from picogpt2.util.errors import FormatError
from picogpt2.weights.formats import cache
from picogpt2.weights.formats.opened import HEAD, OpenedModel, fingerprint
from picogpt2.weights.ggml_types import BY_NAME, GGMLType, dequantize
from picogpt2.weights.gguf_file import GGUFFile, Metadata, open_gguf, write_gguf
from picogpt2.weights.params import Tensor, check_layer_count, parse_hparams, schema
from picogpt2.weights.vocabulary import (
    ENDOFTEXT,
    TOKENIZER_MODEL,
    check_gguf_tokenizer,
    read_vocabulary,
    spell,
)

NAME = "gguf"
DESCRIPTION = "a GGUF file, as llama.cpp loads it (F32, or F16 with --outtype f16)"
ARCH = "gpt2"
HEAD_NAME = "output.weight"
OUTTYPES = ("f32", "f16")
FILE_TYPE = {"f32": 0, "f16": 1}  # general.file_type: ALL_F32, MOSTLY_F16
EPS = np.float32(1e-5)
MODULES = {"ln_1": "attn_norm", "attn/c_attn": "attn_qkv", "attn/c_proj": "attn_output",
           "ln_2": "ffn_norm", "mlp/c_fc": "ffn_up", "mlp/c_proj": "ffn_down",
           "ln_f": "output_norm", "wte": "token_embd", "wpe": "position_embd"}  # fmt: skip
LEAVES = {"w": "weight", "b": "bias", "g": "weight", "": "weight"}
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # tokenizer.ggml.token_type


def gguf_name(t: Tensor) -> str:
    """llama.cpp's name of a tensor of the schema."""
    block = "" if t.layer is None else f"blk.{t.layer}."
    return f"{block}{MODULES[t.module]}.{LEAVES[t.leaf]}"


def gguf_shape(t: Tensor) -> tuple[int, ...]:
    """Its shape in the file, NumPy's order: a linear weight [out, in]."""
    return t.tree_shape[::-1] if t.leaf == "w" else t.shape


def detect(path: Path) -> OpenedModel | None:
    """A GGUF file (by its magic), opened: its header checked against its
    size, the architecture, sizes and tensor table against GPT-2's; the
    float32 conversion cached beside it memory-mapped when it is of this
    file (made at ``weights()`` otherwise)."""
    gguf = open_gguf(path)
    if gguf is None:
        return None
    hparams = _hparams(gguf)
    names = _names(gguf, hparams)
    identity = fingerprint([(path, os.stat(path), gguf.mapped[:HEAD])])
    mend = f"delete it, and picogpt2 converts {path} again"

    def produce() -> cache.Conversion:
        return _convert(gguf, names), None

    def convert() -> dict[str, np.ndarray]:
        return cache.converted(cache_path(path), identity, produce, str(path), mend)

    vocabulary = path.parent
    if TOKENIZER_MODEL in gguf.metadata:  # checked now, before any conversion
        check_gguf_tokenizer(gguf.metadata, path)
        vocabulary = path
    tensors = cache.lookup(cache_path(path), identity, mend)
    return OpenedModel(path, NAME, hparams, vocabulary, identity, tensors, convert)


def _hparams(gguf: GGUFFile) -> HParams:
    """GPT-2's sizes from the metadata, refusing what changes its math."""
    meta, path = gguf.metadata, gguf.path
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise FormatError(f"{path}: general.architecture is {arch!r}, not GPT-2 ({ARCH!r})")
    wte = gguf.tensors.get("token_embd.weight")
    if wte is None or len(wte.shape) != 2:
        raise FormatError(f"{path}: no token_embd.weight [n_vocab, n_embd]")
    keys = {"n_ctx": "context_length", "n_embd": "embedding_length", "n_layer": "block_count",
            "n_head": "attention.head_count"}  # fmt: skip
    values = {field: meta.get(f"{ARCH}.{key}") for field, key in keys.items()}
    missing = [f"{ARCH}.{keys[field]}" for field, value in values.items() if value is None]
    if missing:
        raise FormatError(f"{path}: the metadata has no {', '.join(missing)}")
    hparams = parse_hparams({**values, "n_vocab": wte.shape[0]}, str(path))
    gpt2 = {"feed_forward_length": 4 * hparams.n_embd, "attention.head_count_kv": hparams.n_head,
            "attention.layer_norm_epsilon": EPS}  # fmt: skip
    for key, expected in gpt2.items():
        value = meta.get(f"{ARCH}.{key}", expected)
        number = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
        stored = np.float32(value) if number and isinstance(expected, np.floating) else value
        if not number or stored != expected:
            raise FormatError(
                f"{path}: {ARCH}.{key} = {value!r} (GPT-2's is {expected!r}) changes GPT-2's math "
                "in a way picogpt2 does not implement"
            )
    return hparams


def _names(gguf: GGUFFile, hparams: HParams) -> dict[str, Tensor]:
    """The file's tensor names -> the schema's tensors, every shape checked;
    the head (``output.weight``) is left out, checked at conversion."""
    check_layer_count(hparams, len(gguf.tensors), gguf.path)
    ours = {gguf_name(t): t for t in schema(hparams)}
    sizes = ", ".join(f"{k} {v}" for k, v in hparams.as_dict().items())
    for name, info in gguf.tensors.items():
        expected = gguf_shape(ours[name]) if name in ours else (
            (hparams.n_vocab, hparams.n_embd) if name == HEAD_NAME else None)  # fmt: skip
        if expected is None:
            raise FormatError(
                f"{gguf.path}: {name} is not a tensor of llama.cpp's GPT-2 with the metadata's "
                f"sizes ({sizes})"
            )
        if info.shape != expected:
            raise FormatError(f"{gguf.path}: {name} is {list(info.shape)}, where the metadata's "
                              f"sizes ({sizes}) need {list(expected)}")  # fmt: skip
    missing = [name for name in ours if name not in gguf.tensors]
    if missing:
        raise FormatError(f"{gguf.path}: {missing[0]} is missing")
    return ours


def _convert(gguf: GGUFFile, names: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32, under the checkpoint's names and
    shapes (linear weights transposed to [1, in, out])."""
    tensors = {}
    for name, t in names.items():
        info = gguf.tensors[name]
        values = dequantize(gguf.data(info), info.type, info.shape)
        tensors[t.name] = np.ascontiguousarray(values.T[None]) if t.leaf == "w" else values
    head = gguf.tensors.get(HEAD_NAME)
    if head is not None:
        values = dequantize(gguf.data(head), head.type, head.shape)
        if not np.array_equal(values, tensors["model/wte"]):
            raise FormatError(
                f"{gguf.path}: {HEAD_NAME} ({head.type.name}) differs from token_embd.weight "
                f"({gguf.tensors['token_embd.weight'].type.name}): GPT-2's output head is the "
                "token embedding (tied), and picogpt2 implements only that"
            )
    return tensors


def cache_path(path: Path) -> Path:
    return path.with_name(path.name + ".picogpt2.safetensors")


def checksum_files(path: Path) -> list[Path]:
    """The files where picogpt2 records each tensor's CRC-32C: the cached
    conversion beside the file (GGUF records none)."""
    return [cache_path(path)]


def metadata(hparams: HParams, vocabulary: Path, outtype: str) -> Metadata:
    """What llama.cpp reads of a GPT-2: the architecture, the sizes, and the
    vocabulary (every token spelt as in ``encoder.json``, the merges as
    ``"a b"``, <|endoftext|> as beginning and end)."""
    vocab = read_vocabulary(vocabulary)
    by_id = sorted(vocab.token_to_id, key=vocab.token_to_id.__getitem__)
    eot = vocab.token_to_id[ENDOFTEXT.encode()]
    special = [TOKEN_CONTROL if t.startswith(b"<|") and t.endswith(b"|>") else TOKEN_NORMAL
               for t in by_id]  # fmt: skip
    return {
        "general.architecture": ("string", ARCH),
        "general.name": ("string", "GPT-2 (picogpt2 export)"),
        "general.file_type": ("uint32", FILE_TYPE[outtype]),
        f"{ARCH}.block_count": ("uint32", hparams.n_layer),
        f"{ARCH}.context_length": ("uint32", hparams.n_ctx),
        f"{ARCH}.embedding_length": ("uint32", hparams.n_embd),
        f"{ARCH}.feed_forward_length": ("uint32", 4 * hparams.n_embd),
        f"{ARCH}.attention.head_count": ("uint32", hparams.n_head),
        f"{ARCH}.attention.layer_norm_epsilon": ("float32", EPS),
        TOKENIZER_MODEL: ("string", "gpt2"),
        "tokenizer.ggml.pre": ("string", "gpt-2"),
        "tokenizer.ggml.tokens": ("array of string", [spell(t) for t in by_id]),
        "tokenizer.ggml.token_type": ("array of int32", special),
        "tokenizer.ggml.merges": ("array of string", [f"{spell(a)} {spell(b)}"
                                                      for a, b in vocab.merges]),
        "tokenizer.ggml.bos_token_id": ("uint32", eot),
        "tokenizer.ggml.eos_token_id": ("uint32", eot),
        "tokenizer.ggml.add_bos_token": ("bool", False),
    }  # fmt: skip


def write(
    out: Path,
    hparams: HParams,
    tensors: dict[str, np.ndarray],
    vocabulary: Path,
    outtype: str = "f32",
) -> None:
    """A GGUF file llama.cpp loads, as its converter writes a GPT-2: the
    metadata and vocabulary, then every tensor in llama.cpp's name and
    layout, F32 or F16 (``outtype``; 1-D tensors and the position
    embeddings always F32)."""
    meta = metadata(hparams, vocabulary, outtype)  # reads the vocabulary: refused before writing

    def stored(t: Tensor) -> tuple[str, GGMLType, tuple[int, ...], Callable[[], bytes]]:
        half = outtype == "f16" and len(t.tree_shape) == 2 and t.module != "wpe"
        kind = BY_NAME["F16" if half else "F32"]

        def data() -> bytes:
            values = np.asarray(tensors[t.name], np.float32).reshape(t.tree_shape)
            values = values.T if t.leaf == "w" else values
            return np.ascontiguousarray(values, "<f2" if half else "<f4").tobytes()

        return gguf_name(t), kind, gguf_shape(t), data

    write_gguf(out, meta, (stored(t) for t in schema(hparams)))
