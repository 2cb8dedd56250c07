"""What every command shares: the model arguments and the rule that a
failure is one line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from picogpt2.backend import BACKEND_ENV, BACKENDS, BackendError
from picogpt2.checkpoint import CheckpointError
from picogpt2.download import SIZES, DownloadError, add_models_dir_argument
from picogpt2.encoder import EncoderFileError, UnknownTokenError
from picogpt2.weights import WeightsError


class UsageError(ValueError):
    """Bad command-line input: exit status 2."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-size, --models-dir and --backend."""
    parser.add_argument(
        "--model-size",
        default="124M",
        help=f"{', '.join(SIZES)} (downloaded on first use), or the name of any model "
        "folder inside --models-dir (default: 124M)",
    )
    add_models_dir_argument(parser)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help=f"array backend (default: ${BACKEND_ENV} or numpy)",
    )


def check_model_argument(args: argparse.Namespace) -> None:
    if args.model_size not in SIZES and not (args.models_dir / args.model_size).is_dir():
        raise UsageError(
            f"unknown model size {args.model_size!r}: choose from {', '.join(SIZES)}, "
            f"or name a model folder inside {args.models_dir}"
        )


def run_cli(body: Callable[[], int], prog: str) -> int:
    """Run a command's body; expected failures become one line on stderr."""
    try:
        return body()
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0
    except (
        BackendError,
        CheckpointError,
        DownloadError,
        EncoderFileError,
        UnknownTokenError,
        WeightsError,
        OSError,
    ) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
