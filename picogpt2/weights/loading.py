"""The way in: from a model's name to its hyperparameters, its tensors and
its vocabulary, whatever the file format, every file read once.

    locate  ->  open with its format  ->  fetch if missing  ->  check

1. **Locate**: a name inside the models folder, or a path (``locations``:
   a ``ModelRef``, resolved once).
2. **Open**: the format is detected and the model opened (``formats``):
   the sizes, checked against the tensors the files hold, and every tensor
   under OpenAI's checkpoint names and shapes, memory-mapped (converted
   once into our layout where the file cannot be used as it lies).
3. **Fetch**: a released size (124M, 355M, 774M, 1558M) that is not there,
   or that an interrupted download left unfinished, is downloaded and
   converted first; whether to is the releases' one question, asked of
   what was opened (``releases``).
4. **Check**: the tensors are exactly those the sizes describe
   (``params.check_tensors``), before anything runs.

``model.load_model`` goes on from here: the tensors become the tree the
forward pass reads, on the backend chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from picogpt2.hparams import SIZES, HParams
from picogpt2.util.errors import FormatError, InputError, WeightsError
from picogpt2.weights import formats, releases
from picogpt2.weights.formats.opened import OpenedModel
from picogpt2.weights.formats.safetensors import DamagedWeightsError
from picogpt2.weights.locations import ModelRef, resolve
from picogpt2.weights.params import check_tensors
from picogpt2.weights.vocabulary import OTHER_LAYOUTS, has_vocabulary


def open_model(
    model: str | Path | ModelRef,
    models_dir: str | Path | None = None,
    *,
    download: bool = True,
    encoder_dir: str | Path | None = None,
    vocabulary: bool = True,
) -> OpenedModel:
    """The model ``model`` (a name in the models folder, a path, or a
    ``ModelRef``), in whatever format it is, its tensors loaded and checked
    against its sizes. ``download=False`` raises instead of fetching a
    released size; ``encoder_dir`` is a folder with the vocabulary, for a
    model that has none beside it (an llm.c file); ``vocabulary=False``
    opens the weights alone (``vocabulary`` is then the format's folder,
    unchecked)."""
    ref = resolve(model, models_dir)
    with _mended(ref):
        if ref.released:  # fetched or finished first, when it must be
            opened = releases.ensure_release(ref.name, ref.path, download=download)
        else:
            opened = formats.detect(ref.path)
        if opened is None:
            raise WeightsError(
                f"{ref.path}: no model there (a folder with hparams.json, the vocabulary and "
                f"weights, a transformers folder or an llm.c file); released sizes to download: "
                f"{', '.join(SIZES)}"
            )
        # The vocabulary is checked before any conversion.
        folder = opened.vocabulary
        if vocabulary:
            folder = _vocabulary(ref.path, folder, encoder_dir, "--encoder-dir")
        tensors = opened.weights()
    check_tensors(tensors, opened.hparams, ref.path)
    return dataclasses.replace(opened, vocabulary=folder)


def peek_hparams(
    model: str | Path | ModelRef, models_dir: str | Path | None = None
) -> HParams | None:
    """The sizes, read without loading any weights: from the model's own
    files, or the catalogue for a released size not downloaded yet; None
    when neither knows."""
    ref = resolve(model, models_dir)
    with _mended(ref):
        opened = formats.detect(ref.path)
    return opened.hparams if opened else SIZES.get(ref.name)


def vocabulary_of(
    model: str | Path | ModelRef,
    models_dir: str | Path | None = None,
    encoder_dir: str | Path | None = None,
    *,
    option: str = "--encoder-dir",
) -> Path:
    """The folder holding the vocabulary of the model ``model``, without its
    weights: a released size not downloaded yet fetches its small files.
    ``option`` is what errors call ``encoder_dir``."""
    if encoder_dir is not None:
        return _vocabulary(Path(encoder_dir), Path(encoder_dir), encoder_dir, option)
    ref = resolve(model, models_dir)
    if ref.released and not has_vocabulary(ref.path):
        releases.fetch_vocabulary(ref.name, ref.path)
    with _mended(ref):
        opened = formats.detect(ref.path)
    return _vocabulary(ref.path, opened.vocabulary if opened else ref.path, None, option)


@contextmanager
def _mended(ref: ModelRef) -> Iterator[None]:
    """A damaged file's error says how to mend it: the format says when it
    can convert it again; a released size is downloaded again; anything
    else is the user's to restore."""
    try:
        yield
    except DamagedWeightsError as e:
        if e.mend:
            raise
        mend = f"delete it, and picogpt2 downloads GPT-2 {ref.name} again" if ref.released else (
            "restore it from where it came from")  # fmt: skip
        raise DamagedWeightsError(e.path, e.reason, mend) from None


def _vocabulary(path: Path, folder: Path, encoder_dir: str | Path | None, option: str) -> Path:
    """The folder given (``encoder_dir``), or ``folder``, the one the model
    at ``path`` keeps its vocabulary in; it must hold the two files."""
    if encoder_dir is not None:
        folder, where = Path(encoder_dir), f"in {encoder_dir}"
    else:
        where = "beside it" if path.is_file() else "in it"
    if not has_vocabulary(folder):
        # A folder named by the user, or no model at all, is bad input.
        error = InputError if encoder_dir is not None or not path.exists() else FormatError
        raise error(
            f"{path}: no encoder.json and vocab.bpe {where} ({OTHER_LAYOUTS}); name a folder "
            f"with them with {option}"
        )
    return folder
