"""Write a model in another format: a transformers folder, an llm.c file,
a GGUF file for llama.cpp, OpenAI's TensorFlow layout, or our own
safetensors layout.

    python -m picogpt2.export 124M --to hf gpt2-hf/
    python -m picogpt2.export 124M --to llmc gpt2_124M.bin
    python -m picogpt2.export 124M --to gguf gpt2-124M-f16.gguf --outtype f16
    python -m picogpt2.export my-finetune.bin --to openai my-finetune/ --encoder-dir vocab/

The model is anything picogpt2 loads (a released size, a folder or file in
the models folder, or a path). The weights are written float32, exactly
(a round trip to any format and back is bit-exact); a GGUF may be written
F16 instead (``--outtype f16``, as llama.cpp's converter makes it). ``OUT`` must not exist
yet; it is written whole or not at all (a folder is filled under a
temporary name and renamed when complete).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from picogpt2.cli.arguments import (
    Parser,
    add_encoder_dir_argument,
    add_models_dir_argument,
    prog_name,
)
from picogpt2.cli.running import run_cli
from picogpt2.encoder import load_encoder
from picogpt2.util.atomic import require_new
from picogpt2.util.status import status
from picogpt2.weights.formats import FORMATS, gguf
from picogpt2.weights.loading import open_model


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("export"),
        description="Write a model as a transformers folder, an llm.c file, a GGUF file, "
        "OpenAI's TensorFlow layout or our safetensors layout (float32, bit-exact; GGUF may be "
        "F16).",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a released size, or any model in --models-dir or at a path (any format)",
    )
    parser.add_argument(
        "--to",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{name}: {f.DESCRIPTION}" for name, f in FORMATS.items()),
    )
    parser.add_argument(
        "out", metavar="OUT", type=Path, help="the new folder (or .bin or .gguf file)"
    )
    parser.add_argument(
        "--outtype",
        choices=gguf.OUTTYPES,
        help="--to gguf only: f32 (the default: exact) or f16 (matrices and token embeddings "
        "rounded to float16; norms, biases and position embeddings float32)",
    )
    add_models_dir_argument(parser)
    add_encoder_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.outtype is not None and args.to != gguf.NAME:
        parser.error(f"--outtype is for --to {gguf.NAME} only; --to {args.to} writes float32")

    def body() -> int:
        require_new(args.out)  # before a long load, not after it
        model = open_model(args.model, args.models_dir, encoder_dir=args.encoder_dir)
        load_encoder(model.vocabulary)  # a vocabulary that does not load: refused before writing
        fmt = FORMATS[args.to]
        extra = {"outtype": args.outtype} if args.outtype else {}
        fmt.write(args.out, model.hparams, model.tensors, model.vocabulary, **extra)
        status(f"wrote {args.out}: {fmt.DESCRIPTION}")
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
