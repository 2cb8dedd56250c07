"""picogpt2: GPT-2 inference in plain, vectorised NumPy."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and editors; at run time see __getattr__
    from picogpt2.model import GPT2, load_model

__all__ = ["GPT2", "load_model"]


def __getattr__(name: str):
    # Imported on first use, not with the package: `python -m picogpt2.download`
    # must not find its own module already imported (runpy warns about that).
    if name in __all__:
        from picogpt2 import model

        return getattr(model, name)
    raise AttributeError(f"module 'picogpt2' has no attribute {name!r}")
