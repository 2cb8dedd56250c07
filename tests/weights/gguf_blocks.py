"""ggml's block types restated element by element, as ggml's C loops
(``dequantize_row_*``) walk them: an independent statement for the
vectorised ``ggml_types`` to agree with bit for bit, and the random blocks
(every scale a finite float16) both are fed."""

from __future__ import annotations

import numpy as np

from picogpt2.weights.ggml_types import BY_NAME

F = np.float32


def _half(block: bytes, at: int) -> np.float32:
    return F(np.frombuffer(block[at : at + 2], "<f2")[0])


def _scale_min(j: int, s: bytes) -> tuple[int, int]:
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def _legacy(kind: str, b: bytes) -> list[np.float32]:
    """Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: 32 values, value j + 16 in the high
    nibble of byte j."""
    d = _half(b, 0)
    if kind == "Q8_0":
        return [F(F(q) * d) for q in np.frombuffer(b[2:], np.int8)]
    offset = kind.endswith("_1")
    m, at = (_half(b, 2), 4) if offset else (None, 2)
    five = kind.startswith("Q5")
    qh = int.from_bytes(b[at : at + 4], "little") if five else 0
    qs = b[at + 4 :] if five else b[at:]
    y = []
    for half in (0, 1):
        for j in range(16):
            q = (qs[j] >> (4 * half)) & 0xF | ((qh >> (j + 16 * half)) & 1) << 4
            zero = 16 if five else 8
            y.append(F(F(d * F(q)) + m) if offset else F(d * F(q - zero)))
    return y


def _k_offset(kind: str, b: bytes) -> list[np.float32]:
    """Q4_K, Q5_K: 8 sub-blocks of 32, each (d * scale) * q - dmin * min."""
    d, dmin, scales = _half(b, 0), _half(b, 2), b[4:16]
    qh, qs = (b[16:48], b[48:]) if kind == "Q5_K" else (bytes(32), b[16:])
    y = []
    for s in range(8):
        sc, mn = _scale_min(s, scales)
        d1, m1 = F(d * F(sc)), F(dmin * F(mn))
        for i in range(32):
            q = (qs[32 * (s // 2) + i] >> (4 * (s % 2))) & 0xF | ((qh[i] >> s) & 1) << 4
            y.append(F(F(d1 * F(q)) - m1))
    return y


def _q6_k(kind: str, b: bytes) -> list[np.float32]:
    """Q6_K: two halves of 128, each four quarters of 32 (ggml's loop)."""
    ql, qh, sc, d = b[:128], b[128:192], np.frombuffer(b[192:208], np.int8), _half(b, 208)
    out = [F(0)] * 256
    for n in (0, 1):
        lo, hi = ql[64 * n :], qh[32 * n :]
        for i in range(32):
            qs = (
                (lo[i] & 0xF) | ((hi[i] >> 0) & 3) << 4,
                (lo[i + 32] & 0xF) | ((hi[i] >> 2) & 3) << 4,
                (lo[i] >> 4) | ((hi[i] >> 4) & 3) << 4,
                (lo[i + 32] >> 4) | ((hi[i] >> 6) & 3) << 4,
            )
            for r, q in enumerate(qs):
                scale = F(d * F(sc[8 * n + 2 * r + i // 16]))
                out[128 * n + 32 * r + i] = F(scale * F(q - 32))
    return out


def slow_block(kind: str, b: bytes) -> list[np.float32]:
    """One block of type ``kind`` -> its values, one at a time."""
    if kind.endswith("_K"):
        return _q6_k(kind, b) if kind == "Q6_K" else _k_offset(kind, b)
    return _legacy(kind, b)


# Where each type keeps its float16 scales, so random blocks get finite ones.
HALVES = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
          "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # fmt: skip


def random_blocks(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` blocks of ``kind`` (uint8 [n, size]): random bits, every scale a
    random finite float16 of either sign (subnormals included)."""
    rng = np.random.default_rng(seed)
    size = BY_NAME[kind].size
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for at in HALVES[kind]:
        halves = rng.standard_normal(n).astype(np.float32) * 10.0 ** rng.integers(-7, 3, n)
        blocks[:, at : at + 2] = halves.astype("<f2").view(np.uint8).reshape(n, 2)
    return blocks
