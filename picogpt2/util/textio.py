"""Text into and out of the commands.

In: UTF-8, strictly. Bytes that are not UTF-8 (in an argument, on stdin, in
a file) are an error naming the first bad byte, never guessed at: GPT-2's
ids depend on every byte. Out: whatever stdout's encoding can show, with
anything it cannot written as a replacement character, never a crash
midway through a generation.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TextIO

from picogpt2.util.errors import InputError, PicoGPT2Error
from picogpt2.util.status import status


def plural(n: int, noun: str) -> str:
    """``1 token``, ``2 tokens``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def parse_json(text: str | bytes) -> object:
    """``json.loads``, with JSON nested too deeply for Python's parser (a
    thousand ``[``) a ``ValueError`` like any other malformed JSON, never a
    ``RecursionError``: every reader of JSON catches it as such."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{what} is not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x})"
        ) from None


def read_text_file(path: Path) -> str:
    """A file's text, exactly as stored (UTF-8, strictly)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    return decode_utf8(data, str(path))


def printable(name: str) -> str:
    """A file name as text any output can hold: bytes of it that are not
    UTF-8 (Python keeps them as lone surrogates) become U+FFFD."""
    return os.fsencode(name).decode("utf-8", errors="replace")


def argument_text(arg: str, what: str) -> str:
    """A command-line argument as the text its bytes spell. Python turns
    argument bytes that are not UTF-8 into lone surrogates; those are
    reported here instead."""
    try:
        arg.encode("utf-8")
        return arg
    except UnicodeEncodeError:
        return decode_utf8(os.fsencode(arg), what)


def parse_ids(text: str, what: str) -> list[int]:
    """Token ids written as a JSON array, or as integers separated by commas
    or spaces (``15496, 616`` or ``15496 616``)."""
    try:
        if text.lstrip().startswith("["):
            values = parse_json(text)
            if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                raise ValueError
            return values
        fields = re.split(r"\s*,\s*|\s+", text.strip()) if text.strip() else []
        return [int(v) for v in fields]  # an empty field ("1,,2") is not an integer
    except ValueError:
        raise InputError(
            f"{what}: expected token ids (comma-separated integers, or a JSON array), "
            f"got {text[:60]!r}"
        ) from None


def strip_one_newline(text: str) -> str:
    """``echo "text" |`` gives the text and one line ending: drop exactly that
    one (``\\n`` or ``\\r\\n``), so piped text equals the same argument."""
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def read_stdin(what: str) -> str:
    """All of stdin as UTF-8 text, without its final line ending. On a
    terminal, says first that it is waiting."""
    if sys.stdin is None:
        raise InputError(f"no {what}: give it as an argument, or on stdin")
    if sys.stdin.isatty():
        status(f"reading the {what} from stdin; end it with Ctrl-D (or give it as an argument)")
    return strip_one_newline(decode_utf8(sys.stdin.buffer.read(), f"the {what} on stdin"))


def text_stdout() -> TextIO:
    """stdout, writing what its encoding cannot show as replacements."""
    if sys.stdout is None:  # started with stdout closed (>&-)
        raise PicoGPT2Error("standard output is closed: there is nowhere to write the text")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    return sys.stdout
