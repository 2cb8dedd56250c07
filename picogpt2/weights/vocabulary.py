"""GPT-2's vocabulary on disk: its tokens with their ids and its ranked
merges, in each of the layouts people have, read, checked and written.

- OpenAI's: ``encoder.json`` (token -> id) and ``vocab.bpe`` (the merges in
  rank order, one pair a line, after a ``#version`` line);
- transformers' slow tokenizer: the same two files, named ``vocab.json``
  and ``merges.txt``;
- transformers' fast tokenizer (all that transformers 5 saves):
  ``tokenizer.json``, whose ``model`` holds the same vocabulary and merges
  (each merge ``"a b"``, or ``["a", "b"]``);
- a GGUF file's own (llama.cpp's): ``tokenizer.ggml.tokens`` (the tokens
  in id order) and ``tokenizer.ggml.merges`` (``"a b"``), with
  ``tokenizer.ggml.model`` "gpt2"; the "vocabulary folder" is then the
  ``.gguf`` file itself.

The files spell byte strings with a printable stand-in character for each
byte (``bytes_to_unicode``: space is ``Ġ``); reading turns them back into
bytes. Everything is checked on load, the file named on failure: ids are
0..n-1, each once; each merge joins two tokens of the vocabulary into a
third, and no pair is ranked twice; every token is one byte, a merge's
result, or a special token (``<|...|>``), and all 256 bytes are there; a
``tokenizer.json`` or a GGUF file must describe GPT-2's byte-level BPE.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from picogpt2.util.errors import PicoGPT2Error
from picogpt2.util.textio import parse_json
from picogpt2.weights.gguf_file import open_gguf

ENDOFTEXT = "<|endoftext|>"
# The two files, as OpenAI named them and as transformers does.
FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
TOKENIZER_FILE = "tokenizer.json"
OTHER_LAYOUTS = "nor vocab.json and merges.txt, nor tokenizer.json"  # for errors
TOKENIZER_MODEL = "tokenizer.ggml.model"  # a GGUF file's: "gpt2" for byte-level BPE
# llama.cpp's pre-tokenizers that split text as GPT-2 does.
GGUF_PRE = ("gpt-2",)


class EncoderFileError(PicoGPT2Error, ValueError):
    """A vocabulary file is missing or malformed; the message names it."""


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable character table used in the vocab files.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are
    mapped, in order, to U+0100 and up, so no token is spelt with whitespace
    or control characters.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


UNICODE_OF = bytes_to_unicode()
BYTE_OF = {c: b for b, c in UNICODE_OF.items()}


@dataclass
class Vocabulary:
    """Tokens (byte strings) with their ids, and the merges in rank order."""

    token_to_id: dict[bytes, int]
    merges: list[tuple[bytes, bytes]]


def vocabulary_files(folder: Path) -> list[Path]:
    """The files the folder's vocabulary is read from: one of the pairs, or
    ``tokenizer.json``; OpenAI's pair when it has none, so that errors name
    what is missing. A file (a GGUF) is its own."""
    if folder.is_file():
        return [folder]
    for pair in FILE_PAIRS:
        if all((folder / name).is_file() for name in pair):
            return [folder / name for name in pair]
    if (folder / TOKENIZER_FILE).is_file():
        return [folder / TOKENIZER_FILE]
    return [folder / name for name in FILE_PAIRS[0]]


def has_vocabulary(folder: Path) -> bool:
    return all(p.is_file() for p in vocabulary_files(folder))


def read_vocabulary(folder: Path) -> Vocabulary:
    """The folder's vocabulary, checked (the rules above)."""
    files = vocabulary_files(folder)
    if len(files) == 1:
        spelled, pairs = _read_one_file(files[0])
    else:
        spelled, pairs = _read_token_ids(files[0]), _read_merges(files[1])
    tokens = {_to_bytes(t, files[0]): i for t, i in spelled.items()}
    merges = [(_to_bytes(a, files[-1]), _to_bytes(b, files[-1])) for a, b in pairs]
    _check(tokens, merges, files)
    return Vocabulary(tokens, merges)


def copy_vocabulary(folder: Path, out: Path, names: tuple[str, str]) -> None:
    """The folder's vocabulary as a pair of files in ``out``, named
    ``names`` (OpenAI's or transformers'): the files copied byte for byte,
    or written from ``tokenizer.json``."""
    files = vocabulary_files(folder)
    if len(files) == 2:
        for source, name in zip(files, names, strict=True):
            shutil.copyfile(source, out / name)
        return
    spelled, merges = _read_one_file(files[0])
    (out / names[0]).write_text(json.dumps(spelled, ensure_ascii=False), encoding="utf-8")
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (out / names[1]).write_text("#version: 0.2\n" + lines, encoding="utf-8")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EncoderFileError(f"{path}: file not found") from None
    except OSError as e:
        raise EncoderFileError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EncoderFileError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _read_json(path: Path) -> object:
    try:
        return parse_json(_read_text(path))
    except ValueError as e:
        raise EncoderFileError(f"{path}: not valid JSON: {e}") from None


def _read_token_ids(path: Path, value: object = None) -> dict[str, int]:
    """Token (spelt byte-level) -> id, from ``encoder.json`` (or the
    object ``value`` read from ``path``): ids 0..n-1, each once."""
    spelled = _read_json(path) if value is None else value
    if not isinstance(spelled, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in spelled.values()
    ):
        raise EncoderFileError(f"{path}: expected an object of token -> integer id")
    # n distinct ids, none outside 0..n-1: each of 0..n-1 exactly once.
    n, seen = len(spelled), set()
    for token, i in spelled.items():
        if i in seen or not 0 <= i < n:
            why = f"id {i} given twice" if i in seen else f"{token!r} has id {i}"
            raise EncoderFileError(f"{path}: ids must be 0 to {n - 1}, each once: {why}")
        seen.add(i)
    if ENDOFTEXT not in spelled:
        raise EncoderFileError(f"{path}: has no {ENDOFTEXT} token")
    return spelled


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """The merge pairs of ``vocab.bpe``, in rank order (the first line may be
    a ``#version`` comment)."""
    merges = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if (number == 1 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise EncoderFileError(f"{path}: line {number} is not a merge pair: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a ``tokenizer.json`` that is GPT-2's
    byte-level BPE; its added special tokens join the vocabulary."""
    data = _read_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise EncoderFileError(f"{path}: not a BPE tokenizer")
    _refuse_other_rules(data, model, path)
    added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or []}
    spelled = _read_token_ids(path, {**model.get("vocab", {}), **added})
    merges = []
    for merge in model.get("merges", []):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise EncoderFileError(f"{path}: merge {len(merges)} is not a pair: {merge!r}")
        merges.append((pair[0], pair[1]))
    return spelled, merges


def _read_one_file(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    return _read_tokenizer_json(path) if path.name == TOKENIZER_FILE else _read_gguf(path)


def check_gguf_tokenizer(meta: dict[str, object], path: Path) -> None:
    """A GGUF file's tokenizer is GPT-2's byte-level BPE, splitting text as
    GPT-2 does (its model and pre-tokenizer; the tokens are read later)."""
    model, pre = meta.get(TOKENIZER_MODEL), meta.get("tokenizer.ggml.pre", GGUF_PRE[0])
    if model != "gpt2" or pre not in GGUF_PRE:
        why = f"{TOKENIZER_MODEL} is {model!r}" if model != "gpt2" else (
            f"tokenizer.ggml.pre is {pre!r}")  # fmt: skip
        raise EncoderFileError(f"{path}: {why}, not GPT-2's byte-level BPE ('gpt2', 'gpt-2')")


def _read_gguf(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges a GGUF file carries, when they are GPT-2's
    byte-level BPE split as GPT-2 splits text."""
    gguf = open_gguf(path)
    if gguf is None:
        raise EncoderFileError(
            f"{path}: a file, neither a folder with the vocabulary's files nor a GGUF file"
        )
    meta = gguf.metadata
    check_gguf_tokenizer(meta, path)
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise EncoderFileError(f"{path}: tokenizer.ggml.tokens is not a list of strings")
    spelled = {token: i for i, token in enumerate(tokens)}
    if len(spelled) != len(tokens):
        raise EncoderFileError(f"{path}: tokenizer.ggml.tokens holds a token twice")
    pairs = []
    for merge in merges if isinstance(merges, list) else [merges]:
        pair = merge.split(" ") if isinstance(merge, str) else []
        if len(pair) != 2:
            raise EncoderFileError(f"{path}: merge {len(pairs)} is not a pair: {merge!r}")
        pairs.append((pair[0], pair[1]))
    return _read_token_ids(path, spelled), pairs


def _refuse_other_rules(data: dict, model: dict, path: Path) -> None:
    """A fast tokenizer whose rules differ from GPT-2's byte-level BPE."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    byte_level = [s for s in steps if isinstance(s, dict) and s.get("type") == "ByteLevel"]
    different = {
        "normalizer": data.get("normalizer") is not None,
        "pre_tokenizer": len(byte_level) != 1 or len(steps) != 1,
        "add_prefix_space": bool(byte_level and byte_level[0].get("add_prefix_space")),
        "continuing_subword_prefix": bool(model.get("continuing_subword_prefix")),
        "end_of_word_suffix": bool(model.get("end_of_word_suffix")),
        "byte_fallback": bool(model.get("byte_fallback")),
        "ignore_merges": bool(model.get("ignore_merges")),
    }
    for name, bad in different.items():
        if bad:
            raise EncoderFileError(
                f"{path}: its {name} is not GPT-2's byte-level BPE, which picogpt2 implements"
            )


def spell(token: bytes) -> str:
    """A token as the files spell it: each byte its printable stand-in, a
    special token as itself."""
    if token.startswith(b"<|") and token.endswith(b"|>"):
        return token.decode("utf-8")
    return "".join(UNICODE_OF[b] for b in token)


def _to_bytes(spelled: str, path: Path) -> bytes:
    if spelled.startswith("<|") and spelled.endswith("|>"):
        return spelled.encode("utf-8")  # a special token, spelt as itself
    try:
        return bytes(BYTE_OF[c] for c in spelled)
    except KeyError:
        raise EncoderFileError(f"{path}: {spelled!r} is not a byte-level token") from None


def _check(tokens: dict[bytes, int], merges: list[tuple[bytes, bytes]], files: list[Path]) -> None:
    """Merges join tokens into tokens, once each; every token is a byte, a
    merge's result or a special token; all 256 bytes are there."""
    ids, merges_file = files[0], files[-1]
    for a, b in merges:
        if a not in tokens or b not in tokens or a + b not in tokens:
            missing = next(t for t in (a, b, a + b) if t not in tokens)
            raise EncoderFileError(
                f"{merges_file}: merge {a!r} + {b!r} needs the token {missing!r}, "
                f"missing from {ids}"
            )
    if len(set(merges)) != len(merges):
        raise EncoderFileError(f"{merges_file}: a merge pair is ranked twice")
    made = {a + b for a, b in merges}
    bytes_missing = [b for b in range(256) if bytes([b]) not in tokens]
    orphans = [t for t in tokens if len(t) > 1 and t not in made and not t.startswith(b"<|")]
    if bytes_missing or orphans:
        why = (f"byte {bytes_missing[0]} has no token" if bytes_missing else
               f"{len(orphans):,} tokens (such as {orphans[0]!r}) come from no merge in "
               f"{merges_file} ({len(merges):,} merges)")  # fmt: skip
        raise EncoderFileError(f"{ids}: not a byte-level BPE vocabulary with its merges: {why}")
