"""Converted weights: one safetensors file per model, memory-mapped.

Reading OpenAI's TensorFlow checkpoint means verifying 500 MB to 6 GB of
CRCs; we do that once and write ``model.safetensors`` beside it, holding the
same tensors under the same names and shapes. safetensors is a JSON header
followed by raw little-endian bytes, so NumPy maps it without copying, and
other implementations (C, Rust, transformers) read it with existing tools.

The header's metadata records the SHA-256 of the checkpoint index it came
from (a conversion whose index has changed, a new fine-tune written over the
folder, is redone) and the CRC-32C of every tensor (``verify_weights``
checks the bytes against them). The file is written under a temporary name
and renamed only when complete, so an interrupted conversion never leaves a
file that loads; a file that does not match its own header is reported as
damaged, never silently replaced.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from picogpt2.atomic import atomic_write, folder_lock
from picogpt2.checkpoint import (
    CheckpointError,
    find_checkpoint_prefix,
    read_tf_checkpoint,
    read_tf_index,
    shard_path,
)
from picogpt2.crc32c import crc32c, unmask
from picogpt2.errors import PicoGPT2Error
from picogpt2.status import Progress, status

WEIGHTS_FILE = "model.safetensors"
ALIGN = 64  # header padded so every tensor starts 64-byte aligned
DTYPE_NAMES = {"<f4": "F32", "<f8": "F64", "<f2": "F16", "<i4": "I32", "<i8": "I64"}
# bfloat16 has no NumPy dtype: its 16 bits are read as uint16 and widened.
NAME_DTYPES = {**{v: np.dtype(k) for k, v in DTYPE_NAMES.items()}, "BF16": np.dtype("<u2")}
CRC_KEY = "crc32c"  # metadata: JSON object, tensor name -> CRC-32C of its bytes, hex


class WeightsError(PicoGPT2Error, ValueError):
    """A model folder cannot be loaded; the message says which file and why."""


class DamagedWeightsError(WeightsError):
    """``model.safetensors`` does not match its own header or checksums."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is damaged: {reason}")
        self.path, self.reason = path, reason


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write ``tensors`` atomically: a temporary file, fsync, then rename."""
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


def read_header(path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """(name -> {dtype, shape, data_offsets}, metadata, where the data starts),
    every entry checked: known dtype, a shape of sizes, and offsets that
    tile the data exactly. Raises ``DamagedWeightsError`` naming the fault."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            raw = f.read(n) if n is not None and 8 + n <= size else None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e.strerror}") from None
    if raw is None:
        raise DamagedWeightsError(path, f"{size} bytes, too short for its header")
    try:
        header = json.loads(raw)
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
    if 8 + len(raw) + end != size:
        raise DamagedWeightsError(
            path, f"{size} bytes, but its header describes {8 + len(raw) + end}"
        )
    return header, metadata, 8 + len(raw)


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


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> read-only memory-mapped array, metadata), the header checked
    strictly (``DamagedWeightsError`` names the tensor at fault). bfloat16
    tensors come back as float32 copies (exact)."""
    header, metadata, data_start = read_header(path)
    size = path.stat().st_size
    data = (
        np.memmap(path, np.uint8, mode="r", offset=data_start)
        if size > data_start
        else np.zeros(0, np.uint8)
    )
    tensors = {}
    for name, info in header.items():
        begin, stop = info["data_offsets"]
        array = data[begin:stop].view(NAME_DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = bfloat16_to_float32(array) if info["dtype"] == "BF16" else array
    return tensors, metadata


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: widen the 16 bits exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def verify_weights(model_dir: str | Path, progress: Callable[[int], None] | None = None) -> int:
    """Check every tensor's bytes in ``model.safetensors`` against the
    CRC-32C recorded when it was written; return how many were checked.
    ``progress`` is called with each tensor's size in bytes."""
    path = Path(model_dir) / WEIGHTS_FILE
    tensors, metadata = read_safetensors(path)
    if CRC_KEY not in metadata:
        raise WeightsError(
            f"{path} records no checksums (converted by an older picogpt2): delete it, "
            "and picogpt2 converts or downloads it again"
        )
    try:
        expected = {name: int(value, 16) for name, value in json.loads(metadata[CRC_KEY]).items()}
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


def _index_sha256(prefix: Path) -> str:
    return hashlib.sha256(Path(f"{prefix}.index").read_bytes()).hexdigest()


def has_checkpoint(model_dir: Path) -> bool:
    try:
        find_checkpoint_prefix(model_dir)
    except CheckpointError:
        return False
    return True


def has_complete_checkpoint(model_dir: Path) -> bool:
    """A checkpoint whose index and every data shard are present."""
    try:
        prefix = find_checkpoint_prefix(model_dir)
        n_shards, _ = read_tf_index(prefix)
    except CheckpointError:
        return False
    return all(shard_path(prefix, s, n_shards).is_file() for s in range(n_shards))


def is_converted(model_dir: Path) -> bool:
    """True when ``model.safetensors`` exists and matches the folder's
    checkpoint index (or the folder has no checkpoint left to match).
    Raises ``DamagedWeightsError`` if the file does not match its header."""
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        return False
    _, metadata, _ = read_header(path)
    if not has_checkpoint(model_dir):
        return True
    prefix = find_checkpoint_prefix(model_dir)
    return metadata.get("source_index_sha256") == _index_sha256(prefix)


def convert(
    model_dir: str | Path, *, keep_original: bool = False, show_progress: bool = True
) -> Path:
    """Convert the folder's TensorFlow checkpoint into ``model.safetensors``
    (verifying every CRC), unless a matching conversion exists. Then remove
    the data shards unless ``keep_original``; the small index stays, as the
    record the conversion is matched against. One process at a time
    converts a folder; another waits. Returns the weights path."""
    model_dir = Path(model_dir)
    path = model_dir / WEIGHTS_FILE
    with _writing(model_dir):
        if not is_converted(model_dir):
            _convert(model_dir, path, show_progress)
        if not keep_original and has_checkpoint(model_dir):
            _remove_shards(model_dir, find_checkpoint_prefix(model_dir))
    return path


def _convert(model_dir: Path, path: Path, show_progress: bool) -> None:
    prefix = find_checkpoint_prefix(model_dir)
    _, entries = read_tf_index(prefix)
    total = sum(e.size for e in entries.values())
    if show_progress:
        status(f"converting {prefix} into {path} (checking every tensor's CRC-32C) ...")
    progress = Progress(f"converting {model_dir.name}", total) if show_progress else None
    tensors = read_tf_checkpoint(prefix, verify=True, progress=progress and progress.update)
    # The index's CRCs are of these very bytes (little-endian, as written).
    crcs = {name: f"{unmask(entries[name].crc32c):08x}" for name in tensors}
    metadata = {
        "format": "picogpt2",
        "source": prefix.name,
        "source_index_sha256": _index_sha256(prefix),
        CRC_KEY: json.dumps(crcs, separators=(",", ":")),
    }
    write_safetensors(path, tensors, metadata)
    if progress:
        progress.finish()


def _remove_shards(model_dir: Path, prefix: Path) -> None:
    """Remove the checkpoint's data shards, never anything outside the folder."""
    folder = model_dir.resolve()
    for shard in sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*")):
        if folder in shard.resolve().parents:
            shard.unlink()


@contextmanager
def _writing(model_dir: Path) -> Iterator[None]:
    """Hold the folder's lock for writing, or say in one line that the
    folder cannot be written."""
    with ExitStack() as stack:
        try:
            stack.enter_context(
                folder_lock(model_dir, f"waiting for another process converting {model_dir} ...")
            )
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise WeightsError(
                f"{model_dir} is read-only, and its TensorFlow checkpoint must be converted "
                f"once into {WEIGHTS_FILE} before use: copy the folder into a writable "
                "models folder (--models-dir), or make it writable"
            ) from None
        yield


def fingerprint(files: list[Path]) -> str:
    """What identifies the source files of a conversion: their names, sizes,
    modification times and first 64 KiB (headers included)."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 16))
    return digest.hexdigest()


def cached_conversion(
    cache: Path,
    sources: list[Path],
    produce: Callable[[], dict[str, np.ndarray]],
    *,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """The tensors ``produce`` makes from ``sources`` (a transformers or llm.c
    file that is not in our layout), memory-mapped from ``cache``: written
    once, atomically, and again when the sources change. The sources are
    never modified. In a folder that cannot be written, the tensors are
    converted in memory on every load instead."""
    stamp = fingerprint(sources)
    try:
        tensors, metadata = read_safetensors(cache)
        if metadata.get("source_fingerprint") == stamp:
            return tensors
    except (WeightsError, FileNotFoundError):
        pass  # absent, stale or damaged: ours to write again
    if show_progress:
        status(f"converting {sources[0]} into {cache} (once; redone if it changes) ...")
    tensors = produce()
    metadata = {"format": "picogpt2", "source": sources[0].name, "source_fingerprint": stamp}
    try:
        with folder_lock(cache.parent, f"waiting for another process writing {cache} ..."):
            write_safetensors(cache, tensors, metadata)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        if show_progress:
            status(f"{cache.parent} is read-only: the conversion is kept in memory only")
        return tensors
    return read_safetensors(cache)[0]


def load_weights(model_dir: str | Path, *, show_progress: bool = True) -> dict[str, np.ndarray]:
    """The checkpoint's tensors, by their checkpoint names, memory-mapped from
    ``model.safetensors`` (converting first when needed; the user's
    checkpoint files are kept)."""
    model_dir = Path(model_dir)
    if not is_converted(model_dir):
        if not has_checkpoint(model_dir):
            raise WeightsError(
                f"{model_dir}: no {WEIGHTS_FILE} and no TensorFlow checkpoint to convert"
            )
        convert(model_dir, keep_original=True, show_progress=show_progress)
    tensors, _ = read_safetensors(model_dir / WEIGHTS_FILE)
    return tensors
