"""safetensors: the file every other format becomes, and a format of its own.

The file: an 8-byte little-endian header length, a JSON header (each
tensor's dtype, shape and byte range, and ``__metadata__``, an object of
strings), then the raw little-endian bytes. NumPy maps it without copying,
and C, Rust and transformers read it with existing tools. We pad the header
so every tensor starts 64-byte aligned, and read every header strictly: a
file that does not match its own header is damaged, and the error names the
tensor at fault.

The format (``--to safetensors``): a folder with ``hparams.json``,
``model.safetensors`` holding every tensor under the checkpoint's names and
shapes (``model/wte`` [n_vocab, n_embd], ``model/h0/attn/c_attn/w``
[1, n_embd, 3*n_embd], ...; ``params.py`` lists them), and the vocabulary
(``encoder.json``, ``vocab.bpe``). It is what OpenAI's checkpoints are
converted into, and the layout a C reader most wants.

What picogpt2 writes records the CRC-32C of every tensor's bytes in the
metadata (``crc32c``: tensor name -> eight hex digits), which ``verify``
checks: the way to tell damaged weights from a bug.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from picogpt2.hparams import HParams
from picogpt2.util.atomic import atomic_folder, atomic_write
from picogpt2.util.crc32c import crc32c
from picogpt2.util.errors import WeightsError
from picogpt2.util.textio import parse_json
from picogpt2.weights.formats.opened import HEAD, OpenedModel, fingerprint
from picogpt2.weights.ggml_types import bfloat16_to_float32
from picogpt2.weights.params import HPARAMS_FILE, Shapes, check_shapes, read_hparams, write_hparams
from picogpt2.weights.vocabulary import copy_vocabulary

NAME = "safetensors"
DESCRIPTION = "hparams.json, model.safetensors (the checkpoint's names and shapes), the vocabulary"
WEIGHTS_FILE = "model.safetensors"
ALIGN = 64  # header padded so every tensor starts 64-byte aligned
DTYPE_NAMES = {"<f4": "F32", "<f8": "F64", "<f2": "F16", "<i4": "I32", "<i8": "I64"}
# bfloat16 has no NumPy dtype: its 16 bits are read as uint16 and widened.
NAME_DTYPES = {**{v: np.dtype(k) for k, v in DTYPE_NAMES.items()}, "BF16": np.dtype("<u2")}
CRC_KEY = "crc32c"  # metadata: JSON object, tensor name -> CRC-32C of its bytes, hex


class DamagedWeightsError(WeightsError):
    """A safetensors file does not match its own header or checksums.
    ``mend`` says how to mend it, when the code that raised it knows."""

    def __init__(self, path: Path, reason: str, mend: str | None = None) -> None:
        super().__init__(f"{path} is damaged: {reason}" + (f"; {mend}" if mend else ""))
        self.path, self.reason, self.mend = path, reason, mend


# -- the file -------------------------------------------------------------------


def write_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``tensors`` atomically (a temporary file, fsync, then rename)."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, array in tensors.items():
        size = array.size * array.dtype.itemsize
        header[name] = {
            "dtype": DTYPE_NAMES[array.dtype.newbyteorder("<").str],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGN)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).data)


@dataclass
class SafetensorsFile:
    """A safetensors file opened once: its checked header (``entries``,
    ``metadata``), its data memory-mapped, and what identifies the file
    without reading it whole (its ``stat`` and first ``HEAD`` bytes)."""

    path: Path
    entries: dict[str, dict]
    metadata: dict[str, str]
    data: np.ndarray  # uint8, the bytes after the header
    stat: os.stat_result
    head: bytes

    def tensors(self) -> dict[str, np.ndarray]:
        """name -> read-only view of the mapped data; bfloat16 tensors come
        back as float32 copies (exact)."""
        tensors = {}
        for name, info in self.entries.items():
            begin, stop = info["data_offsets"]
            array = self.data[begin:stop].view(NAME_DTYPES[info["dtype"]]).reshape(info["shape"])
            tensors[name] = bfloat16_to_float32(array) if info["dtype"] == "BF16" else array
        return tensors


def open_safetensors(path: Path) -> SafetensorsFile:
    """The file at ``path``, opened once: its header read and checked
    strictly (``DamagedWeightsError`` names the fault), its data mapped
    from the same open file."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            head = f.read(HEAD)
            entries, metadata, data_start = _read_header(path, f, head, stat.st_size)
            data = (np.memmap(f, np.uint8, mode="r", offset=data_start)
                    if stat.st_size > data_start else np.zeros(0, np.uint8))  # fmt: skip
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror}") from None
    return SafetensorsFile(path, entries, metadata, data, stat, head)


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> read-only memory-mapped array, metadata): ``open_safetensors``."""
    opened = open_safetensors(path)
    return opened.tensors(), opened.metadata


def read_entries(path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """(name -> {dtype, shape, data_offsets}, metadata, where the data
    starts), checked as ``open_safetensors`` checks them, nothing mapped."""
    try:
        with open(path, "rb") as f:
            return _read_header(path, f, f.read(HEAD), os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror}") from None


def _read_header(
    path: Path, f: BinaryIO, head: bytes, size: int
) -> tuple[dict[str, dict], dict[str, str], int]:
    """The header of the file ``f`` (``size`` bytes), whose first bytes
    ``head`` were read: every entry checked (known dtype, a shape of sizes,
    offsets that tile the data exactly). Raises ``DamagedWeightsError``."""
    n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
    if n is None or 8 + n > size:
        raise DamagedWeightsError(path, f"{size} bytes, too short for its header")
    raw = head[8 : 8 + n] + f.read(max(8 + n - len(head), 0))
    try:
        header = parse_json(raw)
    except ValueError:
        raise DamagedWeightsError(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise DamagedWeightsError(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DamagedWeightsError(path, "its metadata is not an object of strings")
    end = 0
    for name, info in sorted(header.items(), key=lambda item: _begin(item[1])):
        end = _check_entry(path, name, info, end)
    if 8 + n + end != size:
        raise DamagedWeightsError(path, f"{size} bytes, but its header describes {8 + n + end}")
    return header, metadata, 8 + n


def entry_shapes(header: dict[str, dict]) -> Shapes:
    """Each tensor's shape and NumPy dtype name, from a checked header."""
    return {name: (tuple(info["shape"]), "bfloat16" if info["dtype"] == "BF16" else
                   NAME_DTYPES[info["dtype"]].name) for name, info in header.items()}  # fmt: skip


def _begin(info: object) -> int:
    try:
        return int(info["data_offsets"][0])  # type: ignore[index]
    except (TypeError, KeyError, IndexError, ValueError):
        return -1  # sorts first, and is reported by _check_entry


def _check_entry(path: Path, name: str, info: object, start: int) -> int:
    """Check one tensor's entry, which must begin at ``start``; return its end."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise DamagedWeightsError(path, f"tensor {name} has no dtype, shape and data_offsets")
    if info["dtype"] not in NAME_DTYPES:
        known = ", ".join(NAME_DTYPES)
        raise DamagedWeightsError(
            path, f"tensor {name} has dtype {info['dtype']!r}, not one of {known}"
        )
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(_is_size(d) for d in shape):
        raise DamagedWeightsError(path, f"tensor {name} has shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_size, offsets)):
        raise DamagedWeightsError(path, f"tensor {name} has data_offsets {offsets!r}")
    needed = math.prod(shape) * NAME_DTYPES[info["dtype"]].itemsize
    if offsets[0] != start or offsets[1] - offsets[0] != needed:
        raise DamagedWeightsError(
            path,
            f"tensor {name} {info['dtype']} {shape} needs {needed} bytes from byte {start}, "
            f"its header says {offsets[0]}..{offsets[1]}",
        )
    return offsets[1]


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def crc_metadata(crcs: dict[str, int]) -> dict[str, str]:
    """The metadata entry that records each tensor's CRC-32C."""
    return {CRC_KEY: json.dumps({k: f"{v:08x}" for k, v in crcs.items()}, separators=(",", ":"))}


def tensor_crcs(tensors: dict[str, np.ndarray]) -> dict[str, int]:
    """The CRC-32C of each tensor's little-endian bytes, as written."""
    return {
        name: crc32c(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
        for name, a in tensors.items()
    }


def verify(path: Path, progress: Callable[[int], None] | None = None) -> int:
    """Check every tensor's bytes against the CRC-32C recorded when the file
    was written; return how many were checked. ``progress`` is called with
    each tensor's size in bytes."""
    tensors, metadata = read_tensors(path)
    if CRC_KEY not in metadata:
        raise WeightsError(
            f"{path} records no checksums (converted by an older picogpt2): delete it, "
            "and picogpt2 converts or downloads it again"
        )
    try:
        expected = {name: int(value, 16) for name, value in parse_json(metadata[CRC_KEY]).items()}
    except (ValueError, AttributeError, TypeError):
        raise DamagedWeightsError(path, "its recorded checksums are unreadable") from None
    if expected.keys() != tensors.keys():
        raise DamagedWeightsError(path, "its checksums do not name the tensors it holds")
    for name, array in tensors.items():
        if crc32c(array.reshape(-1).view(np.uint8)) != expected[name]:
            raise DamagedWeightsError(path, f"the bytes of tensor {name} fail their CRC-32C")
        if progress:
            progress(array.nbytes)
    return len(tensors)


# -- the format -----------------------------------------------------------------


def detect(path: Path) -> OpenedModel | None:
    """A folder with ``hparams.json`` and ``model.safetensors``, opened:
    the sizes checked against the tensors, every tensor memory-mapped. A
    damaged file is reported as such, never replaced: it may be the only
    copy."""
    if not ((path / HPARAMS_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return None
    hparams = read_hparams(path)
    weights = open_safetensors(path / WEIGHTS_FILE)
    check_shapes(entry_shapes(weights.entries), hparams, path)
    identity = fingerprint([(weights.path, weights.stat, weights.head)])
    return OpenedModel(path, NAME, hparams, path, identity, weights.tensors())


def checksum_files(path: Path) -> list[Path]:
    """The files that record each tensor's CRC-32C when picogpt2 wrote them."""
    return [path / WEIGHTS_FILE]


def write(out: Path, hparams: HParams, tensors: dict[str, np.ndarray], vocabulary: Path) -> None:
    """The folder ``out`` (new): hparams.json, model.safetensors (float32,
    each tensor's CRC-32C recorded) and encoder.json and vocab.bpe."""
    float32 = {name: np.asarray(a, "<f4") for name, a in tensors.items()}
    with atomic_folder(out) as folder:
        write_hparams(folder, hparams)
        metadata = {"format": "picogpt2", **crc_metadata(tensor_crcs(float32))}
        write_tensors(folder / WEIGHTS_FILE, float32, metadata)
        copy_vocabulary(vocabulary, folder, ("encoder.json", "vocab.bpe"))
