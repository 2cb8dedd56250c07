"""The array backend, chosen in this one place: NumPy (default) or CuPy.

The model code never names a backend: it calls NumPy's functions, which
dispatch to CuPy when given CuPy arrays. What differs is only where arrays
live, so a backend is two functions: ``upload`` puts weights (and token ids)
where the model runs, ``to_numpy`` brings results back.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from picogpt2.util import memory
from picogpt2.util.errors import PicoGPT2Error

BACKEND_ENV = "PICOGPT2_BACKEND"
BACKENDS = ("numpy", "cupy")


class BackendError(PicoGPT2Error, RuntimeError):
    """The backend asked for cannot be used here; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str
    upload: Callable[[Any, Any], Any]  # (array, dtype) -> array on the backend
    to_numpy: Callable[[Any], np.ndarray]
    available: Callable[[], int | None] = memory.available  # free bytes where arrays live
    # Generating holds wte and mlp/c_proj transposed (weights/layout.py): measured
    # faster with NumPy's OpenBLAS; on a GPU the copies would double them in its
    # memory for a gain not measured.
    lays_out_for_decoding: bool = False


def _numpy_upload(array: Any, dtype: Any) -> np.ndarray:
    # A memory-mapped float32 weight stays mapped: no copy unless converting.
    return np.asarray(array, dtype=dtype)


NUMPY = Backend("numpy", _numpy_upload, np.asarray, lays_out_for_decoding=True)

# glibc's malloc gives blocks above a size threshold back to the kernel when
# they are freed, so every forward pass faults its temporaries (an [n_seq,
# 4*n_embd] MLP activation, the attention scores) in afresh, zero-filled page
# by page: 22,000 page faults and a fifth of the time of a 128-token prefill
# with 124M. Raising the thresholds makes freed memory wait in the heap for
# the next pass instead; a process keeps at most its peak, which it had anyway.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # parameter numbers from <malloc.h>
MMAP_THRESHOLD_MAX = 32 << 20  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30


@functools.cache
def tune_malloc() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse. It is a setting of
    the whole process, so it is never made on import or by choosing a
    backend: ``load_model`` makes it unless told not to
    (``keep_freed_memory=False``). Once per process; True if it was made
    (Linux with glibc), False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


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
    try:  # a compiled kernel and a cuBLAS call: missing CUDA libraries show up here
        probe = cupy.ones((2, 2), dtype=cupy.float32)
        float((probe @ probe).sum())
    except Exception as e:
        raise BackendError(
            f"CuPy cannot run on this GPU ({e}); it needs the CUDA libraries: "
            "pip install 'picogpt2[gpu]', or a CUDA toolkit matching your CuPy"
        ) from None

    def free() -> int:
        return int(cupy.cuda.runtime.memGetInfo()[0]) + cupy.get_default_memory_pool().free_bytes()

    return Backend("cupy", lambda a, dtype: cupy.asarray(a, dtype=dtype), cupy.asnumpy, free)


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name``, or named by $PICOGPT2_BACKEND, or NumPy."""
    name = name or os.environ.get(BACKEND_ENV) or "numpy"
    if name == "numpy":
        return NUMPY
    if name == "cupy":
        return _cupy()
    raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
