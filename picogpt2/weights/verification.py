"""Checking a model's files: the way to tell damaged weights from a bug.

What picogpt2 wrote (a conversion, or its own safetensors layout) records
each tensor's CRC-32C, and those are checked. Everything else is checked as
far as the files allow: every header and tensor readable, every name and
shape what the sizes say, every value finite. Nothing is written,
converted or removed, and a file picogpt2 did not write is never called
for deletion: it may be the only copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from picogpt2.util.errors import InputError, WeightsError
from picogpt2.util.status import Progress
from picogpt2.weights import formats
from picogpt2.weights.formats import cache
from picogpt2.weights.formats.safetensors import CRC_KEY, read_entries, verify
from picogpt2.weights.locations import locate
from picogpt2.weights.params import check_tensors


def verify_model(name: str | Path, models_dir: str | Path | None = None) -> list[str]:
    """Check the model ``name`` (a name in the models folder, or a path, in
    any format); return what was checked, a line each. The first fault
    raises, naming the file and the tensor."""
    path = locate(name, models_dir)
    with cache.in_memory():  # a conversion that is not there is made in memory
        opened = formats.detect(path)
        if opened is None:
            raise InputError(f"{path}: no model there to verify")
        fmt = formats.FORMATS[opened.format]
        lines = [_checksums(file) for file in fmt.checksum_files(path) if file.is_file()]
        tensors, hparams = opened.weights(), opened.hparams
    check_tensors(tensors, hparams, path)
    _finite(tensors, path)
    what = f"{path} ({opened.format}): all {len(tensors)} tensors readable, named and shaped as "
    what += "its sizes say, every value finite"
    if not any(line.endswith("CRC-32C") for line in lines):
        what += "; no checksum is recorded with these weights, so their bytes cannot be "
        what += "checked against those once written"
    return [*lines, what]


def _checksums(file: Path) -> str:
    """Check the CRC-32C a file records; say so when it records none."""
    if CRC_KEY not in read_entries(file)[1]:
        return f"{file}: records no checksums (written by an older picogpt2, or not by picogpt2)"
    progress = Progress(f"checking the CRC-32C of {file}", file.stat().st_size)
    n = verify(file, progress.update)
    progress.finish()
    return f"{file}: all {n} tensors match their CRC-32C"


def _finite(tensors: dict[str, np.ndarray], path: Path) -> None:
    progress = Progress(f"checking the values of {path}", sum(a.nbytes for a in tensors.values()))
    for name, array in tensors.items():
        if not np.isfinite(array).all():
            raise WeightsError(
                f"{path}: tensor {name} holds values that are not finite (NaN or inf)"
            )
        progress.update(array.nbytes)
    progress.finish()
