"""OpenAI's layout: a folder with ``hparams.json``, the vocabulary
(``encoder.json``, ``vocab.bpe``) and a TensorFlow checkpoint
(``checkpoint``, ``model.ckpt.index``, ``model.ckpt.data-*``), as OpenAI
released GPT-2.

Reading the checkpoint means verifying every tensor's CRC-32C (500 MB to
6 GB), so it is converted once into ``model.safetensors`` beside it (the
safetensors format: the same names and shapes) through ``cache``; the SHA-256
of the index is the conversion's fingerprint, so a checkpoint written over
the folder is converted again, and the data shards may go once converted
(the downloader removes them; the small index stays as the record).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from picogpt2.hparams import HParams
from picogpt2.util.atomic import atomic_folder
from picogpt2.util.crc32c import unmask
from picogpt2.util.status import Progress
from picogpt2.weights.formats import cache
from picogpt2.weights.formats.safetensors import WEIGHTS_FILE
from picogpt2.weights.formats.tf_bundle import (
    CheckpointError,
    find_checkpoint_prefix,
    read_tf_checkpoint,
    read_tf_index,
    shard_path,
    write_tf_checkpoint,
)
from picogpt2.weights.params import HPARAMS_FILE, check_shapes, read_hparams, write_hparams
from picogpt2.weights.vocabulary import copy_vocabulary

NAME = "openai"
DESCRIPTION = "OpenAI's layout: hparams.json, encoder.json, vocab.bpe, a TensorFlow checkpoint"
PREFIX = "model.ckpt"  # the checkpoint prefix OpenAI used, and export writes


def checkpoint_prefix(folder: Path) -> Path | None:
    """The folder's checkpoint prefix (see ``find_checkpoint_prefix``), or
    None when it has none."""
    try:
        return find_checkpoint_prefix(folder)
    except CheckpointError:
        return None


def has_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint whose index and every data shard are present."""
    prefix = checkpoint_prefix(folder)
    if prefix is None:
        return False
    try:
        n_shards, _ = read_tf_index(prefix)
    except CheckpointError:
        return False
    return all(shard_path(prefix, s, n_shards).is_file() for s in range(n_shards))


def detect(path: Path) -> bool:
    return (path / HPARAMS_FILE).is_file() and checkpoint_prefix(path) is not None


def read_header(path: Path) -> HParams:
    """``hparams.json``, checked against the numbers the checkpoint holds."""
    hparams = read_hparams(path)
    _, entries = read_tf_index(find_checkpoint_prefix(path))
    check_shapes({name: (e.shape, e.dtype.name) for name, e in entries.items()}, hparams, path)
    return hparams


def _fingerprint(prefix: Path) -> str:
    return hashlib.sha256(Path(f"{prefix}.index").read_bytes()).hexdigest()


def _mend(folder: Path) -> str | None:
    if has_complete_checkpoint(folder):
        return "delete it, and picogpt2 converts the checkpoint beside it again"
    return None  # the shards are gone: the caller knows where the model came from


def is_converted(folder: Path) -> bool:
    """``model.safetensors`` is there and was converted from the folder's
    checkpoint as it is now. Raises ``DamagedWeightsError`` for a damaged one."""
    prefix = checkpoint_prefix(folder)
    if prefix is None:
        return False
    tensors = cache.lookup(folder / WEIGHTS_FILE, _fingerprint(prefix), _mend(folder))
    return tensors is not None


def read(path: Path) -> tuple[HParams, dict[str, np.ndarray]]:
    """The folder's hyperparameters and tensors, memory-mapped from the
    conversion (made first when needed, checking every tensor's CRC-32C)."""
    hparams = read_header(path)
    prefix = find_checkpoint_prefix(path)

    def produce() -> cache.Conversion:
        _, entries = read_tf_index(prefix)
        progress = Progress(f"converting {path.name}", sum(e.size for e in entries.values()))
        tensors = read_tf_checkpoint(prefix, verify=True, progress=progress.update)
        progress.finish()
        # The index's CRCs are of these very bytes (little-endian, as written).
        return tensors, {name: unmask(entries[name].crc32c) for name in tensors}

    source = f"{prefix} (checking every tensor's CRC-32C)"
    tensors = cache.converted(path / WEIGHTS_FILE, _fingerprint(prefix), produce, source,
                              _mend(path))  # fmt: skip
    return hparams, tensors


def checksum_files(path: Path) -> list[Path]:
    """The files where picogpt2 records each tensor's CRC-32C: the conversion."""
    return [path / WEIGHTS_FILE]


def vocabulary(path: Path) -> Path:
    return path


def write(out: Path, hparams: HParams, tensors: dict[str, np.ndarray], vocabulary: Path) -> None:
    """The folder ``out`` (new), as OpenAI released a model: hparams.json,
    encoder.json, vocab.bpe and a float32 checkpoint ``model.ckpt``."""
    with atomic_folder(out) as folder:
        write_hparams(folder, hparams)
        copy_vocabulary(vocabulary, folder, ("encoder.json", "vocab.bpe"))
        write_tf_checkpoint(folder / PREFIX, {k: np.asarray(v, "<f4") for k, v in tensors.items()})
