"""Converting once: how every format turns files picogpt2 cannot use where
they lie into our layout, written once beside them.

OpenAI's checkpoint (whose CRCs must be verified), transformers' half-
precision files (upcast) and llm.c's files (transposed, unpadded) are
converted into a safetensors file of our layout, the cache, and memory-
mapped from it at every later load. One rule for all of them:

- The cache records a fingerprint of its source; when the source changes
  (a fine-tune written over it) the cache is stale and is written again.
- It is written whole or not at all (``atomic_write``), by one process at a
  time (the folder's lock): a second one waits, then finds it done.
- It records each tensor's CRC-32C, which ``download --verify`` checks.
- A cache that does not match its own header is damaged: reported with
  the way to mend it, never silently replaced; a file of that name that
  picogpt2 did not write is never replaced either.
- In a folder that cannot be written, the conversion is kept in memory and
  done again at every load (said each time); inside ``in_memory()``
  (checking a model without writing anything) it always is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np

from picogpt2.util.atomic import folder_lock, is_read_only
from picogpt2.util.errors import WeightsError
from picogpt2.util.status import status
from picogpt2.weights.formats.safetensors import (
    DamagedWeightsError,
    crc_metadata,
    open_safetensors,
    read_tensors,
    tensor_crcs,
    write_tensors,
)

FINGERPRINT_KEY = "source_fingerprint"
# picogpt2 0.1 recorded the SHA-256 of a checkpoint's index under this name.
LEGACY_FINGERPRINT_KEY = "source_index_sha256"

# Tensors, and their CRC-32C when the conversion already knows them (a
# checkpoint's index records them); None: computed from the tensors.
Conversion = tuple[dict[str, np.ndarray], dict[str, int] | None]
_write_nothing: ContextVar[bool] = ContextVar("picogpt2_write_nothing", default=False)


@contextmanager
def in_memory() -> Iterator[None]:
    """Conversions inside the block are made in memory, never written."""
    token = _write_nothing.set(True)
    try:
        yield
    finally:
        _write_nothing.reset(token)


def lookup(cache: Path, fingerprint: str, mend: str | None) -> dict[str, np.ndarray] | None:
    """The cache's tensors, memory-mapped, when it exists and was made from
    the source ``fingerprint`` identifies; None when absent or stale.
    ``mend`` says how to mend a damaged one."""
    if not cache.is_file():
        return None
    try:
        opened = open_safetensors(cache)
    except DamagedWeightsError as e:
        raise DamagedWeightsError(e.path, e.reason, mend) from None
    metadata = opened.metadata
    recorded = metadata.get(FINGERPRINT_KEY, metadata.get(LEGACY_FINGERPRINT_KEY))
    if recorded is None:
        raise WeightsError(
            f"{cache} is not a conversion picogpt2 made, so it is not replaced: move it "
            "away, and picogpt2 converts the model into it"
        )
    return opened.tensors() if recorded == fingerprint else None


def converted(
    cache: Path,
    fingerprint: str,
    produce: Callable[[], Conversion],
    source: str,
    mend: str | None,
) -> dict[str, np.ndarray]:
    """The tensors ``produce`` makes from ``source``, memory-mapped from
    ``cache``: converted once, and again when the fingerprint changes (the
    rules above). ``mend`` says how to mend a damaged cache."""
    tensors = lookup(cache, fingerprint, mend)
    if tensors is not None:
        return tensors
    if _write_nothing.get():
        return produce()[0]
    try:
        with folder_lock(cache.parent, f"waiting for another process converting {source} ..."):
            tensors = lookup(cache, fingerprint, mend)  # it may have finished meanwhile
            if tensors is None:
                _write(cache, fingerprint, produce, source)
                tensors = read_tensors(cache)[0]
    except OSError as e:
        if not is_read_only(e):
            raise
        status(f"{cache.parent} cannot be written: converting {source} in memory, at every load")
        tensors = produce()[0]
    return tensors


def _write(cache: Path, fingerprint: str, produce: Callable[[], Conversion], source: str) -> None:
    status(f"converting {source} into {cache} (once; again if it changes) ...")
    tensors, crcs = produce()
    metadata = {"format": "picogpt2", "source": Path(source).name, FINGERPRINT_KEY: fingerprint}
    write_tensors(cache, tensors, metadata | crc_metadata(crcs or tensor_crcs(tensors)))
