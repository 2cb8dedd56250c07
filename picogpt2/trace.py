"""The trace: an optional out-parameter of the forward pass that records
activations by name, for dumps and ``compare``.

Each block records into its own ``trace.layer(i)``. The default,
``NO_TRACE``, records nothing, so the math in ``gpt2.py`` needs no ``if``.
"""

from __future__ import annotations

import numpy as np


class Trace:
    """Activations of one forward pass, by name (``activations.py`` lists
    the keys a dump holds)."""

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
