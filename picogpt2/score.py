"""Score a text file: token count, mean negative log-likelihood, perplexity
and bits per byte under GPT-2.

    python -m picogpt2.score book.txt [--stride 512] [--json]

Texts longer than n_ctx are scored with the sliding window of transformers'
perplexity guide, so the numbers compare with published ones: windows of
n_ctx tokens start every ``stride`` tokens; each token is scored once, in the
first window that reaches it, with the context that window gives it. The
first token of the text has no context and is not scored (nor, with a
stride of n_ctx, the first token of each window).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: python picogpt2/score.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2.cli import (  # noqa: E402
    Parser,
    add_model_arguments,
    check_model_argument,
    model_options,
    prog_name,
    run_cli,
)
from picogpt2.errors import InputError  # noqa: E402
from picogpt2.gpt2 import log_softmax  # noqa: E402
from picogpt2.model import DTYPES, GPT2, load_model  # noqa: E402
from picogpt2.status import Progress  # noqa: E402
from picogpt2.textio import decode_utf8  # noqa: E402


def token_nlls(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64: [n, n_vocab], [n] -> [n]"""
    return -log_softmax(logits)[np.arange(len(targets)), targets]


def sliding_window_nll(
    model: GPT2,
    ids: list[int],
    stride: int,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """NLL of the tokens each window scores, in order: every token after the
    first, once, [len(ids) - 1], when stride < n_ctx. With stride == n_ctx
    the windows do not overlap, and (as in transformers' guide, whose labels
    shift inside each window) the first token of each later window has no
    context there and is not scored."""
    n_ctx, n = model.hparams.n_ctx, len(ids)
    nlls, scored_end = [], 1  # positions before scored_end are done (0 never is)
    for begin in range(0, n, stride):
        end = min(begin + n_ctx, n)
        window = ids[begin:end]
        # Row j predicts window[j + 1], i.e. position begin + j + 1.
        first_row = max(scored_end - begin - 1, 0)
        logits = model.logits(window)[first_row : len(window) - 1]
        nlls.append(token_nlls(logits, np.asarray(window[first_row + 1 :])))
        scored_end = end
        if progress:
            progress(end - 1, n - 1)
        if end == n:
            break
    return np.concatenate(nlls) if nlls else np.zeros(0)


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if not data.strip():
        raise InputError(f"{path} is empty")
    if b"\x00" in data:
        raise InputError(f"{path} looks binary (it contains NUL bytes), not UTF-8 text")
    return decode_utf8(data, str(path))


def score(model: GPT2, text: str, stride: int | None) -> dict[str, float | int]:
    """tokens, nll (nats per token), perplexity, bits_per_byte, scored_tokens
    and bytes of ``text``, scored with the sliding window."""
    n_ctx = model.hparams.n_ctx
    stride = stride or n_ctx // 2
    if stride > n_ctx:
        raise InputError(f"--stride must be <= n_ctx ({n_ctx})")
    ids = model.encoder.encode(text)
    if len(ids) < 2:
        raise InputError(f"the text has {len(ids)} token; scoring needs at least 2")
    progress = Progress("scored", len(ids) - 1, unit="tokens", scale=1)
    last = [0]

    def advance(done: int, total: int) -> None:
        progress.update(done - last[0])
        last[0] = done

    nll = sliding_window_nll(model, ids, stride, advance if len(ids) - 1 > n_ctx else None)
    if len(ids) - 1 > n_ctx:
        progress.finish()
    n_bytes = len(text.encode("utf-8"))
    return {
        "tokens": len(ids),
        "nll": float(nll.mean()),
        "perplexity": math.exp(nll.mean()),
        "bits_per_byte": float(nll.sum() / math.log(2) / n_bytes),
        "scored_tokens": len(nll),
        "bytes": n_bytes,
    }


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
        text = read_text(args.file)
        if args.stride is not None and args.stride < 1:
            raise InputError(f"--stride must be >= 1, got {args.stride}")
        model = load_model(**model_options(args), dtype=args.dtype)
        print_result(score(model, text, args.stride), args.json)
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
