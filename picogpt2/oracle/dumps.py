"""Dumps: the activations of a forward pass (and of a decoding) as files,
for people testing their own GPT-2 against ours. ``dump`` writes them,
``compare`` reads two and judges, the conformance fixture ships one.

A dump is a flat set of named arrays (``activations.py`` lists the keys and
where in the math each is taken) in one of three formats: ``npz``,
``safetensors`` (a C or Rust reader needs only to parse a JSON header) or
``npy-dir`` (a folder of ``KEY.npy`` and ``metadata.json``). Every format
is written whole or not at all, and nothing read is ever unpickled.
"""

from __future__ import annotations

import io
import json
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from picogpt2.generation import Settings, generate_many
from picogpt2.gpt2 import log_softmax
from picogpt2.model import GPT2
from picogpt2.util.atomic import atomic_folder, atomic_write
from picogpt2.util.errors import InputError, WeightsError
from picogpt2.weights.formats.safetensors import NAME_DTYPES, read_entries, write_tensors
from picogpt2.weights.ggml_types import bfloat16_to_float32

FORMATS = ("npz", "safetensors", "npy-dir")
TOP = 5  # the most likely ids recorded per generated token

Dump = dict[str, np.ndarray]


def generation_record(model: GPT2, ids: list[int], n_tokens: int, settings: Settings) -> Dump:
    """Decode ``n_tokens`` ids (past <|endoftext|>: a fixed length), then one
    forward pass over the prompt and them (teacher forcing) gives, per step,
    the chosen id's log-probability, the five most likely ids and the gap
    between the two largest logits: reproducible from the ids alone."""
    n_ctx = model.hparams.n_ctx
    if len(ids) + n_tokens - 1 > n_ctx:
        raise InputError(
            f"--generate {n_tokens}: the prompt ({len(ids)} tokens) and the new ids must fit in "
            f"the context of {n_ctx}"
        )
    new = generate_many(model, ids, n_tokens, 1, replace(settings, ignore_eot=True))[0]
    logits = model.logits(ids + new[:-1])[len(ids) - 1 :].astype(np.float64)  # [N, n_vocab]
    logprobs = log_softmax(logits)
    best = np.argsort(-logits, axis=-1, kind="stable")[:, :TOP]
    chosen = np.asarray(new, dtype=np.int64)
    two = np.take_along_axis(logits, best[:, :2], axis=-1)
    return {
        "gen_ids": chosen,
        "gen_logprob": logprobs[np.arange(len(new)), chosen],
        "gen_top_ids": best.astype(np.int64),
        "gen_top_logprobs": np.take_along_axis(logprobs, best, axis=-1),
        "gen_top_logits": np.take_along_axis(logits, best, axis=-1).astype(model.dtype),
        "gen_gap": two[:, 0] - two[:, 1],
    }


def output_format(out: Path, given: str | None) -> str:
    """The format asked for, or what ``out``'s name says: .npz,
    .safetensors, or a folder."""
    if given:
        return given
    if out.suffix in (".npz", ".safetensors"):
        return out.suffix[1:]
    if not out.suffix:
        return "npy-dir"
    raise InputError(f"--out {out}: name a .npz or .safetensors file or a folder, or give --format")


def check_output(out: Path) -> None:
    """One rule for every format: a dump is written to a new path (an
    empty folder counts as new) in a folder that exists; nothing is
    replaced. Checked before the work, so that none is lost."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"--out {out} exists: name a new file or folder (or remove it first)")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")


def save_dump(out: Path, arrays: Dump, fmt: str, metadata: dict[str, str]) -> None:
    """Write atomically: a half-written dump never takes the final name."""
    check_output(out)
    if fmt == "safetensors":
        write_tensors(out, {k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata)
    elif fmt == "npz":
        with atomic_write(out) as f:
            np.savez(f, **arrays)
    else:
        with atomic_folder(out) as folder:
            for key, array in arrays.items():
                write_npy(folder / f"{key}.npy", array, out)
            (folder / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")


def write_npy(path: Path, array: np.ndarray, out: Path) -> None:
    """``path`` as ``np.save`` writes it, but through Python's file, whose
    failed writes raise: ``np.save`` to a path can leave a short file on a
    full disk without a word. A failure names the file in ``out``."""
    data = io.BytesIO()
    np.save(data, array, allow_pickle=False)
    try:
        with open(path, "wb") as f:
            f.write(data.getbuffer())
    except OSError as e:  # a full disk's own message names no file
        raise OSError(e.errno, e.strerror, str(out / path.name)) from None


class MappedDump(dict):
    """A dump read from its files: each array a view of the file, mapped
    into memory, so that only the parts asked for are read. ``release``
    lets go of every page read so far (they are read again from the file if
    asked for again): comparing two large dumps a layer at a time then
    holds one layer of each, never both files."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.maps: list[mmap.mmap] = []
        self.limit = limit

    def check(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """An array's header, before anything of it is read: numbers (not
        Python objects), and no more values than ``limit``."""
        if dtype.hasobject:
            raise ValueError("it holds Python objects, which picogpt2 never unpickles")
        count = math.prod(shape)
        if self.limit is not None and count > self.limit:
            raise InputError(
                f"{key}: its header declares {list(shape)} ({count:,} values), more than the "
                f"reference holds ({self.limit:,} at the most for one key): not a dump of this "
                "reference's model and input"
            )

    def map(self, path: Path) -> mmap.mmap | None:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return None
            self.maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return self.maps[-1]

    @staticmethod
    def view(mapped: mmap.mmap, offset: int, dtype: np.dtype, shape, fortran: bool = False):
        count = math.prod(shape)
        if count == 0:
            return np.zeros(shape, dtype)
        array = np.frombuffer(mapped, dtype, count, offset)
        return array.reshape(shape, order="F" if fortran else "C")

    def release(self) -> None:
        for mapped in self.maps:
            if hasattr(mapped, "madvise"):  # not on every platform: then the kernel decides
                mapped.madvise(mmap.MADV_DONTNEED)


def value_limit(reference: Mapping[str, np.ndarray]) -> int:
    """The most values one array of a candidate may hold, checked before it
    is read: all that the reference holds, eight times over (llm.c's qkv
    holds three of our keys, its attention every head's scores), and a
    million more for the smallest dumps."""
    return 8 * sum(math.prod(a.shape) for a in reference.values()) + 1_000_000


def load_dump(path: Path, limit: int | None = None) -> MappedDump:
    """The arrays of a dump in any of the formats (or one ``KEY.npy``), as
    views of its files (``MappedDump``). Nothing is unpickled; a file that
    cannot be read as a dump is bad input, named in one line. ``limit``
    bounds the values one array may hold: its header is checked against it
    before anything is mapped, read or decompressed."""
    dump = MappedDump(limit)
    try:
        regular(path)
        if path.is_dir():
            _npy_folder(dump, path)
        elif path.suffix == ".safetensors":
            _safetensors(dump, path)
        elif path.suffix == ".npy":
            dump[path.stem] = _npy(dump, path, 0, path.stem)
        else:
            _npz_members(dump, path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or folder") from None
    except InputError:
        raise
    except (OSError, ValueError, EOFError, WeightsError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a dump picogpt2 can read ({e})") from None
    return dump


def _npy_folder(dump: MappedDump, path: Path) -> None:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise InputError(f"{path}: a folder with no .npy files")
    for file in files:
        regular(file)
        dump[file.stem] = _npy(dump, file, 0, file.stem)


def regular(path: Path) -> None:
    """``path`` is a regular file or a folder, not a pipe or a device that
    reading would wait on forever."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise InputError(f"{path}: not a regular file (a pipe, a device): name a file")


def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the ``.npy`` that ``f`` is at."""
    version = np.lib.format.read_magic(f)
    header = np.lib.format.read_array_header_2_0 if version >= (2, 0) else (
        np.lib.format.read_array_header_1_0)  # fmt: skip
    return header(f)


def _npy(dump: MappedDump, path: Path, start: int, key: str) -> np.ndarray:
    """The ``.npy`` that starts at byte ``start`` of ``path``."""
    with open(path, "rb") as f:
        f.seek(start)
        shape, fortran, dtype = _npy_header(f)
        offset = f.tell()
    dump.check(key, shape, dtype)
    mapped = dump.map(path)
    needed = offset + math.prod(shape) * dtype.itemsize
    if mapped is None or needed > len(mapped):
        raise ValueError(f"{path.name} is shorter than its header says (truncated)")
    return dump.view(mapped, offset, dtype, shape, fortran)


def _npz_members(dump: MappedDump, path: Path) -> None:
    """An ``.npz``'s arrays: those stored uncompressed (as ``np.savez``
    stores them) viewed where they lie in the archive, the others read."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:  # its header first, then its data
                    dump.check(key, *_npy_header(member)[::2])
                with archive.open(info) as member:
                    dump[key] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            f.seek(info.header_offset + 26)  # the local header's name and extra lengths
            name_length, extra_length = struct.unpack("<HH", f.read(4))
            start = info.header_offset + 30 + name_length + extra_length
            dump[key] = _npy(dump, path, start, key)


def _safetensors(dump: MappedDump, path: Path) -> None:
    header, _, data_start = read_entries(path)
    for name, info in header.items():
        dump.check(name, tuple(info["shape"]), NAME_DTYPES[info["dtype"]])
    mapped = dump.map(path)
    for name, info in header.items():
        begin = data_start + info["data_offsets"][0]
        if info["dtype"] == "BF16":
            bits = dump.view(mapped, begin, NAME_DTYPES["BF16"], info["shape"])
            dump[name] = bfloat16_to_float32(bits)
        else:
            dump[name] = dump.view(mapped, begin, NAME_DTYPES[info["dtype"]], info["shape"])
