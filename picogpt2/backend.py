"""The array backend, chosen in this one place: NumPy (default) or CuPy.

The model code never names a backend: it calls NumPy's functions, which
dispatch to CuPy when given CuPy arrays. What differs is only where arrays
live, so a backend is two functions: ``upload`` puts weights (and token ids)
where the model runs, ``to_numpy`` brings results back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKEND_ENV = "PICOGPT2_BACKEND"
BACKENDS = ("numpy", "cupy")


class BackendError(RuntimeError):
    """The backend asked for cannot be used here; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str
    upload: Callable[[Any, Any], Any]  # (array, dtype) -> array on the backend
    to_numpy: Callable[[Any], np.ndarray]


def _numpy_upload(array: Any, dtype: Any) -> np.ndarray:
    # A memory-mapped float32 weight stays mapped: no copy unless converting.
    return np.asarray(array, dtype=dtype)


NUMPY = Backend("numpy", _numpy_upload, np.asarray)


def _cupy() -> Backend:
    try:
        import cupy
    except ImportError:
        raise BackendError(
            "the cupy backend needs CuPy: pip install 'picogpt2[gpu]' (CUDA 12), "
            "or the cupy-cudaXXx package matching your CUDA"
        ) from None
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy raises its own CUDARuntimeError subclasses
        raise BackendError(f"CuPy is installed but no CUDA GPU is usable: {e}") from None
    if n_devices == 0:
        raise BackendError("CuPy is installed but no CUDA GPU is visible")
    return Backend("cupy", lambda a, dtype: cupy.asarray(a, dtype=dtype), cupy.asnumpy)


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name``, or named by $PICOGPT2_BACKEND, or NumPy."""
    name = name or os.environ.get(BACKEND_ENV) or "numpy"
    if name == "numpy":
        return NUMPY
    if name == "cupy":
        return _cupy()
    raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
