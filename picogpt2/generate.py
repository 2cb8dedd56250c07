"""Continue a prompt with GPT-2, streaming the text as it is generated.

    python -m picogpt2.generate "Alan Turing theorized that"
    echo "prompt" | python -m picogpt2.generate --n-tokens 100 --top-k 40 --seed 1

The model is downloaded and converted into ``--models-dir`` on first use.
Greedy decoding unless --top-k, --top-p or --temperature is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python picogpt2/generate.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2.cli import UsageError, add_model_arguments, check_model_argument, run_cli  # noqa: E402
from picogpt2.download import N_CTX, SIZES  # noqa: E402
from picogpt2.model import load_model  # noqa: E402
from picogpt2.sampling import check_sampling_args  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m picogpt2.generate",
        description="Continue a prompt with GPT-2, streaming the text to stdout "
        "(status goes to stderr). Greedy unless a sampling option is given.",
    )
    parser.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="text to continue; read from stdin when omitted; empty starts from <|endoftext|>",
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
    try:
        check_sampling_args(args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.n_tokens < 0:
        raise UsageError(f"--n-tokens must be >= 0, got {args.n_tokens}")
    # Every released size has N_CTX; a custom model's own n_ctx is checked once loaded.
    if args.model_size in SIZES and args.n_tokens >= N_CTX:
        raise UsageError(f"--n-tokens {args.n_tokens} leaves no room for a prompt in {N_CTX}")
    check_model_argument(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = parser.prog

    def body() -> int:
        validate(args)
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
        print(f"loading GPT-2 {args.model_size} from {args.models_dir} ...", file=sys.stderr)
        model = load_model(args.model_size, args.models_dir, backend=args.backend)
        ids = model.encoder.encode(prompt) if prompt else [model.encoder.eot_token]
        n_ctx = model.hparams.n_ctx
        if len(ids) + args.n_tokens > n_ctx:
            raise UsageError(
                f"the prompt is {len(ids)} tokens; with --n-tokens {args.n_tokens} "
                f"that exceeds the context of {n_ctx}"
            )
        tokens = model.stream(
            ids,
            args.n_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
        text = model.encoder.stream_decoder()
        out = sys.stdout
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

    return run_cli(body, prog)


if __name__ == "__main__":
    sys.exit(main())
