"""CRC-32C, vectorised, and TensorFlow's masking of it."""

import numpy as np
import pytest

from picogpt2.util.crc32c import crc32c, mask, unmask


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"", 0x00000000),
        (b"123456789", 0xE3069283),
        (bytes(32), 0x8A9136AA),
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
    ],
)
def test_crc32c_known_values(data, expected):
    assert crc32c(data) == expected


def crc32c_bytewise(data: bytes) -> int:
    """The textbook bit-at-a-time definition, as an independent check."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 100, 1000, 4099])
def test_crc32c_matches_definition_and_continues(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == crc32c_bytewise(data)
    assert crc32c(data[n // 3 :], crc32c(data[: n // 3])) == crc32c(data)


def test_crc32c_across_chunks():
    from picogpt2.util import crc32c as module

    data = np.random.default_rng(0).integers(0, 256, module.CHUNK * 2 + 77, dtype=np.uint8)
    expected = crc32c(data[: module.CHUNK])
    expected = crc32c(data[module.CHUNK :].tobytes(), expected)
    assert crc32c(data) == expected


def test_mask_round_trip():
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert unmask(mask(value)) == value
