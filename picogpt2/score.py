"""Score a text file: token count, mean negative log-likelihood, perplexity
and bits per byte under GPT-2.

    python -m picogpt2.score book.txt [--stride 512] [--json]

Texts longer than n_ctx are scored with the sliding window of transformers'
perplexity guide (``scoring.py`` states the rule), so the numbers compare
with published ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from picogpt2.cli import (
    Parser,
    add_model_arguments,
    check_model_argument,
    model_options,
    prog_name,
    run_cli,
)
from picogpt2.errors import InputError
from picogpt2.model import DTYPES, load_model
from picogpt2.scoring import score
from picogpt2.textio import read_text_file


def print_result(result: dict[str, float | int], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, allow_nan=False))  # the model refuses NaN logits
        return
    print(f"tokens          {result['tokens']} ({result['scored_tokens']} scored)")
    print(f"nll             {result['nll']:.6f} nats/token")
    print(f"perplexity      {result['perplexity']:.4f}")
    print(f"bits per byte   {result['bits_per_byte']:.6f}")


def build_parser() -> Parser:
    parser = Parser(
        prog=prog_name("score"),
        description="Mean negative log-likelihood (nats per token), perplexity and bits "
        "per byte of a UTF-8 text file under GPT-2, with transformers' sliding window.",
    )
    parser.add_argument("file", type=Path, help="UTF-8 text file")
    parser.add_argument(
        "--stride", type=int, default=None, help="tokens between window starts (default: n_ctx / 2)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: tokens, nll, perplexity, bits_per_byte, scored_tokens, bytes",
    )
    add_model_arguments(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        check_model_argument(args)
        text = read_text_file(args.file)
        if not text.strip():
            raise InputError(f"{args.file} is empty")
        if "\x00" in text:
            raise InputError(f"{args.file} looks binary (it contains NUL bytes), not text")
        if args.stride is not None and args.stride < 1:
            raise InputError(f"--stride must be >= 1, got {args.stride}")
        model = load_model(**model_options(args), dtype=args.dtype)
        print_result(score(model, text, args.stride), args.json)
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
