"""GPT-2's tokenizer from the terminal: text to ids, ids to text, and every
step in between for people porting the BPE.

    python -m picogpt2.tokens "Hello world"                 # [15496, 995]
    python -m picogpt2.tokens --file corpus.txt --jsonl     # one array per line
    python -m picogpt2.tokens --decode "15496, 995"         # Hello world
    python -m picogpt2.tokens --decode --bytes "[12520]"    # the exact bytes
    python -m picogpt2.tokens --show-work "Hello world"

Text comes from the argument, stdin (without its final line ending, as
``generate`` reads it) or ``--file`` (exactly as stored). The vocabulary is
a model folder's (``--model-size``/``--models-dir``; a released size not
there yet fetches only its small files) or any folder with
``encoder.json`` and ``vocab.bpe`` (``--vocab-dir``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from picogpt2.cli.arguments import Parser, add_models_dir_argument, folder_argument, prog_name
from picogpt2.cli.running import run_cli
from picogpt2.encoder import Encoder, load_encoder
from picogpt2.util.errors import InputError
from picogpt2.util.textio import (
    argument_text,
    parse_ids,
    plural,
    read_stdin,
    read_text_file,
    text_stdout,
)
from picogpt2.weights.fetch import DownloadError
from picogpt2.weights.loading import vocabulary_of
from picogpt2.weights.vocabulary import ENDOFTEXT, bytes_to_unicode

SPELLING = bytes_to_unicode()  # byte -> its printable stand-in in the vocabulary files


def byte_level(data: bytes) -> str:
    """Bytes as ``encoder.json`` and ``vocab.bpe`` spell them (space is Ġ)."""
    return "".join(SPELLING[b] for b in data)


def show_work(encoder: Encoder, text: str, out: TextIO) -> list[int]:
    """Print, for each piece of ``text``: its UTF-8 bytes, their byte-level
    spelling, every merge in order (rank and result) and its ids."""
    ids: list[int] = []
    pieces = encoder.pieces(text)
    out.write(f"{plural(len(pieces), 'piece')} from the pre-tokenizer\n")
    for n, piece in enumerate(pieces, start=1):
        data = piece.encode("utf-8")
        steps: list = []
        piece_ids = encoder.encode_piece(piece, steps)
        out.write(f"piece {n}: {piece!r}\n")
        out.write(f"  utf-8       {data.hex(' ')}\n")
        out.write(f"  byte-level  {byte_level(data)}\n")
        for rank, first, second in steps:
            out.write(
                f"  merge rank {rank:5}: {byte_level(first)} + {byte_level(second)} -> "
                f"{byte_level(first + second)}\n"
            )
        out.write(f"  ids         {list(piece_ids)}\n")
        ids += piece_ids
    out.write(f"ids {json.dumps(ids)}\n")
    return ids


def read_input(args: argparse.Namespace) -> str:
    if args.file is not None:
        return read_text_file(args.file)
    if args.text is not None:
        return argument_text(args.text, "the text")
    return read_stdin("text")


def encode(encoder: Encoder, text: str, args: argparse.Namespace) -> list[int]:
    return encoder.encode(text, allowed_special="all" if args.special else ())


def decode(encoder: Encoder, ids: list[int], args: argparse.Namespace, out: TextIO) -> None:
    """The text of ``ids`` and a line end (with --bytes: the exact bytes, and
    nothing after them)."""
    unknown = [i for i in ids if not 0 <= i < encoder.n_vocab]
    if unknown:  # bad input, not a damaged vocabulary
        raise InputError(
            f"token id {unknown[0]} is not in the vocabulary (0 to {encoder.n_vocab - 1})"
        )
    if args.bytes:
        out.flush()
        sys.stdout.buffer.write(encoder.decode_bytes(ids))
        sys.stdout.buffer.flush()
    else:
        out.write(encoder.decode(ids) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("tokens"),
        description="Text to GPT-2 token ids (a JSON array), ids to text, or every step of "
        "the byte-level BPE in between.",
    )
    parser.add_argument("text", nargs="?", default=None, help="text (or ids with --decode)")
    parser.add_argument("--file", type=Path, default=None, help="read the input from this file")
    parser.add_argument("--jsonl", action="store_true", help="one JSON array per input line")
    parser.add_argument("--decode", action="store_true", help="the input is ids: print text")
    parser.add_argument("--bytes", action="store_true", help="with --decode: the exact bytes")
    parser.add_argument(
        "--show-work", action="store_true", help="print every piece, byte and merge, then the ids"
    )
    parser.add_argument(
        "--special",
        action="store_true",
        help=f"{ENDOFTEXT} in the text is the special token 50256 (default: ordinary text, "
        "7 tokens, as OpenAI's encoder and tiktoken's encode_ordinary)",
    )
    parser.add_argument(
        "--vocab-dir",
        type=folder_argument,
        default=None,
        help="any folder with encoder.json and vocab.bpe (instead of a model)",
    )
    parser.add_argument("--model-size", default="124M", help="whose vocabulary (default: 124M)")
    add_models_dir_argument(parser)
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Flags that mean nothing together are refused, never ignored."""
    refused = {
        "--bytes goes with --decode": args.bytes and not args.decode,
        "--special is for encoding text; --decode writes 50256 as <|endoftext|> anyway": (
            args.special and args.decode
        ),
        "--show-work prints text, not JSON lines: give one text, without --jsonl": (
            args.show_work and args.jsonl
        ),
        "--show-work shows encoding; --decode has no merges to show": (
            args.show_work and args.decode
        ),
        "give the input as an argument or with --file, not both": (
            args.file is not None and args.text is not None
        ),
    }
    for message, bad in refused.items():
        if bad:
            raise InputError(message)


def lines_of(text: str) -> list[str]:
    """JSON lines' rows: the text split at each \n (and a \r before it) alone,
    never at the other characters ``str.splitlines`` takes for line ends."""
    rows = text.split("\n")
    if rows[-1] == "":  # the line end of the last row
        rows.pop()
    return [row.removesuffix("\r") for row in rows]


def tokens(args: argparse.Namespace) -> int:
    check_flags(args)
    out = text_stdout()
    try:
        folder = vocabulary_of(args.model_size, args.models_dir, args.vocab_dir,
                               option="--vocab-dir")  # fmt: skip
    except DownloadError as e:  # offline: a folder with the vocabulary is the way round
        raise DownloadError(f"{e}; or name a folder with the vocabulary: --vocab-dir") from None
    encoder = load_encoder(folder)
    text = read_input(args)
    for line in lines_of(text) if args.jsonl else [text]:
        if args.decode:
            decode(encoder, parse_ids(line, "--decode"), args, out)
        elif args.show_work:
            show_work(encoder, line, out)
        else:
            out.write(json.dumps(encode(encoder, line, args)) + "\n")
    out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: tokens(args), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
