"""Every file format picogpt2 reads and writes, one module each, all with
the same small interface:

- ``NAME``: what ``export --to`` calls it; ``DESCRIPTION``: one line.
- ``detect(path) -> OpenedModel | None``: the model at ``path`` (a folder
  or a file) if it is in this format, opened: every file read once, the
  sizes checked against the tensors the files hold, the tensors
  memory-mapped where the file allows; a file that cannot be used where it
  lies is converted once into our layout beside it, when ``weights()`` is
  first asked (``cache``, one rule for every format). None when ``path``
  is not in this format; an error when it is, but broken.
- ``checksum_files(path) -> [Path]``: the files where picogpt2 records each
  tensor's CRC-32C (what it wrote: a conversion, or its own layout).
- ``write(out, hparams, tensors, vocabulary)``: a new file or folder
  ``out``, whole or not at all (GGUF's takes ``outtype`` too: f32 or f16).

The formats, in the order ``detect`` tries them: ``llmc`` (llm.c's ``.bin``,
by its magic number), ``gguf`` (llama.cpp's GGUF, by its magic), ``hf`` (a
transformers folder, by ``config.json``), ``openai`` (OpenAI's release:
``hparams.json`` and a TensorFlow checkpoint) and ``safetensors``
(``hparams.json`` and ``model.safetensors`` in the checkpoint's names: what
OpenAI's checkpoints are converted into).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from picogpt2.weights.formats import gguf, llmc, openai, safetensors, transformers
from picogpt2.weights.formats.opened import OpenedModel

FORMATS: dict[str, ModuleType] = {
    f.NAME: f for f in (llmc, gguf, transformers, openai, safetensors)
}


def detect(path: Path) -> OpenedModel | None:
    """The model at ``path`` in whichever format it is, opened; None when
    it is in none of them."""
    for fmt in FORMATS.values():
        opened = fmt.detect(path)
        if opened is not None:
            return opened
    return None
