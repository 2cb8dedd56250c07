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

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: python picogpt2/score.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2.cli import UsageError, add_model_arguments, check_model_argument, run_cli  # noqa: E402
from picogpt2.model import DTYPES, GPT2, load_model  # noqa: E402


def token_nlls(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64: [n, n_vocab], [n] -> [n]"""
    z = logits.astype(np.float64)
    top = z.max(axis=-1)
    log_norm = top + np.log(np.exp(z - top[:, None]).sum(axis=-1))
    return log_norm - z[np.arange(len(targets)), targets]


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
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if not data.strip():
        raise UsageError(f"{path} is empty")
    if b"\x00" in data:
        raise UsageError(f"{path} looks binary (it contains NUL bytes), not UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text (byte {e.start})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m picogpt2.score",
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
        help="print one JSON object: tokens, nll, perplexity, bits_per_byte",
    )
    add_model_arguments(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    args = parser.parse_args(argv)

    def body() -> int:
        check_model_argument(args)
        text = read_text(args.file)
        if args.stride is not None and args.stride < 1:
            raise UsageError(f"--stride must be >= 1, got {args.stride}")
        model = load_model(args.model_size, args.models_dir, backend=args.backend, dtype=args.dtype)
        stride = args.stride or model.hparams.n_ctx // 2
        if stride > model.hparams.n_ctx:
            raise UsageError(f"--stride must be <= n_ctx ({model.hparams.n_ctx})")
        ids = model.encoder.encode(text)
        if len(ids) < 2:
            raise UsageError(f"{args.file} has {len(ids)} token; scoring needs at least 2")

        def progress(done: int, total: int) -> None:
            if total > model.hparams.n_ctx:
                print(f"\rscored {done}/{total} tokens", end="", file=sys.stderr, flush=True)

        nll = sliding_window_nll(model, ids, stride, progress)
        if len(ids) - 1 > model.hparams.n_ctx:
            print(file=sys.stderr)
        n_bytes = len(text.encode("utf-8"))
        result = {
            "tokens": len(ids),
            "nll": float(nll.mean()),
            "perplexity": math.exp(nll.mean()),
            "bits_per_byte": float(nll.sum() / math.log(2) / n_bytes),
            "scored_tokens": len(nll),
            "bytes": n_bytes,
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"tokens          {result['tokens']} ({result['scored_tokens']} scored)")
            print(f"nll             {result['nll']:.6f} nats/token")
            print(f"perplexity      {result['perplexity']:.4f}")
            print(f"bits per byte   {result['bits_per_byte']:.6f}")
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
