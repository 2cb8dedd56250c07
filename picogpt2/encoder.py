"""GPT-2's byte-level BPE, as OpenAI released it.

Text is cut into pieces by a regular expression, each piece's UTF-8 bytes are
merged pairwise by the ranked merge list in ``vocab.bpe`` until no ranked pair
is left, and every resulting byte string is looked up in ``encoder.json``.

The files spell byte strings with a printable stand-in character for each
byte (``bytes_to_unicode``); we translate them back to real ``bytes`` once at
load time, so the algorithm below works on bytes and reads as it is defined.
"""

from __future__ import annotations

import codecs
import heapq
from collections.abc import Collection, Iterable
from itertools import chain
from pathlib import Path
from typing import Literal

import regex

from picogpt2.util.errors import PicoGPT2Error
from picogpt2.weights.vocabulary import ENDOFTEXT, read_vocabulary

# Letters and digits first assigned in Unicode 17.0. The `regex` module
# classes them as \p{L} / \p{N}, while tiktoken's regex engine (Unicode
# 16.0), the reference we match, sees them as unassigned symbols. We treat
# them as tiktoken does, so ids agree on every string (tests probe each one).
UNICODE_17_LETTERS = (
    "\u088f\u0c5c\u0cdc\ua7ce\ua7cf\ua7d2\ua7d4\ua7f1\U00010940-\U00010959"
    "\U00010ec5-\U00010ec7\U00011db0-\U00011ddb\U00016ea0-\U00016eb8"
    "\U00016ebb-\U00016ed3\U00016ff2\U00016ff3\U000187f8-\U000187ff"
    "\U00018d09-\U00018d1e\U00018d80-\U00018df2\U0001e6c0-\U0001e6de"
    "\U0001e6e0-\U0001e6e2\U0001e6e4\U0001e6e5\U0001e6e7-\U0001e6ed"
    "\U0001e6f0-\U0001e6f4\U0001e6fe\U0001e6ff\U0002b73a-\U0002b73f"
    "\U0002cea2-\U0002cead\U000323b0-\U00033479"
)
UNICODE_17_DIGITS = "\U00011de0-\U00011de9\U00016ff4-\U00016ff6"

# The pre-tokenizer: contractions, letters, digits, other symbols (each may
# take one leading space), then whitespace. ``\s+(?!\S)`` leaves the last
# space of a run for the next word, so " world" stays one piece. This is
# OpenAI's pattern, with its contractions 's|'t|'re|'ve|'m|'ll|'d written as
# one group (the same matches, found faster).
PATTERN = regex.compile(
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
# The same pattern with the Unicode 17.0 letters and digits moved to "other";
# slower, so used only for text that holds one of them (see _PieceCache).
HAS_UNICODE_17 = regex.compile(f"[{UNICODE_17_LETTERS}{UNICODE_17_DIGITS}]")
PATTERN_UNICODE_16 = regex.compile(
    "(?V1)'(?:[sdmt]|ll|ve|re)"
    f"| ?[\\p{{L}}--[{UNICODE_17_LETTERS}]]+"
    f"| ?[\\p{{N}}--[{UNICODE_17_DIGITS}]]+"
    f"| ?[[^\\s\\p{{L}}\\p{{N}}]{UNICODE_17_LETTERS}{UNICODE_17_DIGITS}]+"
    "|\\s+(?!\\S)|\\s+"
)


Merge = tuple[int, bytes, bytes]  # (rank, first, second)


def bpe(
    word: bytes, ranks: dict[tuple[bytes, bytes], int], steps: list[Merge] | None = None
) -> list[bytes]:
    """Merge a piece's bytes by rank: the lowest-ranked adjacent pair first
    (the leftmost of equals), until no adjacent pair is ranked. ``steps``,
    when given, receives each merge made, once per pass over the piece (all
    the pair's places at once, as OpenAI's encoder makes them).

    Merging changes only the pairs beside it, so the ranked pairs wait in a
    heap, (rank, place), and each merge pushes the two it makes: a piece of
    n bytes takes O(n log n), not O(n^2) (a 20,000-letter piece, a base64
    blob, takes milliseconds). A pair the heap holds is still there when both
    its parts are as they were (``parts[i]`` is None once merged away)."""
    parts: list[bytes | None] = [word[i : i + 1] for i in range(len(word))]
    after = list(range(1, len(word) + 1))  # the next part's place (len(word): none)
    before = list(range(-1, len(word) - 1))  # the previous part's place (-1: none)
    pairs = zip(parts, parts[1:], strict=False)
    heap = [(ranks[pair], i) for i, pair in enumerate(pairs) if pair in ranks]
    heapq.heapify(heap)

    def push(i: int) -> None:  # the pair starting at part i, when there is one and it is ranked
        j = after[i] if i >= 0 else len(word)
        if j < len(word) and (parts[i], parts[j]) in ranks:
            heapq.heappush(heap, (ranks[parts[i], parts[j]], i))

    while heap:
        rank, i = heapq.heappop(heap)
        j = after[i]
        if parts[i] is None or j >= len(word) or ranks.get((parts[i], parts[j])) != rank:
            continue  # gone: a merge beside it changed one of its parts
        if steps is not None and (not steps or steps[-1][0] != rank):
            steps.append((rank, parts[i], parts[j]))
        parts[i], parts[j] = parts[i] + parts[j], None
        after[i] = after[j]
        if after[j] < len(word):
            before[after[j]] = i
        push(before[i])
        push(i)
    return [part for part in parts if part is not None]


def valid_text(text: str) -> str:
    """``text`` as text that UTF-8 can hold: a Python string can hold lone
    surrogates, which no text can; like tiktoken, we round-trip it through
    UTF-16, which joins valid surrogate pairs and turns lone ones into
    U+FFFD. Any other string is returned as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class _NeedsUnicode16(Exception):
    """Raised by the piece cache on a piece holding a Unicode 17.0 letter or
    digit: the text must be split again with ``PATTERN_UNICODE_16``."""


class _PieceCache(dict):
    """piece (str) -> token ids; fills itself on a miss, and forgets its
    oldest half when full so that memory stays bounded on any input.

    A piece holding a Unicode 17.0 letter or digit is never stored: every
    text containing one misses on it, and the miss raises ``_NeedsUnicode16``
    to that text's own ``encode`` call. Checking only misses keeps the check
    off the hot path (a search of every text would halve the speed), and an
    exception, unlike a flag on the shared cache, reaches only the thread
    whose text it concerns.
    """

    def __init__(self, encoder: Encoder, max_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.max_size = max_size

    def __missing__(self, piece: str) -> tuple[int, ...]:
        if HAS_UNICODE_17.search(piece):
            raise _NeedsUnicode16
        ids = self.encoder.encode_piece(piece)
        if len(self) >= self.max_size:
            for key in list(self)[: self.max_size // 2]:
                self.pop(key, None)  # another thread may have trimmed it already
        self[piece] = ids
        return ids


class UnknownTokenError(PicoGPT2Error, ValueError):
    """An id to decode is not in the vocabulary (a model whose n_vocab is
    larger than its encoder.json can generate such ids)."""


class Encoder:
    """GPT-2's tokenizer: ``encode`` text to ids, ``decode`` ids to text."""

    def __init__(
        self,
        token_to_id: dict[bytes, int],
        merges: list[tuple[bytes, bytes]],
        *,
        cache_size: int = 1 << 16,
    ) -> None:
        self.token_to_id = token_to_id
        self.id_to_token = {i: t for t, i in token_to_id.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.n_vocab = len(token_to_id)
        self.eot_token = token_to_id[ENDOFTEXT.encode()]
        self._cache = _PieceCache(self, cache_size)

    def encode_piece(self, piece: str, steps: list[Merge] | None = None) -> tuple[int, ...]:
        """Token ids of one pre-tokenized piece (``steps``: see ``bpe``)."""
        tokens = bpe(piece.encode("utf-8"), self.ranks, steps)
        return tuple(self.token_to_id[t] for t in tokens)

    @staticmethod
    def pieces(text: str) -> list[str]:
        """The pre-tokenizer's pieces of ``text``, with the pattern ``encode``
        uses for it (the explicit, slower form of its choice)."""
        pattern = PATTERN_UNICODE_16 if HAS_UNICODE_17.search(text) else PATTERN
        return pattern.findall(text)

    def encode(
        self, text: str, *, allowed_special: Collection[str] | Literal["all"] = ()
    ) -> list[int]:
        """Token ids of ``text``.

        ``<|endoftext|>`` in the text is ordinary text by default (7 tokens),
        as in OpenAI's encoder and tiktoken's ``encode_ordinary``. Pass
        ``allowed_special="all"`` (or ``{"<|endoftext|>"}``) to map it to
        ``eot_token`` (50256) instead.

        Lone surrogates (only possible in Python strings) cannot be UTF-8
        encoded: see ``valid_text``.
        """
        text = valid_text(text)
        if allowed_special == "all" or ENDOFTEXT in allowed_special:
            ids: list[int] = []
            for i, chunk in enumerate(text.split(ENDOFTEXT)):
                if i:
                    ids.append(self.eot_token)
                ids.extend(self._encode_ordinary(chunk))
            return ids
        return self._encode_ordinary(text)

    def _encode_ordinary(self, text: str) -> list[int]:
        try:
            pieces = map(self._cache.__getitem__, PATTERN.findall(text))
            return list(chain.from_iterable(pieces))
        except _NeedsUnicode16:  # rare: the text holds a letter new in Unicode 17.0
            pieces = map(self._piece_ids, PATTERN_UNICODE_16.findall(text))
            return list(chain.from_iterable(pieces))

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        """Ids of a piece, from the cache when there, without storing it."""
        return self._cache.get(piece) or self.encode_piece(piece)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes that ``ids`` stand for."""
        try:
            return b"".join(map(self.id_to_token.__getitem__, ids))
        except KeyError as e:
            raise UnknownTokenError(
                f"token id {e.args[0]} is not in the vocabulary (ids 0 to {self.n_vocab - 1})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for ids arriving one by one (see ``StreamDecoder``)."""
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids into text as they arrive, holding back the bytes of a
    character split across tokens until it is complete, so a terminal never
    sees half a UTF-8 character. Call ``flush`` at the end."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: Iterable[int]) -> str:
        return self._utf8.decode(self.encoder.decode_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def load_encoder(model_dir: str | Path, *, cache_size: int = 1 << 16) -> Encoder:
    """The encoder of a folder's vocabulary: ``encoder.json`` and
    ``vocab.bpe``, transformers' ``vocab.json`` and ``merges.txt``, or its
    ``tokenizer.json`` (``vocabulary.py`` reads and checks them)."""
    vocabulary = read_vocabulary(Path(model_dir))
    return Encoder(vocabulary.token_to_id, vocabulary.merges, cache_size=cache_size)
