"""The one base of every error picogpt2 raises on purpose.

Each module defines the errors it raises beside its code
(``DownloadError`` in ``weights/fetch.py``, ``CheckpointError`` in
``weights/formats/tf_bundle.py``, ...), all derived from
``PicoGPT2Error``; the few that many modules raise are here. The commands
catch this base alone and print its message as one line, so a new error
class cannot escape as a traceback.
"""

from __future__ import annotations


class PicoGPT2Error(Exception):
    """A failure worth one line to the user; the message says what and where.
    A command exits with ``exit_status``."""

    exit_status = 1


class InputError(PicoGPT2Error, ValueError):
    """Bad input from the caller: an argument out of range, a token id outside
    the vocabulary, a prompt too long for the context. Exit status 2."""

    exit_status = 2


class FormatError(PicoGPT2Error, ValueError):
    """A model file or folder in a format picogpt2 reads (transformers,
    llm.c) holds something it cannot use; the message names it."""


class WeightsError(PicoGPT2Error, ValueError):
    """A model's weights cannot be used (missing, damaged, not what its
    hyperparameters describe, not finite); the message names the file."""
