"""CRC-32C (Castagnoli), vectorised with NumPy, and TensorFlow's masking.

A byte-at-a-time loop in Python takes minutes over a 500 MB checkpoint, so we
use that a CRC without its initial and final inversion (the "raw" CRC) is
linear over GF(2):

- the raw CRC of a row of 32 bytes is the XOR, over its 16 byte pairs ``j``,
  of what pair ``v`` alone would leave in the register after the rest of
  the row, ``table[j, v]``: one gather per two bytes, for all rows at once;
- rows are joined with ``raw(A + B) = shift(raw(A), len(B)) ^ raw(B)``,
  where ``shift`` feeds zero bytes and is itself a linear map, applied as four
  256-entry tables, pairwise in a tree.

The plain CRC is then ``raw(M) ^ shift(~0, len(M)) ^ ~0``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

POLY = 0x82F63B78  # Castagnoli polynomial, bit-reflected
PAIRS = 16  # a row is 16 little-endian byte pairs (32 bytes)
ROW = 2 * PAIRS
CHUNK = ROW << 17  # 4 MiB processed at a time bounds the temporaries
MASK_DELTA = 0xA282EAD8


def _byte_table() -> np.ndarray:
    """[256] uint32: the register after feeding byte ``b`` into zero."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(POLY), table >> 1)
    return table.astype(np.uint32)


TABLE = _byte_table()


def _feed_zero_byte(reg: np.ndarray) -> np.ndarray:
    return TABLE[reg & 0xFF] ^ (reg >> 8)


@lru_cache(maxsize=1)
def _pair_position_table() -> np.ndarray:
    """[PAIRS, 65536] uint32: entry ``[j, v]`` is the byte pair ``v`` at pair
    position ``j`` of a row, fed through the rest of the row after it."""
    by_byte = [TABLE]  # by_byte[k]: a byte followed by k more bytes
    for _ in range(ROW - 1):
        by_byte.append(_feed_zero_byte(by_byte[-1]))
    v = np.arange(65536)
    low, high = v & 0xFF, v >> 8
    return np.stack(
        [by_byte[ROW - 1 - 2 * j][low] ^ by_byte[ROW - 2 - 2 * j][high] for j in range(PAIRS)]
    )


def _apply(columns: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A linear map of 32-bit registers, given by the images of its 32 unit
    vectors, applied to every element of ``x``."""
    out = np.zeros_like(x)
    for i in range(32):
        out ^= np.where((x >> np.uint32(i)) & 1, columns[i], np.uint32(0))
    return out


@lru_cache(maxsize=64)
def _shift_tables(n_bytes: int) -> np.ndarray:
    """[4, 256] uint32 tables of the map 'feed ``n_bytes`` zero bytes'."""
    units = np.uint32(1) << np.arange(32, dtype=np.uint32)
    result = units.copy()  # identity
    power = _feed_zero_byte(units)  # one zero byte
    n = n_bytes
    while n:
        if n & 1:
            result = _apply(power, result)
        power = _apply(power, power)
        n >>= 1
    values = np.arange(256, dtype=np.uint32)
    return np.stack([_apply(result, values << np.uint32(8 * k)) for k in range(4)])


def _shift(reg: np.ndarray, n_bytes: int) -> np.ndarray:
    t = _shift_tables(n_bytes)
    return t[0][reg & 0xFF] ^ t[1][(reg >> 8) & 0xFF] ^ t[2][(reg >> 16) & 0xFF] ^ t[3][reg >> 24]


def _raw_rows(pairs: np.ndarray) -> np.ndarray:
    """[R, PAIRS] uint16 -> [R] uint32 raw CRCs of each row, one gather per
    column so the indices stay small."""
    table = _pair_position_table()
    regs = table[0][pairs[:, 0]]
    for j in range(1, PAIRS):
        regs ^= table[j][pairs[:, j]]
    return regs


def _raw_chunk(data: np.ndarray) -> int:
    """Raw CRC of a uint8 array whose length is a multiple of ROW, joining
    the rows' CRCs pairwise in a tree."""
    regs = _raw_rows(data.view("<u2").reshape(-1, PAIRS))
    length = ROW
    while len(regs) > 1:
        if len(regs) % 2:  # a leading zero row changes no raw CRC
            regs = np.concatenate([np.zeros(1, np.uint32), regs])
        regs = _shift(regs[0::2], length) ^ regs[1::2]
        length *= 2
    return int(regs[0])


def _raw(data: np.ndarray) -> int:
    """Raw CRC of a 1-D uint8 array."""
    head = len(data) % ROW
    padded = np.zeros(ROW, np.uint8)  # leading zeros change no raw CRC
    padded[ROW - head :] = data[:head]
    reg = _raw_chunk(padded)
    for start in range(head, len(data), CHUNK):
        chunk = data[start : start + CHUNK]
        reg = int(_shift(np.uint32(reg), len(chunk))) ^ _raw_chunk(chunk)
    return reg


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC-32C of ``data``; pass a previous result as ``value`` to continue."""
    array = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    array = array.reshape(-1).view(np.uint8)
    start = int(_shift(np.uint32(~value & 0xFFFFFFFF), len(array)))
    return _raw(array) ^ start ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """TensorFlow's (and LevelDB's) masked CRC: rotate right 15, add a constant,
    so that a CRC stored inside CRC'd data does not weaken the outer CRC."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
