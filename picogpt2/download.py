"""Download OpenAI's released GPT-2 checkpoints, verify them, convert them.

    python -m picogpt2.download 124M [--models-dir DIR] [--base-url URL] [--keep-original]
    python -m picogpt2.download 124M --verify          # or any model: a name or a path

Files come from OpenAI's public bucket (or a mirror with the same layout,
``{base}/{SIZE}/{FILE}``) into ``{models_dir}/{SIZE}/``
(``weights/locations.py`` says where models live by default;
``weights/releases.py`` what a download does).
"""

from __future__ import annotations

import sys

from picogpt2.cli.arguments import Parser, add_models_dir_argument, prog_name
from picogpt2.cli.running import run_cli
from picogpt2.hparams import SIZES
from picogpt2.util.errors import InputError
from picogpt2.util.status import status
from picogpt2.weights import locations
from picogpt2.weights.fetch import RETRIES
from picogpt2.weights.formats.safetensors import WEIGHTS_FILE
from picogpt2.weights.releases import download_model
from picogpt2.weights.verification import verify_model


def build_parser() -> Parser:
    parser = Parser(
        prog=prog_name("download"),
        description="Download, verify (CRC-32C of every tensor) and convert a released "
        f"GPT-2 checkpoint into MODELS_DIR/SIZE/{WEIGHTS_FILE}.",
    )
    parser.add_argument(
        "size",
        metavar="SIZE",
        help=f"model size: {', '.join(SIZES)} (with --verify, any model picogpt2 loads: a "
        "name in the models folder, or a path)",
    )
    add_models_dir_argument(parser)
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"mirror with the layout BASE/SIZE/FILE (default: ${locations.BASE_URL_ENV} "
        f"or {locations.DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--keep-original",
        action="store_true",
        help="keep the TensorFlow data shard after a verified conversion",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=RETRIES,
        help=f"retries of an interrupted transfer or a 5xx reply (default: {RETRIES})",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="download nothing: check the model's weights (the CRC-32C picogpt2 recorded "
        "where it wrote them; otherwise every tensor readable, shaped right and finite)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        if args.verify:
            for line in verify_model(args.size, args.models_dir):
                status(line)
            return 0
        if args.retries < 0:
            raise InputError(f"--retries must be >= 0, got {args.retries}")
        model_dir = download_model(
            args.size,
            args.models_dir,
            base_url=args.base_url,
            keep_original=args.keep_original,
            retries=args.retries,
        )
        status(f"GPT-2 {args.size} ready in {model_dir}")
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
