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
from picogpt2.weights.formats.opened import OpenedModel
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


def detect(path: Path) -> OpenedModel | None:
    """A folder with ``hparams.json`` and a checkpoint, opened: the sizes
    checked against the index, the conversion memory-mapped when it is
    there and of this checkpoint (made at ``weights()`` otherwise, checking
    every tensor's CRC-32C)."""
    prefix = checkpoint_prefix(path) if (path / HPARAMS_FILE).is_file() else None
    if prefix is None:
        return None
    hparams = read_hparams(path)
    data = Path(f"{prefix}.index").read_bytes()
    index = read_tf_index(prefix, data)
    n_shards, entries = index
    check_shapes({name: (e.shape, e.dtype.name) for name, e in entries.items()}, hparams, path)
    identity = hashlib.sha256(data).hexdigest()  # a checkpoint written over it differs
    complete = all(shard_path(prefix, s, n_shards).is_file() for s in range(n_shards))
    # Without its shards, the caller knows where the model came from.
    mend = "delete it, and picogpt2 converts the checkpoint beside it again" if complete else None

    def produce() -> cache.Conversion:
        progress = Progress(f"converting {path.name}", sum(e.size for e in entries.values()))
        tensors = read_tf_checkpoint(prefix, verify=True, progress=progress.update, index=index)
        progress.finish()
        # The index's CRCs are of these very bytes (little-endian, as written).
        return tensors, {name: unmask(entries[name].crc32c) for name in tensors}

    def convert() -> dict[str, np.ndarray]:
        source = f"{prefix} (checking every tensor's CRC-32C)"
        return cache.converted(path / WEIGHTS_FILE, identity, produce, source, mend)

    tensors = cache.lookup(path / WEIGHTS_FILE, identity, mend)
    return OpenedModel(path, NAME, hparams, path, identity, tensors, convert)


def checksum_files(path: Path) -> list[Path]:
    """The files where picogpt2 records each tensor's CRC-32C: the conversion."""
    return [path / WEIGHTS_FILE]


def write(out: Path, hparams: HParams, tensors: dict[str, np.ndarray], vocabulary: Path) -> None:
    """The folder ``out`` (new), as OpenAI released a model: hparams.json,
    encoder.json, vocab.bpe and a float32 checkpoint ``model.ckpt``."""
    with atomic_folder(out) as folder:
        write_hparams(folder, hparams)
        copy_vocabulary(vocabulary, folder, ("encoder.json", "vocab.bpe"))
        write_tf_checkpoint(folder / PREFIX, {k: np.asarray(v, "<f4") for k, v in tensors.items()})
