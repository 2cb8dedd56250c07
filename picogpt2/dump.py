"""Dump every activation of one forward pass, for people testing their own
GPT-2 layer by layer (and ``compare`` to check theirs against it).

    python -m picogpt2.dump --text "Hello my name is" --out ref.npz
    python -m picogpt2.dump --ids 15496,616,1438,318 --dtype float64 --detail --out ref64.npz
    python -m picogpt2.dump --text "Hello" --generate 20 --out ref.safetensors
    python -m picogpt2.dump --text "Hello" --detail --format npy-dir --out ref/

Keys (``activations.py`` says where in the math each is taken): ids int64
[n]; logits [n, n_vocab]; hidden [n_layer+1, n, n_embd] (the residual
stream: hidden[0] = token + position embeddings, hidden[i] = output of
block i-1, before any final norm); ln_f [n, n_embd]; with --attn, attn
[n_layer, n_head, n, n]; with --detail the inside of every block; with
--generate N the ids chosen and their log-probabilities.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from picogpt2.activations import BLOCK, GENERATION
from picogpt2.cli.arguments import (
    Parser,
    add_model_arguments,
    add_sampling_arguments,
    model_reference,
    prog_name,
    settings_of,
)
from picogpt2.cli.running import run_cli
from picogpt2.model import DTYPES, load_model
from picogpt2.oracle.dumps import FORMATS, check_output, generation_record, output_format, save_dump
from picogpt2.util.errors import InputError
from picogpt2.util.status import status
from picogpt2.util.textio import argument_text, parse_ids


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("dump"),
        description="Write ids, logits, every hidden state and ln_f of one forward pass (with "
        "--attn the attention probabilities, with --detail the inside of every block, with "
        "--generate N a decoding's per-step log-probabilities) to a file or folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="input text, encoded with GPT-2's encoder")
    source.add_argument("--ids", help="input token ids, comma-separated")
    add_model_arguments(parser)
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="float64 runs the whole pass in float64 (default: float32)",
    )
    parser.add_argument("--attn", action="store_true", help="also dump attention probabilities")
    parser.add_argument(
        "--detail",
        action="store_true",
        help=f"also dump the inside of every block: {', '.join(k.name for k in BLOCK)}",
    )
    parser.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="also decode N tokens (greedy, or with the sampling options) and record per "
        f"step: {', '.join(GENERATION)}",
    )
    add_sampling_arguments(parser)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="npz, safetensors, or npy-dir (a folder of KEY.npy); default: from --out's name",
    )
    parser.add_argument("--out", required=True, type=Path, help="FILE.npz, FILE.safetensors or DIR")
    return parser


def dump(args: argparse.Namespace) -> int:
    ref = model_reference(args)
    fmt = output_format(args.out, args.format)
    check_output(args.out)
    ids = parse_ids(args.ids, "--ids") if args.ids is not None else None
    if ids == []:
        raise InputError("--ids is empty")
    if args.text is not None and not args.text:
        raise InputError("--text is empty")
    if args.generate < 0:
        raise InputError(f"--generate must be >= 0, got {args.generate}")
    settings = settings_of(args)
    model = load_model(ref, backend=args.backend, dtype=args.dtype, encoder_dir=args.encoder_dir)
    if ids is None:
        ids = model.encoder.encode(argument_text(args.text, "--text"))
    arrays = model.trace(ids, attn=args.attn, detail=args.detail)
    if args.generate:
        arrays |= generation_record(model, ids, args.generate, settings)
    metadata = {"format": "picogpt2-dump", "model": args.model_size, "dtype": args.dtype}
    save_dump(args.out, arrays, fmt, metadata)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
    status(f"wrote {args.out} ({fmt}, {args.dtype}): {shapes}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: dump(args), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
