"""Continue a prompt with GPT-2, streaming the text as it is generated.

    python -m picogpt2.generate "Alan Turing theorized that"
    echo "prompt" | python -m picogpt2.generate --n-tokens 100 --top-k 40 --seed 1
    python -m picogpt2.generate -- "-a prompt that starts with a dash"

The model is downloaded and converted into ``--models-dir`` on first use.
Greedy decoding unless --top-k, --top-p or --temperature is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python picogpt2/generate.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2.cli import (  # noqa: E402
    Parser,
    add_model_arguments,
    check_model_argument,
    prog_name,
    run_cli,
)
from picogpt2.download import download_model  # noqa: E402
from picogpt2.encoder import load_encoder  # noqa: E402
from picogpt2.hparams import HPARAMS_FILE, SIZES, read_hparams  # noqa: E402
from picogpt2.model import check_lengths, load_model  # noqa: E402
from picogpt2.sampling import check_sampling_args  # noqa: E402
from picogpt2.status import status  # noqa: E402
from picogpt2.textio import argument_text, read_stdin, text_stdout  # noqa: E402
from picogpt2.weights import WEIGHTS_FILE, has_complete_checkpoint  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("generate"),
        description="Continue a prompt with GPT-2, streaming the text to stdout "
        "(status goes to stderr). Greedy unless a sampling option is given.",
    )
    parser.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="text to continue (UTF-8); read from stdin when omitted, without its final "
        "newline; empty starts from <|endoftext|>; put -- before a prompt that starts with -",
    )
    parser.add_argument(
        "--n-tokens", type=int, default=40, help="number of tokens to generate (default: 40)"
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="divide logits by this before sampling; 0 is greedy "
        "(default: 1 when --top-k or --top-p is given)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="sample among the k most likely tokens (1 is greedy)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample among the fewest most likely tokens whose probability reaches p, in (0, 1]",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the portable SplitMix64 sampler, for reproducible output",
    )
    return parser


def validate(args: argparse.Namespace) -> None:
    """Check the arguments before loading anything, with the same functions
    the model checks them with again."""
    check_sampling_args(args.temperature, args.top_k, args.top_p)
    check_model_argument(args)
    folder = args.models_dir / args.model_size
    if (folder / HPARAMS_FILE).is_file():
        n_ctx = read_hparams(folder).n_ctx
    else:  # a released size, not downloaded yet: the catalogue knows its context
        n_ctx = SIZES[args.model_size].n_ctx
    check_lengths(1, args.n_tokens, n_ctx)  # the prompt is at least one token


def check_prompt_before_download(args: argparse.Namespace, prompt: str) -> None:
    """For a released size not downloaded yet, fetch only its small files
    (the vocabulary) and check the prompt's length, before the large shard."""
    folder = args.models_dir / args.model_size
    if args.model_size not in SIZES or (folder / WEIGHTS_FILE).exists():
        return
    if has_complete_checkpoint(folder):
        return
    download_model(args.model_size, args.models_dir, small_files_only=True)
    encoder = load_encoder(folder)
    n_prompt = len(encoder.encode(prompt)) if prompt else 1
    check_lengths(n_prompt, args.n_tokens, read_hparams(folder).n_ctx)


def generate(args: argparse.Namespace) -> int:
    validate(args)
    out = text_stdout()
    prompt = argument_text(args.prompt, "the prompt") if args.prompt is not None else None
    if prompt is None:
        prompt = read_stdin("prompt")
    check_prompt_before_download(args, prompt)
    status(f"loading GPT-2 {args.model_size} from {args.models_dir} ...")
    model = load_model(args.model_size, args.models_dir, backend=args.backend)
    ids = model.encoder.encode(prompt) if prompt else [model.encoder.eot_token]
    tokens = model.stream(
        ids,
        args.n_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    text = model.encoder.stream_decoder()
    out.write(prompt)
    try:
        for token in tokens:
            out.write(text.feed([token]))
            out.flush()
        out.write(text.flush())
    finally:  # end the line even when stopped midway, before any error message
        out.write("\n")
        out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: generate(args), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
