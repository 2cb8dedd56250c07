"""picogpt2: GPT-2 inference in plain, vectorised NumPy.

Read ``gpt2.py`` first. ``load_model`` and ``GPT2`` are imported on first
use (PEP 562), so ``import picogpt2.gpt2`` loads the forward pass alone.
"""

from __future__ import annotations

import importlib
from typing import Any

# Name -> the module that defines it.
_EXPORTS = {
    "GPT2": "picogpt2.model",
    "load_model": "picogpt2.model",
    "PicoGPT2Error": "picogpt2.util.errors",
    "InputError": "picogpt2.util.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'picogpt2' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
