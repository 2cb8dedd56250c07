"""Every file format picogpt2 reads and writes, one module each, all with
the same small interface:

- ``NAME``: what ``export --to`` calls it; ``DESCRIPTION``: one line.
- ``detect(path) -> bool``: is ``path`` (a folder or a file) in this format?
- ``read_header(path) -> HParams``: the sizes, without reading any weights.
- ``read(path) -> (HParams, tensors)``: every tensor under the checkpoint's
  names and shapes (``params.schema``), memory-mapped where the file allows;
  a file that cannot be used where it lies is converted once into our
  layout beside it (``cache``, one rule for every format).
- ``vocabulary(path) -> Path``: the folder its vocabulary is read from.
- ``checksum_files(path) -> [Path]``: the files where picogpt2 records each
  tensor's CRC-32C (what it wrote: a conversion, or its own layout).
- ``write(out, hparams, tensors, vocabulary)``: a new file or folder
  ``out``, whole or not at all.

The formats, in the order ``detect`` tries them: ``llmc`` (llm.c's ``.bin``,
by its magic number), ``hf`` (a transformers folder, by ``config.json``),
``openai`` (OpenAI's release: ``hparams.json`` and a TensorFlow
checkpoint) and ``safetensors`` (``hparams.json`` and ``model.safetensors``
in the checkpoint's names: what OpenAI's checkpoints are converted into).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from picogpt2.weights.formats import llmc, openai, safetensors, transformers

FORMATS: dict[str, ModuleType] = {f.NAME: f for f in (llmc, transformers, openai, safetensors)}


def detect(path: Path) -> ModuleType | None:
    """The format of ``path``, or None when it is in none of them."""
    return next((f for f in FORMATS.values() if f.detect(path)), None)
