"""Continue a prompt with GPT-2, streaming the text as it is generated.

    python -m picogpt2.generate "Alan Turing theorized that"
    echo "prompt" | python -m picogpt2.generate --n-tokens 100 --top-k 40 --seed 1
    python -m picogpt2.generate "Once upon a time" --n-samples 4 --top-k 40 --stop "\\n\\n"
    python -m picogpt2.generate --interactive --top-k 40
    python -m picogpt2.generate -- "-a prompt that starts with a dash"

The model is downloaded and converted into the models folder on first use.
Greedy decoding unless --top-k, --top-p or --temperature is given; it stops
at <|endoftext|> unless --ignore-eot.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

if __package__ in (None, ""):  # run as a file: python picogpt2/generate.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2.cli.arguments import (  # noqa: E402
    Parser,
    add_model_arguments,
    add_sampling_arguments,
    model_reference,
    prog_name,
    settings_of,
)
from picogpt2.cli.running import run_cli  # noqa: E402
from picogpt2.encoder import load_encoder  # noqa: E402
from picogpt2.generation import (  # noqa: E402
    Continuation,
    Settings,
    check_generation,
    generate_many,
    prompt_ids,
    sample_text,
    stream_many,
)
from picogpt2.model import DTYPES, GPT2, load_model  # noqa: E402
from picogpt2.util.backend import get_backend  # noqa: E402
from picogpt2.util.errors import InputError  # noqa: E402
from picogpt2.util.status import error, set_quiet, status  # noqa: E402
from picogpt2.util.textio import (  # noqa: E402
    argument_text,
    decode_utf8,
    plural,
    read_stdin,
    strip_one_newline,
    text_stdout,
)
from picogpt2.weights.loading import peek_hparams  # noqa: E402
from picogpt2.weights.locations import ModelRef  # noqa: E402
from picogpt2.weights.releases import fetch_vocabulary, is_missing  # noqa: E402

SAMPLE_HEADER = "======== SAMPLE {} ========"  # as OpenAI's sampling scripts print


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("generate"),
        description="Continue a prompt with GPT-2, streaming the text to stdout "
        "(status goes to stderr). Greedy unless a sampling option is given; stops "
        "at <|endoftext|> unless --ignore-eot.",
    )
    parser.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="text to continue (UTF-8); read from stdin when omitted, without its final "
        "newline; empty starts from <|endoftext|>; put -- before a prompt that starts with -",
    )
    parser.add_argument(
        "--n-tokens",
        type=int,
        default=40,
        help="new tokens per sample, at most (default: 40); past the model's context (1024 "
        "for OpenAI's sizes) the window slides: the last half of it goes on",
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        default=1,
        help="samples of the prompt, decoded as one batch; sample j uses seed + j (default: 1)",
    )
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    add_stopping_arguments(parser)
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="load the model once, then continue each line read from stdin; Ctrl-C stops "
        "a generation, Ctrl-D or Ctrl-C at the prompt quits",
    )
    parser.add_argument("--quiet", action="store_true", help="no status lines on stderr")
    return parser


def add_stopping_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop a sample once its continuation contains TEXT, printing what comes "
        "before it (repeatable; \\n, \\t and \\\\ are read as newline, tab and backslash)",
    )
    parser.add_argument(
        "--ignore-eot",
        action="store_true",
        help="go on past <|endoftext|> for the full --n-tokens (as OpenAI's sampler did)",
    )


ESCAPES = {"\\": "\\", "n": "\n", "t": "\t"}


def unescape(text: str) -> str:
    """--stop's escapes: \\n newline, \\t tab, \\\\ a backslash."""
    return re.sub(r"\\([\\nt])", lambda m: ESCAPES[m.group(1)], text)


DTYPE = DTYPES[0]  # generate runs in float32


def validate(args: argparse.Namespace) -> tuple[Settings, ModelRef]:
    """Check the arguments before loading anything, with the functions the
    model checks them with; return the generation settings and the model."""
    stop = tuple(unescape(s) for s in args.stop)
    settings = settings_of(args, stop=stop, ignore_eot=args.ignore_eot)
    ref = model_reference(args)
    if args.interactive and args.prompt is not None:
        raise InputError("--interactive reads prompts from stdin, one per line: give none here")
    # The model's files (or, for a released size not downloaded yet, the
    # catalogue) know its sizes; the prompt is at least one token.
    hparams = peek_hparams(ref)
    backend = get_backend(args.backend)
    check_generation(hparams, 1, args.n_tokens, args.n_samples, np.dtype(DTYPE), backend)
    return settings, ref


def check_prompt_before_download(args: argparse.Namespace, ref: ModelRef, prompt: str) -> None:
    """For a released size not downloaded yet, fetch only its small files
    (the vocabulary) and check the prompt's length, before the large shard."""
    if not ref.released or not is_missing(ref.path):
        return
    fetch_vocabulary(ref.name, ref.path)
    n_prompt = len(prompt_ids(load_encoder(ref.path), prompt))
    check_generation(peek_hparams(ref), n_prompt, args.n_tokens, args.n_samples, np.dtype(DTYPE),
                     get_backend(args.backend))  # fmt: skip


def stream_one(model: GPT2, ids: list[int], prompt: str, args, settings: Settings, out) -> int:
    """One sample, printed as it is generated; returns its number of ids."""
    eot, text = model.encoder.eot_token, Continuation(model.encoder, settings.stop)
    tokens = stream_many(model, ids, args.n_tokens, 1, settings)  # checks the prompt first
    n = 0
    out.write(prompt)
    try:
        for _, token in tokens:
            n += 1
            if token != eot or settings.ignore_eot:  # a final <|endoftext|> is not printed
                out.write(text.feed([token]))
                out.flush()
        out.write(text.flush())
    finally:  # end the line even when stopped midway, before any error message
        out.write("\n")
        out.flush()
    return n


def print_samples(model: GPT2, ids: list[int], prompt: str, args, settings: Settings, out) -> int:
    """Several samples, decoded together, each printed under its header."""
    samples = generate_many(model, ids, args.n_tokens, args.n_samples, settings)
    for j, sample in enumerate(samples):
        out.write(SAMPLE_HEADER.format(j + 1) + "\n")
        out.write(prompt + sample_text(model.encoder, sample, settings) + "\n")
    out.flush()
    return sum(len(sample) for sample in samples)


def continue_prompt(model: GPT2, prompt: str, args, settings: Settings, out: TextIO) -> None:
    """Generate and print the continuation(s) of one prompt, then say how fast."""
    ids = prompt_ids(model.encoder, prompt)
    start = time.perf_counter()
    if args.n_samples == 1:
        n = stream_one(model, ids, prompt, args, settings, out)
    else:
        n = print_samples(model, ids, prompt, args, settings, out)
    seconds = time.perf_counter() - start
    samples = f"{plural(args.n_samples, 'sample')}, " if args.n_samples > 1 else ""
    rate = f" ({n / seconds:.1f} tokens/s)" if seconds > 0 and n else ""
    status(f"{samples}{plural(n, 'token')} in {seconds:.2f} s{rate}")


def interactive(model: GPT2, args, settings: Settings, out: TextIO, prog: str) -> int:
    """Continue each line of stdin until it ends (or Ctrl-C at the prompt).
    Ctrl-C during a generation, and a prompt that cannot be used, end that
    prompt only."""
    if sys.stdin is None:
        raise InputError("--interactive needs prompts on stdin")
    on_terminal = sys.stdin.isatty()
    while True:
        if on_terminal:
            status("prompt> ", end="")
        try:
            line = sys.stdin.buffer.readline()
        except KeyboardInterrupt:
            status("")
            return 0
        if not line:
            return 0
        try:
            prompt = strip_one_newline(decode_utf8(line, "the prompt"))
            continue_prompt(model, prompt, args, settings, out)
        except InputError as e:
            error(f"{prog}: error: {e}")
        except KeyboardInterrupt:
            error("interrupted")


def generate(args: argparse.Namespace, prog: str) -> int:
    set_quiet(args.quiet)
    settings, ref = validate(args)
    out = text_stdout()
    prompt = None
    if not args.interactive:
        prompt = argument_text(args.prompt, "the prompt") if args.prompt is not None else None
        if prompt is None:
            prompt = read_stdin("prompt")
        check_prompt_before_download(args, ref, prompt)
    status(f"loading {ref.describe()} ...")
    model = load_model(ref, backend=args.backend, dtype=DTYPE, encoder_dir=args.encoder_dir)
    if args.interactive:
        return interactive(model, args, settings, out, prog)
    continue_prompt(model, prompt, args, settings, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: generate(args, parser.prog), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
