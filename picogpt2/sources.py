"""A model on disk, in any format picogpt2 reads, opened as one thing: its
hyperparameters, its tensors under the checkpoint's names and shapes
(``model/h0/attn/c_attn/w`` [1, n_embd, 3*n_embd], ...), and the folder of
its vocabulary.

- OpenAI's layout: a folder with ``hparams.json``, the vocabulary and a
  TensorFlow checkpoint or ``model.safetensors`` (``weights.py``); a
  released size that is not there is downloaded.
- A transformers GPT-2 folder, recognised by its ``config.json`` (``hf.py``).
- An llm.c model file, recognised by its magic number (``llmc.py``); its
  vocabulary is a folder beside it, or the one given.

Whatever the source, the tensors are checked against the hyperparameters
before anything runs: no block missing or left over, every shape right.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picogpt2 import hf, llmc, locations
from picogpt2.download import download_model, read_marker
from picogpt2.encoder import has_vocabulary, vocabulary_files
from picogpt2.errors import FormatError
from picogpt2.hparams import HPARAMS_FILE, SIZES, HParams, read_hparams
from picogpt2.weights import (
    DamagedWeightsError,
    WeightsError,
    has_complete_checkpoint,
    is_converted,
    load_weights,
)


@dataclass
class Source:
    path: Path  # the folder or file
    kind: str  # "openai", "transformers" or "llm.c"
    hparams: HParams
    tensors: dict[str, np.ndarray]
    vocabulary: Path  # the folder holding the vocabulary's two files


def open_source(
    model_size: str,
    models_dir: str | Path | None = None,
    *,
    download: bool = True,
    show_progress: bool = True,
    encoder_dir: str | Path | None = None,
) -> Source:
    """The model ``models_dir/model_size`` (a name, or a path), in whatever
    format it is, its tensors checked against its hyperparameters."""
    path = locations.models_dir(models_dir) / model_size
    if llmc.is_llmc_file(path):
        hparams, tensors = llmc.load(path, show_progress=show_progress)
        source = Source(path, "llm.c", hparams, tensors, vocabulary_folder(path, encoder_dir))
    elif hf.is_hf_folder(path):
        hparams, tensors = hf.read_config(path), hf.load_tensors(path, show_progress=show_progress)
        source = Source(path, "transformers", hparams, tensors, Path(encoder_dir or path))
    else:
        prepare_folder(model_size, path, download=download, show_progress=show_progress)
        hparams = read_hparams(path)
        tensors = load_weights(path, show_progress=show_progress)
        source = Source(path, "openai", hparams, tensors, Path(encoder_dir or path))
    check_tensors(source.tensors, source.hparams, path)
    return source


def vocabulary_folder(model_file: Path, encoder_dir: str | Path | None) -> Path:
    """Where an llm.c file's vocabulary is: the folder given, or beside it."""
    if encoder_dir is not None:
        return Path(encoder_dir)
    if has_vocabulary(model_file.parent):
        return model_file.parent
    json_path, bpe_path = vocabulary_files(model_file.parent)
    raise FormatError(
        f"{model_file}: an llm.c file holds no vocabulary and there is no {json_path.name} and "
        f"{bpe_path.name} beside it; name a folder with them (--encoder-dir)"
    )


def peek_hparams(model_size: str, models_dir: str | Path | None) -> HParams | None:
    """The hyperparameters, read without loading any weights: from the
    model's own files, or the catalogue for a released size not downloaded;
    None when neither knows."""
    path = locations.models_dir(models_dir) / model_size
    if llmc.is_llmc_file(path):
        return llmc.read_header(path)[0]
    if hf.is_hf_folder(path):
        return hf.read_config(path)
    if (path / HPARAMS_FILE).is_file():
        return read_hparams(path)
    return SIZES.get(model_size)


def tensor_shapes(h: HParams) -> dict[str, tuple[int, ...]]:
    """Every tensor of a GPT-2 checkpoint with these hyperparameters, by name.
    Linear weights are [1, in, out], as OpenAI stored them."""
    e = h.n_embd
    shapes = {"model/wte": (h.n_vocab, e), "model/wpe": (h.n_ctx, e)}
    shapes |= {"model/ln_f/g": (e,), "model/ln_f/b": (e,)}
    for i in range(h.n_layer):
        p = f"model/h{i}"
        for norm in ("ln_1", "ln_2"):
            shapes |= {f"{p}/{norm}/g": (e,), f"{p}/{norm}/b": (e,)}
        for name, n_in, n_out in [
            ("attn/c_attn", e, 3 * e),
            ("attn/c_proj", e, e),
            ("mlp/c_fc", e, 4 * e),
            ("mlp/c_proj", 4 * e, e),
        ]:
            shapes |= {f"{p}/{name}/w": (1, n_in, n_out), f"{p}/{name}/b": (n_out,)}
    return shapes


def check_tensors(tensors: dict[str, np.ndarray], hparams: HParams, where: Path) -> None:
    """The weights are exactly the tensors ``hparams.json`` describes: no
    block missing or left over, every shape as its sizes say, floats."""
    expected = tensor_shapes(hparams)
    problem = None
    extra = sorted(tensors.keys() - expected.keys())
    missing = [name for name in expected if name not in tensors]
    if missing:
        problem = f"{missing[0]} is missing"
    elif extra:
        problem = f"{extra[0]} is left over"
    else:
        for name, shape in expected.items():
            actual = tensors[name]
            if actual.shape != shape:
                problem = f"{name} is {list(actual.shape)}, where they need {list(shape)}"
                break
            if actual.dtype.kind != "f":
                problem = f"{name} holds {actual.dtype}, not floats"
                break
    if problem:
        sizes = ", ".join(f"{k} {v}" for k, v in hparams.as_dict().items())
        raise WeightsError(
            f"the hyperparameters of {where} ({sizes}) do not match its weights: {problem}"
        )


def prepare_folder(
    model_size: str, model_dir: Path, *, download: bool, show_progress: bool
) -> None:
    """Make ``model_dir`` loadable: download a released size that is not
    there, finish what the downloader started (a download or a conversion
    that was interrupted, removing the shard as it would have), and report
    a damaged conversion with the way to mend it."""
    try:
        if is_converted(model_dir):
            return
    except DamagedWeightsError as e:
        raise WeightsError(f"{e}; {how_to_mend(model_size, model_dir)}") from None
    marker = read_marker(model_dir) if model_size in SIZES else None
    if marker is None and has_complete_checkpoint(model_dir):
        return  # the user's own checkpoint: load_weights converts it and keeps it
    if model_size not in SIZES:
        raise WeightsError(
            f"{model_dir}: no model there (a folder needs hparams.json, encoder.json, "
            f"vocab.bpe and weights); released sizes to download: {', '.join(SIZES)}"
        )
    keep_original = bool(marker and marker.get("keep_original"))
    if not download and not has_complete_checkpoint(model_dir):
        raise WeightsError(f"{model_dir}: GPT-2 {model_size} is not downloaded (download=False)")
    download_model(
        model_size, model_dir.parent, keep_original=keep_original, show_progress=show_progress
    )


def how_to_mend(model_size: str, model_dir: Path) -> str:
    if has_complete_checkpoint(model_dir):
        return "delete it, and picogpt2 converts the checkpoint beside it again"
    if model_size in SIZES:
        return f"delete it, and picogpt2 downloads GPT-2 {model_size} again"
    return "restore it from where it came from"
