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
cached beside the file; writing does the reverse (float32, version 3).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from picogpt2.atomic import atomic_write
from picogpt2.errors import FormatError
from picogpt2.hparams import HParams, parse_hparams
from picogpt2.weights import bfloat16_to_float32, cached_conversion

MAGIC = 20240326
HEADER_INTS = 256
VERSIONS = {3: np.dtype("<f4"), 5: np.dtype("<u2")}  # float32; bfloat16 as its bits
PAD_MULTIPLE = 128


def is_llmc_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return np.frombuffer(f.read(4), "<i4").tolist() == [MAGIC]


def layout(h: HParams, padded_vocab: int) -> list[tuple[str, tuple[int, ...], bool]]:
    """(checkpoint name pattern, llm.c's shape, stored [out, in]) for every
    parameter, in the file's order; ``{i}`` is the layer."""
    C, L = h.n_embd, h.n_layer
    return [
        ("model/wte", (padded_vocab, C), False),
        ("model/wpe", (h.n_ctx, C), False),
        ("model/h{i}/ln_1/g", (L, C), False),
        ("model/h{i}/ln_1/b", (L, C), False),
        ("model/h{i}/attn/c_attn/w", (L, 3 * C, C), True),
        ("model/h{i}/attn/c_attn/b", (L, 3 * C), False),
        ("model/h{i}/attn/c_proj/w", (L, C, C), True),
        ("model/h{i}/attn/c_proj/b", (L, C), False),
        ("model/h{i}/ln_2/g", (L, C), False),
        ("model/h{i}/ln_2/b", (L, C), False),
        ("model/h{i}/mlp/c_fc/w", (L, 4 * C, C), True),
        ("model/h{i}/mlp/c_fc/b", (L, 4 * C), False),
        ("model/h{i}/mlp/c_proj/w", (L, C, 4 * C), True),
        ("model/h{i}/mlp/c_proj/b", (L, C), False),
        ("model/ln_f/g", (C,), False),
        ("model/ln_f/b", (C,), False),
    ]


def read_header(path: Path) -> tuple[HParams, int, np.dtype]:
    """(hparams, padded vocabulary, stored dtype), checked against the size."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(4 * HEADER_INTS), "<i4")
    if len(header) < HEADER_INTS or header[0] != MAGIC:
        raise FormatError(f"{path}: not an llm.c model file (magic {MAGIC})")
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
    n = sum(math.prod(shape) for _, shape, _ in layout(hparams, padded))
    expected = 4 * HEADER_INTS + n * dtype.itemsize
    if path.stat().st_size != expected:
        raise FormatError(
            f"{path}: {path.stat().st_size} bytes, but its header needs {expected}: truncated or "
            "not this layout"
        )
    return hparams, padded, dtype


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """The file's parameters under the checkpoint's names and shapes, float32."""
    hparams, padded, dtype = read_header(path)
    data = np.memmap(path, dtype, mode="r", offset=4 * HEADER_INTS)
    tensors, offset = {}, 0
    for pattern, shape, transposed in layout(hparams, padded):
        size = math.prod(shape)
        block = data[offset : offset + size].reshape(shape)
        offset += size
        block = bfloat16_to_float32(block) if dtype == np.dtype("<u2") else np.array(block)
        if pattern == "model/wte":
            tensors[pattern] = block[: hparams.n_vocab]  # the padded rows go
        elif "{i}" not in pattern:
            tensors[pattern] = block
        else:
            for i in range(hparams.n_layer):
                layer = block[i].T[None] if transposed else block[i]  # [out, in] -> [1, in, out]
                tensors[pattern.format(i=i)] = np.ascontiguousarray(layer)
    return tensors


def cache_path(path: Path) -> Path:
    return path.with_name(path.name + ".picogpt2.safetensors")


def load(path: Path, *, show_progress: bool = True) -> tuple[HParams, dict[str, np.ndarray]]:
    """hparams and tensors, from the conversion cached beside the file."""
    hparams, _, _ = read_header(path)
    tensors = cached_conversion(cache_path(path), [path], lambda: read_tensors(path),
                                show_progress=show_progress)  # fmt: skip
    return hparams, tensors


def write_file(out: Path, hparams: HParams, tensors: dict[str, np.ndarray]) -> None:
    """An llm.c file as llm.c writes it: float32 (version 3), the vocabulary
    padded with zero rows to a multiple of 128, linear weights [out, in]."""
    padded = -(-hparams.n_vocab // PAD_MULTIPLE) * PAD_MULTIPLE
    header = np.zeros(HEADER_INTS, "<i4")
    header[:8] = [MAGIC, 3, hparams.n_ctx, hparams.n_vocab, hparams.n_layer, hparams.n_head,
                  hparams.n_embd, padded]  # fmt: skip
    with atomic_write(out) as f:
        f.write(header.tobytes())
        for pattern, shape, transposed in layout(hparams, padded):
            if pattern == "model/wte":
                block = np.zeros(shape, "<f4")
                block[: hparams.n_vocab] = tensors[pattern]
            elif "{i}" not in pattern:
                block = tensors[pattern]
            else:
                layers = [tensors[pattern.format(i=i)] for i in range(hparams.n_layer)]
                block = np.stack([w[0].T if transposed else w for w in layers])
            f.write(np.ascontiguousarray(block, "<f4").tobytes())
