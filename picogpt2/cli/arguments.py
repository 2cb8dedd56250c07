"""The arguments every command shares: its parser (whose errors are one
line, exit status 2), its name as the user ran it, the model and sampling
arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from picogpt2.generation import Settings
from picogpt2.hparams import SIZES
from picogpt2.util.backend import BACKEND_ENV, BACKENDS
from picogpt2.util.errors import InputError
from picogpt2.weights.locations import MODELS_DIR_ENV, ModelRef, default_models_dir, resolve


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# Each command's console script (pyproject.toml), for its usage lines.
SCRIPTS = {
    "generate": "picogpt2",
    "download": "picogpt2-download",
    "dump": "picogpt2-dump",
    "score": "picogpt2-score",
    "compare": "picogpt2-compare",
    "tokens": "picogpt2-tokens",
    "export": "picogpt2-export",
    "fixture": "picogpt2-fixture",
}


def prog_name(command: str) -> str:
    """How the user ran ``command``: its console script, or ``python -m``."""
    script = Path(sys.argv[0]).name.removesuffix(".exe") if sys.argv and sys.argv[0] else ""
    return script if script == SCRIPTS[command] else f"python -m picogpt2.{command}"


def folder_argument(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("is empty: name a folder, or leave the option out")
    return Path(text).expanduser()


def add_models_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--models-dir``, shared by every command that finds models by name;
    None (not given) means ``locations.default_models_dir()``."""
    parser.add_argument(
        "--models-dir",
        default=None,
        type=folder_argument,
        help=f"folder holding one sub-folder per model (default: ${MODELS_DIR_ENV}, else "
        f"{default_models_dir()})",
    )


def add_encoder_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder-dir",
        type=folder_argument,
        default=None,
        help="a folder with the vocabulary (encoder.json and vocab.bpe, or vocab.json and "
        "merges.txt), for a model without one beside it (an llm.c file)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-size, --models-dir, --encoder-dir and --backend."""
    parser.add_argument(
        "--model-size",
        default="124M",
        help=f"{', '.join(SIZES)} (downloaded on first use), or any model inside --models-dir "
        "or at a path: OpenAI's layout, a transformers folder, an llm.c .bin (default: 124M)",
    )
    add_models_dir_argument(parser)
    add_encoder_dir_argument(parser)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help=f"array backend (default: ${BACKEND_ENV} or numpy)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """--temperature, --top-k, --top-p, --repetition-penalty and --seed."""
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
        "--repetition-penalty",
        type=float,
        default=None,
        help="divide the positive logits (multiply the negative ones) of every token already "
        "in the prompt or the continuation by P > 0, greedy too (1 is off; as transformers)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the portable SplitMix64 sampler, for reproducible output",
    )


def settings_of(args: argparse.Namespace, **rules) -> Settings:
    """The generation settings the sampling arguments ask for, with the
    other ``rules`` (``stop``, ``ignore_eot``), checked."""
    settings = Settings(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        **rules,
    )
    settings.check()
    return settings


def model_reference(args: argparse.Namespace) -> ModelRef:
    """The model ``--model-size`` and ``--models-dir`` name, resolved once: a
    released size, or a model folder or file inside the models folder (or
    at a path). The arguments are left as they were given."""
    ref = resolve(args.model_size, args.models_dir)
    if not ref.released and not ref.path.exists():
        raise InputError(
            f"unknown model size {ref.name!r}: choose from {', '.join(SIZES)}, "
            f"or name a model folder or file inside {ref.models_dir} (or its path)"
        )
    return ref
