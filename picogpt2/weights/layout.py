"""How generating holds the weights in memory: every matrix a product
reads contiguous along its longer side.

Decoding multiplies one row (or one per sample) by every weight matrix, so
a token costs what streaming the matrices from memory costs, and OpenBLAS
streams a matrix faster along its longer side (measured, matrix by matrix,
by ``benchmarks/bench_layout.py``). As the checkpoint stores them, two of
GPT-2's matrices lie the other way: the head reads ``wte`` [n_vocab,
n_embd] transposed, and each block's ``mlp/c_proj`` is [4*n_embd, n_embd],
[in, out], its longer side the rows. Held column-major (Fortran order)
instead, a step's products take about a sixth less time here, one row or
sixteen; ``c_attn``, ``c_fc`` and ``attn/c_proj`` are fastest as stored.

Only strides change: shapes and values are the checkpoint's, and
``gpt2.py`` reads them as before (``x @ w``, ``wte[ids]``); products over
another layout round differently in the last bits, as another BLAS would.

``GPT2.decoding_params`` makes the copies once, at a process's first
generation (a fifth of a second for 124M here, which a few dozen tokens
repay; docs/benchmarks.md); ``logits``, ``trace`` and scoring read the
weights as loaded. A copy made from a memory-mapped file hands the pages it
was read from back to the kernel, so memory holds each weight once, and
one matrix twice only while it is copied (the file stays mapped: reading
the original reads the file again).
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from picogpt2.gpt2 import Params

ROWS_PER_COPY = 256  # rows copied at a time: they stay in the cache while their columns are written
LAID_OUT = ("attn", "mlp")  # the parts of a block whose linear weights products read


def is_longer_side_contiguous(w: np.ndarray) -> bool:
    """Whether a matrix [rows, cols] is contiguous along its longer side (a
    square one always is). The rule is the same for ``w`` and ``w.T``, so it
    holds for ``wte``, read as ``wte.T``."""
    rows, cols = w.shape
    return rows == cols or (w.flags.f_contiguous if rows > cols else w.flags.c_contiguous)


def longer_side_contiguous(w: np.ndarray) -> np.ndarray:
    """A matrix [rows, cols] contiguous along its longer side: ``w`` itself
    when it is, else a copy that is."""
    rows, cols = w.shape
    if is_longer_side_contiguous(w):
        return w
    if rows < cols:
        return longer_side_contiguous(w.T).T
    out = np.empty((cols, rows), dtype=w.dtype)  # w column-major, held as its transpose

    def copy(start: int) -> None:
        out[:, start : start + ROWS_PER_COPY] = w[start : start + ROWS_PER_COPY].T

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # NumPy copies without the GIL
        list(pool.map(copy, range(0, rows, ROWS_PER_COPY)))
    release_mapped_pages(w)
    return out.T


def stream_layout(params: Params) -> Params:
    """The weight tree with every matrix a product reads contiguous along
    its longer side: ``wte`` and each block's linear weights; biases,
    norms and ``wpe`` (read by rows) as they are."""
    out = dict(params)
    out["wte"] = longer_side_contiguous(params["wte"])
    out["blocks"] = [
        {part: {name: {**linear, "w": longer_side_contiguous(linear["w"])}
                for name, linear in layers.items()} if part in LAID_OUT else layers
         for part, layers in block.items()}
        for block in params["blocks"]
    ]  # fmt: skip
    return out


def layout_bytes(params: Params) -> int:
    """The bytes ``stream_layout`` allocates for its copies of ``params``:
    memory a process's first generation takes beyond the mapped weights."""
    matrices = [params["wte"]] + [
        linear["w"] for block in params["blocks"] for part in LAID_OUT
        for linear in block[part].values()
    ]  # fmt: skip
    return sum(w.nbytes for w in matrices if not is_longer_side_contiguous(w))


def release_mapped_pages(array: np.ndarray) -> None:
    """Tell the kernel the pages under ``array`` are not needed, when they
    are a read-only mapping of a file (``np.memmap``, mode "r"): they leave
    this process's memory and are read from the file again if touched.
    Anything else (an array in memory, a platform without ``madvise``) is
    left alone."""
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        return  # its bytes are not one range
    base = array  # the np.memmap it views, which keeps its mmap.mmap as ``_mmap``
    while base is not None and getattr(base, "_mmap", None) is None:
        base = base.base
    if base is None or base.mode != "r" or not hasattr(base._mmap, "madvise"):
        return
    mapped = base._mmap
    start_of_map = np.frombuffer(mapped, np.uint8)
    begin = array.ctypes.data - start_of_map.ctypes.data
    del start_of_map  # a view of the map: it must not outlive this call
    page = mmap.PAGESIZE
    first = -(-begin // page) * page  # whole pages only: the edges may hold neighbours
    last = (begin + array.nbytes) // page * page
    if last > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)
