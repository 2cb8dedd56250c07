"""Converted weights: one safetensors file per model, memory-mapped.

Reading OpenAI's TensorFlow checkpoint means verifying 500 MB to 6 GB of
CRCs; we do that once and write ``model.safetensors`` beside it, holding the
same tensors under the same names and shapes. safetensors is a JSON header
followed by raw little-endian bytes, so NumPy maps it without copying, and
other implementations (C, Rust, transformers) read it with existing tools.

The header's metadata records the SHA-256 of the checkpoint index it came
from; a conversion whose index has changed (a new fine-tune written over the
folder) is redone. The file is written under a temporary name and renamed
only when complete, so an interrupted conversion never leaves a file that
loads.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from picogpt2.atomic import atomic_write
from picogpt2.checkpoint import (
    CheckpointError,
    find_checkpoint_prefix,
    read_tf_checkpoint,
    read_tf_index,
    shard_path,
)

WEIGHTS_FILE = "model.safetensors"
ALIGN = 64  # header padded so every tensor starts 64-byte aligned
DTYPE_NAMES = {"<f4": "F32", "<f8": "F64", "<f2": "F16", "<i4": "I32", "<i8": "I64"}
NAME_DTYPES = {v: np.dtype(k) for k, v in DTYPE_NAMES.items()}


class WeightsError(ValueError):
    """A model folder cannot be loaded; the message says which file and why."""


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


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> read-only memory-mapped array, metadata). Raises
    ``WeightsError`` if the file is not safetensors or is truncated."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        size = path.stat().st_size
    except (OSError, struct.error, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    metadata = header.pop("__metadata__", {})
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + end != size:
        raise WeightsError(f"{path}: {size} bytes, expected {8 + n + end}: truncated or padded")
    data = np.memmap(path, np.uint8, mode="r", offset=8 + n) if end else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        begin, stop = info["data_offsets"]
        dtype = NAME_DTYPES[info["dtype"]]
        tensors[name] = data[begin:stop].view(dtype).reshape(info["shape"])
    return tensors, metadata


def _index_sha256(prefix: Path) -> str:
    return hashlib.sha256(Path(f"{prefix}.index").read_bytes()).hexdigest()


def _shards(prefix: Path) -> list[Path]:
    return sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))


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
    """True when ``model.safetensors`` is complete and matches the folder's
    checkpoint index (or the folder has no checkpoint left to match)."""
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        return False
    try:
        _, metadata = read_safetensors(path)
    except WeightsError:
        return False
    if not has_checkpoint(model_dir):
        return True
    prefix = find_checkpoint_prefix(model_dir)
    return metadata.get("source_index_sha256") == _index_sha256(prefix)


def convert(model_dir: str | Path, *, keep_original: bool = False) -> Path:
    """Convert the folder's TensorFlow checkpoint into ``model.safetensors``
    (verifying every CRC), unless a matching conversion exists. Then remove
    the data shards unless ``keep_original``; the small index stays, as the
    record the conversion is matched against. Returns the weights path."""
    model_dir = Path(model_dir)
    path = model_dir / WEIGHTS_FILE
    if not is_converted(model_dir):
        prefix = find_checkpoint_prefix(model_dir)
        tensors = read_tf_checkpoint(prefix, verify=True)
        metadata = {
            "format": "picogpt2",
            "source": prefix.name,
            "source_index_sha256": _index_sha256(prefix),
        }
        write_safetensors(path, tensors, metadata)
    if not keep_original and has_checkpoint(model_dir):
        for shard in _shards(find_checkpoint_prefix(model_dir)):
            shard.unlink()
    return path


def load_weights(model_dir: str | Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors, by their checkpoint names, memory-mapped from
    ``model.safetensors`` (converting first when needed)."""
    model_dir = Path(model_dir)
    if not is_converted(model_dir):
        if not has_checkpoint(model_dir):
            raise WeightsError(
                f"{model_dir}: no {WEIGHTS_FILE} and no TensorFlow checkpoint to convert"
            )
        convert(model_dir, keep_original=True)
    tensors, _ = read_safetensors(model_dir / WEIGHTS_FILE)
    return tensors
