"""Score a text file, or a whole corpus: token count, mean negative
log-likelihood, perplexity and bits per byte under GPT-2.

    python -m picogpt2.score book.txt [--stride 512] [--json]
    python -m picogpt2.score --corpus in.jsonl --out out.jsonl [--workers 2]
    python -m picogpt2.score --corpus in.jsonl --out out.jsonl --scheduler tcp://host:8786

Texts longer than n_ctx are scored with the sliding window of transformers'
perplexity guide (``scoring/perplexity.py`` states the rule), so the numbers compare
with published ones. A corpus is one JSON object per line, an id and a
text; ``scoring/corpus.py`` says how it is scored and resumed.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from picogpt2.cli.arguments import (
    Parser,
    add_model_arguments,
    model_reference,
    prog_name,
)
from picogpt2.cli.running import run_cli
from picogpt2.model import DTYPES, load_model
from picogpt2.scoring.corpus import (
    Spec,
    Submit,
    Writer,
    check_records_file,
    local_pool,
    read_corpus,
    records_file,
    records_header,
    run,
    score_chunk,
    use_loaded,
)
from picogpt2.scoring.perplexity import check_stride, score
from picogpt2.util.errors import InputError, PicoGPT2Error
from picogpt2.util.status import Progress, status
from picogpt2.util.textio import plural, read_text_file
from picogpt2.weights.locations import ModelRef
from picogpt2.weights.params import weights_digest

RETRIES = 3  # a chunk's reruns on Dask after an error (a lost worker's are the scheduler's)


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
        "per byte of a UTF-8 text file under GPT-2, with transformers' sliding window; or of "
        "every document of a JSON-lines corpus, on local workers or a Dask cluster.",
    )
    parser.add_argument("file", type=Path, nargs="?", default=None, help="UTF-8 text file")
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
    corpus = parser.add_argument_group("a corpus")
    corpus.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="IN.jsonl",
        help="one JSON object per line, with an id and a text: score each document",
    )
    corpus.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="OUT.jsonl",
        help="one record per document, as --json gives it, with its id; a run started again "
        "goes on where it stopped",
    )
    corpus.add_argument("--text-key", default="text", help='the text\'s key (default: "text")')
    corpus.add_argument("--id-key", default="id", help='the id\'s key (default: "id")')
    corpus.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes on this machine, each loading the model once (default: 1)",
    )
    corpus.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="a Dask cluster's scheduler to run on (pip install 'picogpt2[dask]')",
    )
    return parser


def score_file(args: argparse.Namespace, ref: ModelRef) -> int:
    text = read_text_file(args.file)
    if not text.strip():
        raise InputError(f"{args.file} is empty")
    if "\x00" in text:
        raise InputError(f"{args.file} looks binary (it contains NUL bytes), not text")
    model = load_model(ref, backend=args.backend, dtype=args.dtype, encoder_dir=args.encoder_dir)
    print_result(score(model, text, args.stride), args.json)
    return 0


def check_out(out: Path, corpus: Path) -> None:
    """``out`` can take the records: a regular file (new, or the records so
    far that picogpt2 wrote) in a folder that exists, and not the corpus.
    Checked before the model is loaded, so that no time is lost."""
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder: name the file the records go to")
    if out.exists() and not out.is_file():
        raise InputError(f"--out {out} is not a regular file (a pipe, a device): name a file")
    if out.exists() and corpus.exists() and out.samefile(corpus):
        raise InputError(f"--out {out} is the corpus itself: name another file")
    check_records_file(out)


def check_corpus_arguments(args: argparse.Namespace) -> None:
    if args.out is None:
        raise InputError("--corpus needs --out OUT.jsonl, where the records go")
    if args.file is not None or args.json:
        raise InputError("give a FILE (with --json) or --corpus, not both")
    if args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if args.scheduler is not None and args.workers != 1:
        raise InputError("--workers is for this machine; a cluster's workers are its own")
    if args.scheduler is not None:
        check_scheduler_address(args.scheduler)
    check_out(args.out, args.corpus)


@dataclass
class Workers:
    """Where the chunks run: ``submit`` one (None: in this process), the
    futures as they finish, and letting go of the workers at the end."""

    submit: Submit | None = None
    finished: Callable = as_completed
    close: Callable[[], object] = lambda: None


SCHEDULER_SCHEMES = ("tcp", "tls")  # the addresses dask scheduler listens on
ANSWER_S = 10  # a Dask scheduler speaks first, at once: this long, and it is not one


def check_scheduler_address(address: str) -> None:
    """``address`` names a Dask scheduler (``tcp://HOST:PORT``, as ``dask
    scheduler`` prints it): bad input otherwise, before anything else."""
    if not address:
        raise InputError("--scheduler is empty: give tcp://HOST:PORT, as dask scheduler prints it")
    parts = urlsplit(address)
    if parts.scheme in ("http", "https"):
        raise InputError(
            f"--scheduler {address!r}: the dashboard's http:// address is not the scheduler's: "
            "give tcp://HOST:PORT, as dask scheduler prints it"
        )
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in SCHEDULER_SCHEMES or not parts.hostname:
        raise InputError(
            f"--scheduler {address!r} is not a scheduler's address: give tcp://HOST:PORT, as "
            "dask scheduler prints it"
        )
    if port is None:
        raise InputError(f"--scheduler {address!r} has no port: give tcp://HOST:PORT")


def probe_scheduler(address: str) -> None:
    """Something at ``address`` answers as a Dask scheduler: it sends its
    handshake as soon as a connection opens. Dask's own client waits for
    ever on a port that accepts and never answers (a dashboard's, say), so
    this is asked first, with a deadline of its own."""
    parts = urlsplit(address)
    if parts.scheme != "tcp":  # TLS speaks only after its own handshake
        return
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=ANSWER_S) as s:
            s.settimeout(ANSWER_S)
            first = s.recv(4096)
    except TimeoutError:
        first = b""
    except OSError as e:
        raise PicoGPT2Error(f"cannot reach the Dask scheduler at {address}: {e}") from None
    if b"pickle-protocol" not in first:
        raise PicoGPT2Error(
            f"{address} does not answer as a Dask scheduler (within {ANSWER_S} s): is it the "
            "address dask scheduler printed, not its dashboard's?"
        )


def cluster(address: str) -> Workers:
    """The Dask cluster at ``address``."""
    probe_scheduler(address)
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:
        raise PicoGPT2Error(
            "--scheduler needs Dask: pip install 'picogpt2[dask]' (dask and distributed)"
        ) from None
    try:
        client = Client(address, timeout=30)
    except (OSError, TimeoutError) as e:
        raise PicoGPT2Error(f"cannot reach the Dask scheduler at {address}: {e}") from None

    def submit(spec: Spec, chunk: list) -> Future:
        return client.submit(score_chunk, spec, chunk, pure=False, retries=RETRIES)

    return Workers(submit, dask_completed, client.close)


def workers(args: argparse.Namespace) -> Workers:
    if args.scheduler is not None:
        return cluster(args.scheduler)
    if args.workers > 1:
        pool = local_pool(args.workers)
        return Workers(partial(pool.submit, score_chunk), close=partial(pool.shutdown,
                       cancel_futures=True))  # fmt: skip
    return Workers()


def score_corpus(args: argparse.Namespace, ref: ModelRef) -> int:
    check_corpus_arguments(args)
    docs = read_corpus(args.corpus, args.text_key, args.id_key)  # before any work
    # The model is loaded here once (fetched and converted, if it must be):
    # what every worker loads is checked to be these weights.
    model = load_model(ref, backend=args.backend, dtype=args.dtype, encoder_dir=args.encoder_dir)
    stride = check_stride(args.stride, model.hparams.n_ctx)
    weights = weights_digest(model.params, model.backend.to_numpy)
    encoder_dir = args.encoder_dir and str(Path(args.encoder_dir).absolute())
    spec = Spec(replace(ref, path=ref.path.absolute()), weights, encoder_dir, args.dtype, stride)
    use_loaded(spec, model)  # scoring in this process: the model it has
    settings = {"model": ref.name, "weights": weights, "dtype": args.dtype, "stride": stride,
                "text_key": args.text_key, "id_key": args.id_key}  # fmt: skip
    where = workers(args)  # reached before the records file is made
    try:
        with records_file(args.out, records_header(settings)) as (out, done):
            return score_documents(args, docs, spec, where, out, done)
    finally:
        where.close()


def score_documents(
    args: argparse.Namespace, docs: list, spec: Spec, where: Workers, out, done: set
) -> int:
    """Score the documents ``out`` does not hold yet, ``where`` says."""
    before = len(done & {d.key for d in docs})
    todo = len(docs) - before
    progress = Progress("scored", todo, unit="documents", scale=1)
    start = time.perf_counter()

    def advance(writer: Writer) -> None:
        rate = writer.tokens / max(time.perf_counter() - start, 1e-9)
        progress.label = f"scored ({writer.tokens:,} tokens, {rate:,.0f} tokens/s)"
        progress.update(writer.documents - progress.done)

    writer = Writer(out, done)
    run(docs, spec, writer, where.submit, where.finished, advance)
    seconds = time.perf_counter() - start
    status(
        f"scored {plural(writer.documents, 'document')} ({writer.tokens:,} tokens) in "
        f"{seconds:.1f} s ({writer.tokens / max(seconds, 1e-9):,.0f} tokens/s); "
        f"{plural(writer.errors, 'error')}; {before:,} already in {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        ref = model_reference(args)
        check_stride(args.stride, None)  # the context, once the model is open
        if args.corpus is not None:
            return score_corpus(args, ref)
        if args.file is None:
            raise InputError("give a FILE to score, or --corpus IN.jsonl --out OUT.jsonl")
        return score_file(args, ref)

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
