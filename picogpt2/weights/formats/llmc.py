"""llm.c's model files (``gpt2_124M.bin``), read and written.

The layout, as llm.c's ``train_gpt2.py`` writes it: a header of 256 int32
(magic 20240326, version 3 for float32 or 5 for bfloat16, max length,
vocabulary size, layers, heads, channels, padded vocabulary size, zeros),
then every parameter, little-endian, each kind for all layers before the
next kind: wte [Vp, C] (the vocabulary padded to Vp rows, a multiple of
128), wpe [T, C], ln_1 weights [L, C] and biases, c_attn weights [L, 3C, C]
and biases [L, 3C], attn c_proj [L, C, C] and [L, C], ln_2, c_fc [L, 4C, C]
and [L, 4C], mlp c_proj [L, C, 4C] and [L, C], ln_f weight and bias [C].
Linear weights are [out, in] (PyTorch's ``nn.Linear``): the transpose of
OpenAI's. Reading transposes them and drops the padded rows, into a copy
cached beside the file (``cache``); writing does the reverse (float32,
version 3). The file holds no vocabulary: it is read from the folder beside
it, or the one given.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from picogpt2.hparams import HParams
from picogpt2.util.atomic import atomic_write
from picogpt2.util.errors import FormatError
from picogpt2.weights.formats import cache
from picogpt2.weights.formats.opened import HEAD, OpenedModel, fingerprint
from picogpt2.weights.ggml_types import bfloat16_to_float32
from picogpt2.weights.params import Tensor, block_schema, parameter_count, parse_hparams, schema

NAME = "llmc"
DESCRIPTION = "an llm.c model file: float32 (version 3), vocabulary padded to a multiple of 128"
MAGIC = 20240326
HEADER_INTS = 256
VERSIONS = {3: np.dtype("<f4"), 5: np.dtype("<u2")}  # float32; bfloat16 as its bits
PAD_MULTIPLE = 128
# The kinds of a block's parameters, in the file's order (each for all layers).
BLOCK_ORDER = [(module, leaf) for module, leaves in (("ln_1", "gb"), ("attn/c_attn", "wb"),
               ("attn/c_proj", "wb"), ("ln_2", "gb"), ("mlp/c_fc", "wb"), ("mlp/c_proj", "wb"))
               for leaf in leaves]  # fmt: skip


def layout(h: HParams, padded_vocab: int) -> list[tuple[list[Tensor], tuple[int, ...]]]:
    """The file's blocks in order: (the schema's tensors one holds, one per
    layer for a block kind, and its shape in the file)."""
    top = {(t.module, t.leaf): t for t in schema(h) if t.layer is None}
    blocks = [{(t.module, t.leaf): t for t in block_schema(h, i)} for i in range(h.n_layer)]
    wte, wpe = top["wte", ""], top["wpe", ""]
    entries = [([wte], (padded_vocab, h.n_embd)), ([wpe], wpe.shape)]
    for kind in BLOCK_ORDER:
        first = blocks[0][kind]
        shape = first.tree_shape[::-1] if first.leaf == "w" else first.shape  # [out, in]
        entries.append(([block[kind] for block in blocks], (h.n_layer, *shape)))
    return entries + [([top["ln_f", leaf]], top["ln_f", leaf].shape) for leaf in "gb"]


def detect(path: Path) -> OpenedModel | None:
    """An llm.c file (by its magic number), opened: its header checked
    against its size, the conversion cached beside it memory-mapped when it
    is of this file (made at ``weights()`` otherwise). Its vocabulary is in
    the folder beside it, where llm.c keeps its tokenizer too."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        head = f.read(HEAD)
    if np.frombuffer(head[:4], "<i4").tolist() != [MAGIC]:
        return None
    hparams, padded, dtype = _header(path, head, stat.st_size)
    identity = fingerprint([(path, stat, head)])
    mend = f"delete it, and picogpt2 converts {path} again"

    def produce() -> cache.Conversion:
        return _convert(path, hparams, padded, dtype), None

    def convert() -> dict[str, np.ndarray]:
        return cache.converted(cache_path(path), identity, produce, str(path), mend)

    tensors = cache.lookup(cache_path(path), identity, mend)
    return OpenedModel(path, NAME, hparams, path.parent, identity, tensors, convert)


def _header(path: Path, head: bytes, size: int) -> tuple[HParams, int, np.dtype]:
    """(hparams, padded vocabulary, stored dtype) from the file's first
    bytes ``head``, checked against its ``size``."""
    header = np.frombuffer(head[: 4 * HEADER_INTS], "<i4")
    if len(header) < HEADER_INTS:
        raise FormatError(f"{path}: {size} bytes, too short for llm.c's header of 1024")
    version = int(header[1])
    if version not in VERSIONS:
        raise FormatError(f"{path}: llm.c version {version}; picogpt2 reads 3 (float32), 5 (bf16)")
    values = dict(zip(("n_ctx", "n_vocab", "n_layer", "n_head", "n_embd"),
                      (int(v) for v in header[2:7]), strict=True))  # fmt: skip
    hparams = parse_hparams(values, str(path))
    padded = int(header[7]) or hparams.n_vocab
    if padded < hparams.n_vocab:
        raise FormatError(f"{path}: padded vocabulary {padded} < vocabulary {hparams.n_vocab}")
    dtype = VERSIONS[version]
    n = parameter_count(hparams) + (padded - hparams.n_vocab) * hparams.n_embd  # + wte's padding
    expected = 4 * HEADER_INTS + n * dtype.itemsize
    if size != expected:
        raise FormatError(
            f"{path}: {size} bytes, but its header needs {expected}: truncated or not this layout"
        )
    return hparams, padded, dtype


def _convert(path: Path, hparams: HParams, padded: int, dtype: np.dtype) -> dict[str, np.ndarray]:
    """The file's parameters under the checkpoint's names and shapes, float32."""
    data = np.memmap(path, dtype, mode="r", offset=4 * HEADER_INTS)
    tensors, offset = {}, 0
    for held, shape in layout(hparams, padded):
        size = math.prod(shape)
        block = data[offset : offset + size].reshape(shape)
        offset += size
        block = bfloat16_to_float32(block) if dtype == np.dtype("<u2") else np.array(block)
        if held[0].layer is not None:  # a kind, stacked over the layers
            for t, layer in zip(held, block, strict=True):
                tensors[t.name] = np.ascontiguousarray(layer.T[None] if t.leaf == "w" else layer)
        else:
            tensors[held[0].name] = block[: held[0].shape[0]]  # wte's padded rows go
    return tensors


def cache_path(path: Path) -> Path:
    return path.with_name(path.name + ".picogpt2.safetensors")


def checksum_files(path: Path) -> list[Path]:
    """The files where picogpt2 records each tensor's CRC-32C: the cached
    conversion beside the file (llm.c records none)."""
    return [cache_path(path)]


def write(out: Path, hparams: HParams, tensors: dict[str, np.ndarray], vocabulary: Path) -> None:
    """An llm.c file as llm.c writes it: float32 (version 3), the vocabulary
    padded with zero rows to a multiple of 128, linear weights [out, in].
    It holds no vocabulary; ``vocabulary`` is not written."""
    padded = -(-hparams.n_vocab // PAD_MULTIPLE) * PAD_MULTIPLE
    header = np.zeros(HEADER_INTS, "<i4")
    header[:8] = [MAGIC, 3, hparams.n_ctx, hparams.n_vocab, hparams.n_layer, hparams.n_head,
                  hparams.n_embd, padded]  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:
        f.write(header.tobytes())
        for held, shape in layout(hparams, padded):
            block = np.zeros(shape, "<f4")
            if held[0].layer is not None:
                layers = [tensors[t.name] for t in held]
                block[:] = [w[0].T for w in layers] if held[0].leaf == "w" else layers
            else:
                block[: held[0].shape[0]] = tensors[held[0].name]  # zero rows pad wte
            f.write(block.tobytes())
