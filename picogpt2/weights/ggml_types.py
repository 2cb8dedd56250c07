"""ggml's number formats, as GGUF files store tensors in them, and how each
is turned back into float32: exactly as ggml does it, bit for bit.

A tensor of a block type is a sequence of blocks, each ``BLOCK`` values of
one row (a row is ``ne[0]`` values, a whole number of blocks) in ``SIZE``
bytes. Every scale is a float16 ``d`` (and ``m`` or ``dmin`` for an offset),
every product is rounded to float32 in the order written below, never fused:
that order is the definition (it is the ``gguf`` package's, which tests
compare against).

    F32, F16, BF16   one value each
    Q8_0   d, 32 int8 q                          x = q * d
    Q4_0   d, 16 bytes of 4-bit q (two a byte)   x = d * (q - 8)
    Q4_1   d, m, 16 bytes of 4-bit q             x = d * q + m
    Q5_0   d, 32 high bits, 16 bytes of low 4    x = d * (q - 16)
    Q5_1   d, m, 32 high bits, 16 bytes          x = d * q + m
    Q4_K   256 values in 8 sub-blocks of 32, each with a 6-bit scale and
           min (12 bytes): x = (d * scale) * q - dmin * min
    Q5_K   as Q4_K, and a fifth bit for each value (32 bytes)
    Q6_K   256 values in 16 sub-blocks of 16, an int8 scale each, 4 low
           and 2 high bits a value: x = (d * scale) * (q - 32)

Nibbles: in a 32-value block, byte j holds value j in its low four bits and
value j + 16 in its high four. In the K types, 32 bytes hold two sub-blocks
of 32: the low nibbles one, the high nibbles the next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GGMLType:
    """One of ggml's tensor types: its number in GGUF's tensor table, its
    name, how many values a block holds and in how many bytes."""

    id: int
    name: str
    block: int
    size: int

    def row_bytes(self, n: int) -> int:
        """The bytes of ``n`` values (a whole number of blocks)."""
        return n // self.block * self.size


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 at byte ``at`` of each block, as float32 [n_blocks, 1]."""
    return blocks[:, at : at + 2].copy().view("<f2").astype(np.float32)


def _nibbles(packed: np.ndarray, group: int = 16) -> np.ndarray:
    """[n, group k] bytes -> [n, 2 group k] 4-bit values: per ``group``
    bytes, their low nibbles, then their high ones."""
    n = packed.shape[0]
    groups = packed.reshape(n, -1, 1, group)
    return ((groups >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0xF).reshape(n, -1)


def _bits(packed: np.ndarray, count: int) -> np.ndarray:
    """[n, count / 8] bytes, little-endian -> [n, count] bits (bit e of the
    whole is value e)."""
    return np.unpackbits(packed, axis=-1, count=count, bitorder="little")


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: widen the 16 bits exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# F32, F16 and BF16 blocks are one value each, whole rows of bytes: viewed in place.
def _f32(blocks: np.ndarray) -> np.ndarray:
    return blocks.view("<f4")


def _f16_values(blocks: np.ndarray) -> np.ndarray:
    return blocks.view("<f2").astype(np.float32)


def _bf16(blocks: np.ndarray) -> np.ndarray:
    return bfloat16_to_float32(blocks.view("<u2"))


def _q8_0(blocks: np.ndarray) -> np.ndarray:
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return q * _f16(blocks, 0)


def _q4_0(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 2:]).astype(np.float32) - np.float32(8)
    return _f16(blocks, 0) * q


def _q4_1(blocks: np.ndarray) -> np.ndarray:
    q = _nibbles(blocks[:, 4:]).astype(np.float32)
    return _f16(blocks, 0) * q + _f16(blocks, 2)


def _five_bits(blocks: np.ndarray, at: int) -> np.ndarray:
    """The 32 five-bit values of a Q5 block whose high bits start at byte ``at``."""
    high = _bits(blocks[:, at : at + 4], 32)
    return (_nibbles(blocks[:, at + 4 :]) | high << 4).astype(np.float32)


def _q5_0(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks, 0) * (_five_bits(blocks, 2) - np.float32(16))


def _q5_1(blocks: np.ndarray) -> np.ndarray:
    return _f16(blocks, 0) * _five_bits(blocks, 4) + _f16(blocks, 2)


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit scales and mins of Q4_K and Q5_K's 8 sub-blocks, from 12
    bytes: sub-blocks 0-3 in the low six bits of bytes 0-3 (scales) and
    4-7 (mins); sub-blocks 4-7 in the nibbles of bytes 8-11 (scale low,
    min high), their top two bits in the top two bits of bytes 0-3 and 4-7."""
    first, second, third = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([first & 63, (third & 0xF) | (first >> 6) << 4], axis=1)
    mins = np.concatenate([second & 63, (third >> 4) | (second >> 6) << 4], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _k_offset(blocks: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_K and Q5_K: (d * scale) * q - dmin * min, by sub-block of 32."""
    n = blocks.shape[0]
    scales, mins = _k_scales(blocks[:, 4:16])
    step = (_f16(blocks, 0) * scales)[:, :, None]  # [n, 8, 1]
    offset = (_f16(blocks, 2) * mins)[:, :, None]
    return (step * q.reshape(n, 8, 32) - offset).reshape(n, 256)


def _q4_k(blocks: np.ndarray) -> np.ndarray:
    return _k_offset(blocks, _nibbles(blocks[:, 16:], 32).astype(np.float32))


def _q5_k(blocks: np.ndarray) -> np.ndarray:
    """The fifth bit of value l of sub-block s is bit s of byte l of qh."""
    n = blocks.shape[0]
    high = _bits(blocks[:, 16:48].reshape(n, 32, 1), 8)  # [n, 32 bytes, 8 sub-blocks]
    high = np.swapaxes(high, 1, 2).reshape(n, 256)
    return _k_offset(blocks, (_nibbles(blocks[:, 48:], 32) | high << 4).astype(np.float32))


def _q6_k(blocks: np.ndarray) -> np.ndarray:
    """Two halves of 128 values, each from 64 bytes of low nibbles and 32
    of high pairs: quarter r (32 values) takes the low (r < 2) or high
    nibbles of bytes 32 (r % 2) ... of its 64, and bits 2r, 2r + 1 of its
    32 high bytes. Scale k covers values 16 k to 16 k + 15."""
    n = blocks.shape[0]
    low = blocks[:, :128].reshape(n, 2, 1, 2, 32)  # [n, half, nibble, r % 2, l]
    low = (low >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1, 1)) & 0xF
    high = blocks[:, 128:192].reshape(n, 2, 1, 32)  # [n, half, r, l]
    high = (high >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (low.reshape(n, 2, 4, 32) | high << 4).astype(np.float32) - np.float32(32)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
    step = (_f16(blocks, 208) * scales)[:, :, None]  # [n, 16, 1]
    return (step * q.reshape(n, 16, 16)).reshape(n, 256)


TYPES = [
    GGMLType(0, "F32", 1, 4),
    GGMLType(1, "F16", 1, 2),
    GGMLType(2, "Q4_0", 32, 18),
    GGMLType(3, "Q4_1", 32, 20),
    GGMLType(6, "Q5_0", 32, 22),
    GGMLType(7, "Q5_1", 32, 24),
    GGMLType(8, "Q8_0", 32, 34),
    GGMLType(12, "Q4_K", 256, 144),
    GGMLType(13, "Q5_K", 256, 176),
    GGMLType(14, "Q6_K", 256, 210),
    GGMLType(30, "BF16", 1, 2),
]
BY_ID = {t.id: t for t in TYPES}
BY_NAME = {t.name: t for t in TYPES}
# ggml's other types, by number: named in errors, not read.
OTHERS = {9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
          18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
          24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0",
          35: "TQ2_0", 39: "MXFP4"}  # fmt: skip
DEQUANTIZE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "F32": _f32, "F16": _f16_values, "BF16": _bf16, "Q8_0": _q8_0, "Q4_0": _q4_0,
    "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}  # fmt: skip
CHUNK = 1 << 16  # blocks dequantized at a time: a few MB of temporaries


def dequantize(data: np.ndarray, kind: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor's bytes ``data`` (uint8) of type ``kind`` -> float32 of
    ``shape`` (NumPy's order: ggml's ``ne`` reversed)."""
    blocks = data.reshape(-1, kind.size)
    out = np.empty((blocks.shape[0], kind.block), np.float32)
    for start in range(0, blocks.shape[0], CHUNK):
        part = np.asarray(blocks[start : start + CHUNK])
        out[start : start + CHUNK] = DEQUANTIZE[kind.name](part).reshape(-1, kind.block)
    return out.reshape(shape)


def type_name(type_id: int) -> str:
    """ggml's name of type ``type_id``, known or not."""
    known = BY_ID.get(type_id)
    return known.name if known else OTHERS.get(type_id, f"type {type_id}")
