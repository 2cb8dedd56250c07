"""The way in: from a model's name to its hyperparameters, its tensors and
its vocabulary, whatever the file format.

    locate  ->  fetch if missing  ->  open with its format  ->  check

1. **Locate**: a name inside the models folder, or a path (``locations``).
2. **Fetch**: a released size (124M, 355M, 774M, 1558M) that is not there,
   or that an interrupted download left unfinished, is downloaded and
   converted first (``releases``).
3. **Open**: the format is detected and read (``formats``): the sizes, and
   every tensor under OpenAI's checkpoint names and shapes, memory-mapped
   (converted once into our layout where the file cannot be used as it
   lies).
4. **Check**: the tensors are exactly those the sizes describe
   (``params.check_tensors``), before anything runs.

``model.load_model`` goes on from here: the tensors become the tree the
forward pass reads, on the backend chosen.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from picogpt2.hparams import SIZES, HParams
from picogpt2.util.errors import FormatError, InputError, WeightsError
from picogpt2.weights import formats, releases
from picogpt2.weights.formats.safetensors import DamagedWeightsError
from picogpt2.weights.locations import locate
from picogpt2.weights.params import check_tensors
from picogpt2.weights.vocabulary import OTHER_LAYOUTS, has_vocabulary


@dataclass
class ModelFiles:
    """A model on disk, opened."""

    path: Path  # the folder or file
    format: str  # its format's name (``formats.FORMATS``)
    hparams: HParams
    tensors: dict[str, np.ndarray]  # checkpoint name -> array
    vocabulary: Path  # the folder holding the vocabulary's two files


def open_model(
    name: str | Path,
    models_dir: str | Path | None = None,
    *,
    download: bool = True,
    encoder_dir: str | Path | None = None,
    vocabulary: bool = True,
) -> ModelFiles:
    """The model ``name`` (a name in the models folder, or a path), in
    whatever format it is, its tensors checked against its sizes.
    ``download=False`` raises instead of fetching a released size;
    ``encoder_dir`` is a folder with the vocabulary, for a model that has
    none beside it (an llm.c file); ``vocabulary=False`` opens the weights
    alone (``ModelFiles.vocabulary`` is then the format's folder, unchecked)."""
    path = locate(name, models_dir)
    with _mended(name):
        if str(name) in SIZES:
            releases.ensure_release(str(name), path, download=download)
        fmt = _format(path)
        folder = (_vocabulary(path, fmt, encoder_dir, "--encoder-dir") if vocabulary
                  else fmt.vocabulary(path))  # checked before any conversion  # fmt: skip
        hparams, tensors = fmt.read(path)
    check_tensors(tensors, hparams, path)
    return ModelFiles(path, fmt.NAME, hparams, tensors, folder)


def peek_hparams(name: str | Path, models_dir: str | Path | None = None) -> HParams | None:
    """The sizes, read without loading any weights: from the model's own
    files, or the catalogue for a released size not downloaded yet; None
    when neither knows."""
    path = locate(name, models_dir)
    fmt = formats.detect(path)
    with _mended(name):
        return fmt.read_header(path) if fmt else SIZES.get(str(name))


def vocabulary_of(
    name: str | Path,
    models_dir: str | Path | None = None,
    encoder_dir: str | Path | None = None,
    *,
    option: str = "--encoder-dir",
) -> Path:
    """The folder holding the vocabulary of the model ``name``, without its
    weights: a released size not downloaded yet fetches its small files.
    ``option`` is what errors call ``encoder_dir``."""
    if encoder_dir is not None:
        return _vocabulary(Path(encoder_dir), None, encoder_dir, option)
    path = locate(name, models_dir)
    if str(name) in SIZES and not has_vocabulary(path):
        releases.fetch_vocabulary(str(name), path.parent)
    return _vocabulary(path, formats.detect(path), None, option)


@contextmanager
def _mended(name: str | Path) -> Iterator[None]:
    """A damaged file's error says how to mend it: the format says when it
    can convert it again; a released size is downloaded again; anything
    else is the user's to restore."""
    try:
        yield
    except DamagedWeightsError as e:
        if e.mend:
            raise
        released = str(name) in SIZES
        mend = f"delete it, and picogpt2 downloads GPT-2 {name} again" if released else (
            "restore it from where it came from")  # fmt: skip
        raise DamagedWeightsError(e.path, e.reason, mend) from None


def _format(path: Path) -> ModuleType:
    fmt = formats.detect(path)
    if fmt is None:
        raise WeightsError(
            f"{path}: no model there (a folder with hparams.json, the vocabulary and weights, "
            f"a transformers folder or an llm.c file); released sizes to download: "
            f"{', '.join(SIZES)}"
        )
    return fmt


def _vocabulary(
    path: Path, fmt: ModuleType | None, encoder_dir: str | Path | None, option: str
) -> Path:
    """The folder given, or the one the format keeps its vocabulary in; it
    must hold the two files."""
    if encoder_dir is not None:
        folder, where = Path(encoder_dir), f"in {encoder_dir}"
    else:
        folder = fmt.vocabulary(path) if fmt else path
        where = "beside it" if path.is_file() else "in it"
    if not has_vocabulary(folder):
        # A folder named by the user, or no model at all, is bad input.
        error = InputError if encoder_dir is not None or not path.exists() else FormatError
        raise error(
            f"{path}: no encoder.json and vocab.bpe {where} ({OTHER_LAYOUTS}); name a folder "
            f"with them with {option}"
        )
    return folder
