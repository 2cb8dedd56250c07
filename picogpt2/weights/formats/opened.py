"""What every format's ``detect`` returns: a model opened once, and what
identifies its weights."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picogpt2.hparams import HParams

HEAD = 1 << 16  # bytes read at once on opening a file: most headers, and what a fingerprint covers


@dataclass
class OpenedModel:
    """A model as its format found it, every file read once: its sizes
    (checked against the tensors its files hold), the folder its
    vocabulary is in (not read yet), what identifies its weights
    (``fingerprint``: a conversion records it), and its tensors under the
    checkpoint's names, memory-mapped: ``tensors`` when they can be used as
    they lie (or their conversion is done), else None until ``weights()``
    converts them (once, through ``converted``)."""

    path: Path
    format: str  # the format's NAME
    hparams: HParams
    vocabulary: Path
    fingerprint: str
    tensors: dict[str, np.ndarray] | None
    convert: Callable[[], dict[str, np.ndarray]] | None = None

    def weights(self) -> dict[str, np.ndarray]:
        """The tensors, converted first when they must be."""
        if self.tensors is None:
            self.tensors = self.convert()
        return self.tensors


def fingerprint(files: Iterable[tuple[Path, os.stat_result, bytes]]) -> str:
    """What identifies large source files without reading them whole, from
    what opening them read: their names, sizes, modification times and
    first ``HEAD`` bytes (headers included)."""
    digest = hashlib.sha256()
    for path, stat, head in files:
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:".encode())
        digest.update(head[:HEAD])
    return digest.hexdigest()
