"""The forward pass's state, passed in as data and never hidden in it: the
KV cache it keeps, and the trace it reports into. Neither changes the math.

- ``KVCache``: one layer's keys and values for the positions it has seen
  (the ``past`` of openai/gpt-2's model, one layer of it), so that decoding
  one more token costs one position's work. ``gpt2`` takes one per block;
  what a generation does with them (copying one prompt's to several
  samples, dropping the samples that stopped) is in ``generation.py``.
- ``Trace``: an optional out-parameter that records activations by name,
  for dumps and ``compare`` (``activations.py`` lists the keys). Each block
  records into its own ``trace.layer(i)``; the default, ``NO_TRACE``,
  records nothing, so the math needs no ``if``.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    """``extend`` appends the new positions' keys and values and returns all
    of them to attend over.

    The buffers are allocated once, for the ``size`` positions a generation
    will reach, and never read beyond ``length``, so they start
    uninitialised: zeroing them would cost a pass over memory on every
    generation. One cache per layer, not one array for all, keeps each
    allocation small enough for the allocator to recycle.
    """

    def __init__(
        self, n_batch: int, n_head: int, size: int, head_dim: int, like: np.ndarray
    ) -> None:
        shape = (n_batch, n_head, size, head_dim)
        self.k = np.empty(shape, dtype=like.dtype, like=like)
        self.v = np.empty(shape, dtype=like.dtype, like=like)
        self.length = 0

    def extend(self, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n_batch, n_head, n_seq, head_dim] new keys and values -> all of
        them, past and new, [n_batch, n_head, n_kv, head_dim], n_kv = length + n_seq."""
        start, end = self.length, self.length + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Trace:
    """Activations of one forward pass, by name."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.layers: list[Trace] = []

    def record(self, **arrays: np.ndarray) -> None:
        self.arrays.update(arrays)

    def layer(self, i: int) -> Trace:
        while len(self.layers) <= i:
            self.layers.append(Trace())
        return self.layers[i]


class _NoTrace(Trace):
    def record(self, **arrays: np.ndarray) -> None:
        pass

    def layer(self, i: int) -> Trace:
        return self


NO_TRACE = _NoTrace()
