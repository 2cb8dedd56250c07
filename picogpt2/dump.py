"""Dump every activation of one forward pass to an .npz file, for people
testing their own GPT-2 layer by layer.

    python -m picogpt2.dump --text "Hello my name is" --out ref.npz
    python -m picogpt2.dump --ids 15496,616,1438,318 --dtype float64 --attn --out ref.npz

Keys: ids int64 [n]; logits [n, n_vocab]; hidden [n_layer+1, n, n_embd] (the
residual stream: hidden[0] = token + position embeddings, hidden[i] = output
of block i-1, before any final norm); ln_f [n, n_embd]; with --attn, attn
[n_layer, n_head, n, n], the attention probabilities.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: python picogpt2/dump.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2.atomic import atomic_write  # noqa: E402
from picogpt2.cli import (  # noqa: E402
    Parser,
    add_model_arguments,
    check_model_argument,
    prog_name,
    run_cli,
)
from picogpt2.errors import InputError  # noqa: E402
from picogpt2.model import DTYPES, load_model  # noqa: E402
from picogpt2.status import status  # noqa: E402
from picogpt2.textio import argument_text  # noqa: E402


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise InputError(f"--ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise InputError("--ids is empty")
    return ids


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a half-written file never takes the final name."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog=prog_name("dump"),
        description="Write ids, logits, every hidden state, ln_f (and with --attn the "
        "attention probabilities) of one forward pass to an .npz file.",
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
    parser.add_argument("--out", required=True, type=Path, help="output file, FILE.npz")
    args = parser.parse_args(argv)

    def body() -> int:
        check_model_argument(args)
        if args.out.suffix != ".npz":
            raise InputError(f"--out must end in .npz, got {args.out}")
        ids = parse_ids(args.ids) if args.ids is not None else None
        if args.text is not None and not args.text:
            raise InputError("--text is empty")
        model = load_model(args.model_size, args.models_dir, backend=args.backend, dtype=args.dtype)
        if ids is None:
            ids = model.encoder.encode(argument_text(args.text, "--text"))
        arrays = model.trace(ids, attn=args.attn)
        save_npz(args.out, arrays)
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
        status(f"wrote {args.out}: {shapes} ({args.dtype})")
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
