"""TensorFlow checkpoints (the "tensor bundle" format), read and written with
NumPy and the standard library alone: the files under OpenAI's layout
(``openai.py`` is the format; this is how its checkpoint is stored).

A checkpoint ``PREFIX`` is two kinds of file:

- ``PREFIX.index``: a LevelDB-style sorted table. Its empty key holds a
  ``BundleHeaderProto`` (number of shards, endianness, version); every other
  key is a tensor name whose value is a ``BundleEntryProto``: dtype, shape,
  shard id, byte offset and size in that shard, and the masked CRC-32C of the
  tensor's bytes.
- ``PREFIX.data-SSSSS-of-NNNNN``: the shards, raw little-endian tensor bytes.

Only what GPT-2 checkpoints need is supported: dense numeric tensors, any
number of shards, no compression. Anything else is refused by name.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picogpt2.util.atomic import atomic_write
from picogpt2.util.crc32c import crc32c, mask
from picogpt2.util.errors import PicoGPT2Error

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the magic
RESTART_INTERVAL = 16  # entries between full keys in a table block

# TensorFlow DataType enum -> NumPy dtype, for the types we accept.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 9: "<i8", 19: "<f2"}
DTYPE_CODES = {np.dtype(v): k for k, v in DTYPES.items()}

# Protobuf field numbers, from TensorFlow's tensor_bundle.proto,
# tensor_shape.proto and versions.proto; the reader and the writer use these.
HEADER_NUM_SHARDS, HEADER_ENDIANNESS, HEADER_VERSION = 1, 2, 3  # BundleHeaderProto
VERSION_PRODUCER = 1  # VersionDef
ENTRY_DTYPE, ENTRY_SHAPE, ENTRY_SHARD_ID, ENTRY_OFFSET = 1, 2, 3, 4  # BundleEntryProto
ENTRY_SIZE, ENTRY_CRC32C, ENTRY_SLICES = 5, 6, 7
SHAPE_DIM = 2  # TensorShapeProto
DIM_SIZE = 1  # TensorShapeProto.Dim
LITTLE_ENDIAN = 0  # BundleHeaderProto.Endianness


class CheckpointError(PicoGPT2Error, ValueError):
    """A checkpoint is unreadable, damaged or unsupported. ``path`` names the
    file at fault, so a downloader knows which one to fetch again."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's record in the index."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # masked, as stored


# -- protobuf wire format: just varints, fixed32 and nested messages --------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse_fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """field number -> values (ints for varint/fixed, bytes for messages)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    if pos != len(buf):
        raise ValueError("truncated protobuf message")
    return fields


def field_varint(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value) if value else b""


def field_message(number: int, payload: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def field_fixed32(number: int, value: int) -> bytes:
    return encode_varint(number << 3 | 5) + struct.pack("<I", value)


# -- the sorted table (LevelDB format) ---------------------------------------


def parse_block(block: bytes) -> list[tuple[bytes, bytes]]:
    """Entries of one table block: each key shares a prefix with the one
    before it, and restart points (unused when reading in order) follow."""
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def read_block(data: bytes, handle: bytes, path: Path) -> bytes:
    offset, pos = read_varint(handle, 0)
    size, _ = read_varint(handle, pos)
    block = data[offset : offset + size]
    trailer = data[offset + size : offset + size + 5]
    if len(block) != size or len(trailer) != 5:
        raise CheckpointError(f"{path}: truncated table block at byte {offset}", path)
    if trailer[0] != 0:
        raise CheckpointError(f"{path}: compressed table blocks are not supported", path)
    if mask(crc32c(block + trailer[:1])) != struct.unpack("<I", trailer[1:])[0]:
        raise CheckpointError(f"{path}: CRC-32C mismatch in table block at byte {offset}", path)
    return block


def read_table(path: Path, data: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """The entries of the table at ``path`` (``data``: its bytes, when read)."""
    data = path.read_bytes() if data is None else data
    if len(data) < FOOTER_SIZE or struct.unpack("<Q", data[-8:])[0] != TABLE_MAGIC:
        raise CheckpointError(f"{path}: not a TensorFlow checkpoint index", path)
    footer = data[-FOOTER_SIZE:]
    _, pos = read_varint(footer, 0)  # metaindex handle: nothing we need
    _, pos = read_varint(footer, pos)
    index = read_block(data, footer[pos:], path)
    entries = []
    for _, handle in parse_block(index):
        entries += parse_block(read_block(data, handle, path))
    return entries


def build_block(entries: list[tuple[bytes, bytes]]) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % RESTART_INTERVAL == 0:
            restarts.append(len(out))
        else:
            limit = min(len(key), len(previous))
            while shared < limit and key[shared] == previous[shared]:
                shared += 1
        out += encode_varint(shared) + encode_varint(len(key) - shared)
        out += encode_varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    out += struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def build_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A table of one data block, an empty metaindex and an index block."""
    out = bytearray()

    def append_block(block: bytes) -> bytes:
        handle = encode_varint(len(out)) + encode_varint(len(block))
        out.extend(block + b"\x00" + struct.pack("<I", mask(crc32c(block + b"\x00"))))
        return handle

    data_handle = append_block(build_block(entries))
    meta_handle = append_block(build_block([]))
    index_handle = append_block(build_block([(entries[-1][0], data_handle)]))
    footer = (meta_handle + index_handle).ljust(FOOTER_SIZE - 8, b"\x00")
    return bytes(out + footer + struct.pack("<Q", TABLE_MAGIC))


# -- the bundle ---------------------------------------------------------------


def shard_path(prefix: Path, shard: int, n_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{n_shards:05d}")


def find_checkpoint_prefix(path: str | Path) -> Path:
    """The checkpoint prefix for a folder or a prefix.

    A folder's ``checkpoint`` file names the latest prefix, as TensorFlow
    writes it. A relative name is looked for inside the folder. Unlike
    TensorFlow, an absolute name (written on another machine, or pointing at
    another run) or one leading out with ``..`` is looked for inside the
    folder by its last component: nothing outside the folder is ever read,
    converted or removed.
    """
    path = Path(path)
    if Path(f"{path}.index").is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder or prefix", path)
    state = path / "checkpoint"
    if state.is_file():
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(), re.M)
        if not match:
            raise CheckpointError(f"{state}: no model_checkpoint_path line", state)
        named = Path(match.group(1))
        inside = named.is_absolute() or ".." in named.parts
        candidate = path / named.name if inside else path / named
        if Path(f"{candidate}.index").is_file():
            return candidate
        raise CheckpointError(
            f"{state}: names {named}, but {candidate}.index does not exist", state
        )
    indexes = sorted(path.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    raise CheckpointError(f"{path}: no 'checkpoint' file and not exactly one *.index file", path)


Index = tuple[int, dict[str, TensorEntry]]  # (number of shards, name -> entry)


def read_tf_index(prefix: str | Path, data: bytes | None = None) -> Index:
    """(number of shards, name -> entry) from ``PREFIX.index`` (``data``:
    its bytes, when already read)."""
    prefix = find_checkpoint_prefix(prefix)
    path = Path(f"{prefix}.index")
    n_shards, entries = 1, {}
    for key, value in read_table(path, data):
        try:
            fields = parse_fields(value)
        except ValueError as e:
            raise CheckpointError(f"{path}: bad record for {key!r}: {e}", path) from None
        if key == b"":
            n_shards = int(fields.get(HEADER_NUM_SHARDS, [1])[0])
            if fields.get(HEADER_ENDIANNESS, [LITTLE_ENDIAN])[0] != LITTLE_ENDIAN:
                raise CheckpointError(f"{path}: big-endian checkpoints are not supported", path)
            continue
        name = key.decode("utf-8", errors="replace")
        entries[name] = parse_entry(name, fields, path)
    return n_shards, entries


def parse_entry(name: str, fields: dict[int, list[int | bytes]], path: Path) -> TensorEntry:
    """One tensor's ``BundleEntryProto`` (absent fields are zero, as in proto3)."""

    def number(field: int) -> int:
        return int(fields.get(field, [0])[0])

    code = number(ENTRY_DTYPE)
    if code not in DTYPES:
        raise CheckpointError(f"{path}: {name} has unsupported TensorFlow dtype {code}", path)
    if ENTRY_SLICES in fields:
        raise CheckpointError(f"{path}: {name} is partitioned (slices unsupported)", path)
    try:
        dims = parse_fields(fields.get(ENTRY_SHAPE, [b""])[0]).get(SHAPE_DIM, [])
        shape = tuple(int(parse_fields(d).get(DIM_SIZE, [0])[0]) for d in dims)
    except ValueError as e:
        raise CheckpointError(f"{path}: bad shape for {name}: {e}", path) from None
    return TensorEntry(
        name=name,
        dtype=np.dtype(DTYPES[code]),
        shape=shape,
        shard=number(ENTRY_SHARD_ID),
        offset=number(ENTRY_OFFSET),
        size=number(ENTRY_SIZE),
        crc32c=number(ENTRY_CRC32C),
    )


def read_tf_checkpoint(
    prefix: str | Path,
    *,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
    index: Index | None = None,
) -> dict[str, np.ndarray]:
    """name -> array for every tensor of a checkpoint (a prefix or a folder;
    ``index``: its index, when already read).

    Arrays are read-only views of the memory-mapped shards: nothing is copied.
    With ``verify`` (the default) every tensor's CRC-32C is checked; a
    mismatch or a shard too short for a tensor raises ``CheckpointError``
    naming the tensor and the file. ``progress`` is called with each
    tensor's size in bytes once it is read.
    """
    prefix = find_checkpoint_prefix(prefix)
    n_shards, entries = index or read_tf_index(prefix)
    shards: dict[int, np.ndarray] = {}
    tensors = {}
    for name, entry in entries.items():
        path = shard_path(prefix, entry.shard, n_shards)
        if entry.shard not in shards:
            if not path.is_file():
                raise CheckpointError(f"{path}: missing shard (needed for {name})", path)
            size = path.stat().st_size
            shards[entry.shard] = (
                np.memmap(path, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
            )
        shard = shards[entry.shard]
        end = entry.offset + entry.size
        if end > len(shard):
            raise CheckpointError(
                f"{path}: truncated: {name} needs bytes {entry.offset}..{end} "
                f"but the file has only {len(shard)} bytes",
                path,
            )
        expected = int(np.prod(entry.shape, dtype=np.int64)) * entry.dtype.itemsize
        if entry.size != expected:
            raise CheckpointError(
                f"{path}: {name} is {entry.size} bytes, its shape needs {expected}", path
            )
        raw = shard[entry.offset : end]
        if verify and mask(crc32c(raw)) != entry.crc32c:
            raise CheckpointError(f"{path}: CRC-32C mismatch in {name}: the file is damaged", path)
        tensors[name] = raw.view(entry.dtype).reshape(entry.shape)
        if progress:
            progress(entry.size)
    return tensors


def write_tf_checkpoint(
    prefix: str | Path, tensors: dict[str, np.ndarray], *, n_shards: int = 1
) -> None:
    """Write ``tensors`` as a TensorFlow checkpoint ``PREFIX`` (index, data
    shards and a ``checkpoint`` file beside them), laid out as TensorFlow
    writes it: tensors sorted by name, spread over ``n_shards`` shards."""
    prefix = Path(prefix)
    names = sorted(tensors)
    if not names:
        raise ValueError("a checkpoint needs at least one tensor")
    version = field_message(HEADER_VERSION, field_varint(VERSION_PRODUCER, 1))
    header = field_varint(HEADER_NUM_SHARDS, n_shards) + version
    records = [(b"", header)]
    shard_files = [bytearray() for _ in range(n_shards)]
    for i, name in enumerate(names):
        array = np.asarray(tensors[name])
        dtype = array.dtype.newbyteorder("<")
        if dtype not in DTYPE_CODES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot be written")
        data = np.ascontiguousarray(array, dtype=dtype).tobytes()
        shard = i * n_shards // len(names)
        dims = b"".join(field_message(SHAPE_DIM, field_varint(DIM_SIZE, d)) for d in array.shape)
        entry = (
            field_varint(ENTRY_DTYPE, DTYPE_CODES[dtype])
            + field_message(ENTRY_SHAPE, dims)
            + field_varint(ENTRY_SHARD_ID, shard)
            + field_varint(ENTRY_OFFSET, len(shard_files[shard]))
            + field_varint(ENTRY_SIZE, len(data))
            + field_fixed32(ENTRY_CRC32C, mask(crc32c(data)))
        )
        records.append((name.encode("utf-8"), entry))
        shard_files[shard] += data
    outputs = {shard_path(prefix, s, n_shards): bytes(b) for s, b in enumerate(shard_files)}
    outputs[Path(f"{prefix}.index")] = build_table(records)
    outputs[prefix.parent / "checkpoint"] = (
        f'model_checkpoint_path: "{prefix.name}"\nall_model_checkpoint_paths: "{prefix.name}"\n'
    ).encode()
    for path, content in outputs.items():
        with atomic_write(path) as f:
            f.write(content)
