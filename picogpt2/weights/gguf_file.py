"""GGUF, the container llama.cpp's models come in: read and written, every
size checked against the file before anything is read.

The layout (versions 2 and 3; little-endian), as ggml's ``gguf.h`` states it:

    "GGUF"  uint32 version  uint64 n_tensors  uint64 n_kv
    n_kv times:       string key, uint32 value type, the value
    n_tensors times:  string name, uint32 n_dims, uint64 ne[n_dims],
                      uint32 ggml type, uint64 offset
    padding to ``general.alignment`` (32 unless the metadata says)
    the tensors' data, each at its offset from here (a multiple of the alignment)

A string is a uint64 length and that many bytes of UTF-8; an array is a
uint32 element type, a uint64 count and the elements. ``ne`` is ggml's
order, fastest first: a tensor of ``ne = [768, 50257]`` is NumPy's
``[50257, 768]`` (rows of 768), and its rows are whole blocks of its type
(``ggml_types``). The file is memory-mapped: a tensor's bytes are a view.
Every count, length, offset and size is checked against the file's size
as it is read, and every lie is one line naming the file.
"""

from __future__ import annotations

import functools
import math
import mmap
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picogpt2.util.atomic import atomic_write
from picogpt2.util.errors import FormatError
from picogpt2.weights.ggml_types import BY_ID, GGMLType, type_name

MAGIC = b"GGUF"
VERSIONS = (2, 3)
ALIGNMENT = 32  # when ``general.alignment`` does not say
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
# Value types: number -> (name, struct format); 8 is a string, 9 an array.
SCALARS = {0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
           4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<?"),
           10: ("uint64", "<Q"), 11: ("int64", "<q"), 12: ("float64", "<d")}  # fmt: skip
STRING, ARRAY = 8, 9
TYPE_OF = {name: number for number, (name, _) in SCALARS.items()} | {"string": STRING}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table: its shape in NumPy's order (``ne``
    reversed), its type, and where its bytes are in the file."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    start: int  # in the file
    nbytes: int


@dataclass
class GGUFFile:
    """A GGUF file opened: its metadata (numbers, strings, and arrays as
    NumPy arrays or lists of strings), its tensor table, and the file
    mapped into memory (``data`` gives a tensor's bytes)."""

    path: Path
    version: int
    metadata: dict[str, object]
    tensors: dict[str, TensorInfo]
    mapped: mmap.mmap

    def data(self, info: TensorInfo) -> np.ndarray:
        """The tensor's bytes (uint8), a view of the file."""
        return np.frombuffer(self.mapped, np.uint8, info.nbytes, info.start)


class _Reader:
    """Reads the header from the mapped file, checking each read against
    its size."""

    def __init__(self, path: Path, mapped: mmap.mmap) -> None:
        self.path, self.mapped, self.at = path, mapped, 0

    def error(self, what: str) -> FormatError:
        return FormatError(f"{self.path}: {what}")

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.mapped) - self.at:
            raise self.error(f"{what} runs past the end of the file (byte {self.at:,} of "
                             f"{len(self.mapped):,}): truncated, or not GGUF")  # fmt: skip
        chunk = self.mapped[self.at : self.at + n]
        self.at += n
        return chunk

    def scalar(self, fmt: str, what: str) -> int | float | bool:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def count(self, what: str, least_bytes: int) -> int:
        """A uint64 count of things at least ``least_bytes`` each: no more
        than the rest of the file could hold."""
        n = self.scalar("<Q", what)
        if n * least_bytes > len(self.mapped) - self.at:
            raise self.error(f"{what} is {n:,}, more than the file's {len(self.mapped):,} bytes "
                             "could hold: truncated, or not GGUF")  # fmt: skip
        return n

    def string(self, what: str) -> str:
        raw = self.take(self.count(f"the length of {what}", 1), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not UTF-8") from None

    def value(self, kind: int, key: str, nested: bool = False) -> object:
        if kind in SCALARS:
            return self.scalar(SCALARS[kind][1], key)
        if kind == STRING:
            return self.string(f"the value of {key}")
        if kind != ARRAY or nested:
            raise self.error(f"{key}: value type {kind} is not one of GGUF's")
        element = self.scalar("<I", f"{key}'s element type")
        if element in SCALARS:
            fmt = SCALARS[element][1]
            n = self.count(f"{key}'s length", struct.calcsize(fmt))
            return np.frombuffer(self.take(n * struct.calcsize(fmt), key), fmt)
        n = self.count(f"{key}'s length", 8 if element == STRING else 12)
        return [self.value(element, f"{key}[{i}]", nested=True) for i in range(n)]


def open_gguf(path: Path) -> GGUFFile | None:
    """The GGUF file at ``path``, its header read and checked; None when it
    is not GGUF (no magic). Read once while the file stays as it is (its
    size, time and inode): opening a model and reading the vocabulary it
    carries share one reading."""
    if not path.is_file():
        return None
    stat = path.stat()
    return _opened(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=4)
def _opened(path: Path, size: int, mtime_ns: int, inode: int) -> GGUFFile | None:
    """``open_gguf``'s reading, for the file as ``size``, ``mtime_ns`` and
    ``inode`` identify it."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            return None
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as e:
            raise FormatError(f"{path}: cannot be mapped into memory ({e})") from None
    reader = _Reader(path, mapped)
    reader.take(4, "the magic")
    version = reader.scalar("<I", "the version")
    if version not in VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        why = ("a big-endian file; picogpt2 reads little-endian GGUF" if swapped in VERSIONS
               else f"version {version}; picogpt2 reads versions 2 and 3")  # fmt: skip
        raise reader.error(f"GGUF {why}")
    n_tensors = reader.count("the number of tensors", 8 + 4 + 4 + 8)
    n_kv = reader.count("the number of metadata keys", 8 + 4 + 1)
    metadata: dict[str, object] = {}
    for i in range(n_kv):
        key = reader.string(f"metadata key {i}")
        if key in metadata:
            raise reader.error(f"the metadata key {key} is given twice")
        metadata[key] = reader.value(reader.scalar("<I", f"{key}'s type"), key)
    alignment = metadata.get("general.alignment", ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise reader.error(f"general.alignment is {alignment!r}, not a power of two")
    table = [_tensor_info(reader, i) for i in range(n_tensors)]
    data_start = -(-reader.at // alignment) * alignment
    tensors = _placed(reader, table, data_start, alignment)
    return GGUFFile(path, version, metadata, tensors, mapped)


def _tensor_info(reader: _Reader, i: int) -> tuple[str, tuple[int, ...], int, int]:
    name = reader.string(f"the name of tensor {i}")
    n_dims = reader.scalar("<I", f"{name}'s number of dimensions")
    if not 1 <= n_dims <= MAX_DIMS:
        raise reader.error(f"{name} has {n_dims} dimensions; ggml allows 1 to {MAX_DIMS}")
    ne = struct.unpack(f"<{n_dims}Q", reader.take(8 * n_dims, f"{name}'s dimensions"))
    kind = reader.scalar("<I", f"{name}'s type")
    offset = reader.scalar("<Q", f"{name}'s offset")
    return name, ne, kind, offset


def _placed(
    reader: _Reader, table: list[tuple[str, tuple[int, ...], int, int]], data_start: int,
    alignment: int,
) -> dict[str, TensorInfo]:  # fmt: skip
    """The tensor table checked against the file: each tensor placed
    (``_place``), named once, and none over another."""
    tensors: dict[str, TensorInfo] = {}
    for name, ne, kind_id, offset in table:
        if name in tensors:
            raise reader.error(f"the tensor {name} is listed twice")
        tensors[name] = _place(reader, name, ne, kind_id, data_start + offset, alignment)
    ordered = sorted(tensors.values(), key=lambda t: t.start)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.start + before.nbytes > after.start:
            raise reader.error(f"the tensors {before.name} and {after.name} overlap")
    return tensors


def _place(
    reader: _Reader, name: str, ne: tuple[int, ...], kind_id: int, start: int, alignment: int
) -> TensorInfo:
    """One tensor: a type picogpt2 reads, whole blocks per row, an aligned
    offset, and inside the file."""
    kind = BY_ID.get(kind_id)
    if kind is None:
        known = ", ".join(t.name for t in BY_ID.values())
        raise reader.error(f"{name} is stored as {type_name(kind_id)}; picogpt2 reads {known}")
    if min(ne) == 0 or ne[0] % kind.block:
        raise reader.error(f"{name}: ne {list(ne)} is not whole {kind.name} blocks of "
                           f"{kind.block} per row")  # fmt: skip
    if start % alignment:
        raise reader.error(f"{name}'s data starts at byte {start:,}, not a multiple of the "
                           f"alignment {alignment}")  # fmt: skip
    nbytes = kind.row_bytes(ne[0]) * math.prod(ne[1:])
    size = len(reader.mapped)
    if start + nbytes > size:
        raise reader.error(
            f"{name} ({kind.name} {list(ne)}: {nbytes:,} bytes at {start:,}) runs past the end "
            f"of the file ({size:,} bytes): truncated"
        )
    return TensorInfo(name, tuple(reversed(ne)), kind, start, nbytes)


# What ``write_gguf`` takes: metadata key -> (GGUF value type name, value),
# an array as ("array of " + element type, values); tensors as (name, type,
# NumPy shape, a function that gives its bytes when they are written).
Metadata = dict[str, tuple[str, object]]
Tensors = Iterable[tuple[str, GGMLType, tuple[int, ...], Callable[[], bytes]]]


def _encode(kind: str, value: object) -> bytes:
    if kind.startswith("array of "):
        element = kind.removeprefix("array of ")
        items = list(value)  # type: ignore[call-overload]
        head = struct.pack("<IIQ", ARRAY, TYPE_OF[element], len(items))
        return head + b"".join(_encode(element, item)[4:] for item in items)
    if kind == "string":
        raw = str(value).encode("utf-8")
        return struct.pack("<IQ", STRING, len(raw)) + raw
    number = TYPE_OF[kind]
    return struct.pack("<I", number) + struct.pack(SCALARS[number][1], value)


def write_gguf(out: Path, metadata: Metadata, tensors: Tensors) -> None:
    """A GGUF v3 file ``out``, whole or not at all: the metadata in the
    order given, then the tensors, each aligned to 32 bytes, made one at a
    time as they are written."""
    tensors = list(tensors)
    with atomic_write(out) as f:
        f.write(MAGIC + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
        for key, (kind, value) in metadata.items():
            raw = key.encode("utf-8")
            f.write(struct.pack("<Q", len(raw)) + raw + _encode(kind, value))
        offset = 0
        sizes = []
        for name, kind, shape, _ in tensors:
            raw = name.encode("utf-8")
            ne = tuple(reversed(shape))
            f.write(struct.pack(f"<Q{len(raw)}sI{len(ne)}QIQ", len(raw), raw, len(ne), *ne,
                                kind.id, offset))  # fmt: skip
            sizes.append(kind.row_bytes(ne[0]) * math.prod(ne[1:]))
            offset += -(-sizes[-1] // ALIGNMENT) * ALIGNMENT
        f.write(b"\0" * (-f.tell() % ALIGNMENT))
        for (name, _, _, data), size in zip(tensors, sizes, strict=True):
            raw = data()
            if len(raw) != size:
                raise ValueError(f"{name}: {len(raw)} bytes, where its shape needs {size}")
            f.write(raw)
            f.write(b"\0" * (-size % ALIGNMENT))
