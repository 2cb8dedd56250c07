"""Scoring a corpus: one JSON object per line in (an id and a text), one
per document out, with exactly the figures ``score --json`` gives that text
alone; on this process, on local worker processes, or on a Dask cluster.

Nothing lost, nothing twice. The output is written record by record, each
line flushed as it is complete; a run started again with the same command
keeps every complete record, drops a half-written last line, and scores
only what is missing, whatever the number of workers before. Only this
process writes, and it writes each document once, so a chunk a Dask worker
computed twice (it died, and the scheduler ran the chunk elsewhere) is
still written once.

Workers load the model once each (its weights memory-mapped: workers on
one machine share one copy) and score documents in chunks of about
``CHUNK_CHARS`` characters; in a chunk, documents of one window run
together in one forward pass (``scoring.score_many``). The chunks are the
same whatever the number of workers, so the figures do not depend on the
workers or the order they finish in; each is what ``score`` gives the
document alone, up to float rounding.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import BinaryIO

from picogpt2.util.atomic import fcntl, lock_holder
from picogpt2.util.errors import InputError, PicoGPT2Error
from picogpt2.util.status import quiet
from picogpt2.util.textio import decode_utf8, parse_json
from picogpt2.weights.locations import ModelRef
from picogpt2.weights.params import weights_digest

CHUNK_CHARS = 16_000  # about 4,000 tokens of English
CHUNK_DOCS = 64


@dataclass(frozen=True)
class Spec:
    """What a worker needs to load the model and score: the same everywhere.
    ``model`` is resolved once, by the command (a relative path made
    absolute); ``weights`` is the digest of what the command loaded, which
    every worker's model must have too."""

    model: ModelRef
    weights: str
    encoder_dir: str | None = None
    dtype: str = "float32"
    stride: int | None = None


def key_of(doc_id: str | int | None, line: int | None) -> tuple:
    """What identifies a document's record: its id (with its type, as 1 and
    "1" are two ids), or its line when it has none."""
    return ("id", type(doc_id).__name__, doc_id) if doc_id is not None else ("line", line)


@dataclass(frozen=True)
class Document:
    """One input line: its id and text, or the error that stops it being
    scored (not JSON, no text, ...)."""

    line: int
    id: str | int | None
    text: str | None = None
    error: str | None = None

    @property
    def key(self) -> tuple:
        return key_of(self.id, self.line)

    def error_record(self) -> dict:
        where = {"id": self.id} if self.id is not None else {"line": self.line}
        return {**where, "error": self.error}


def parse_line(number: int, raw: bytes, text_key: str, id_key: str) -> Document | None:
    """A line of the corpus as a document (None for a blank line)."""
    if not raw.strip():
        return None
    try:
        value = parse_json(decode_utf8(raw, f"line {number}"))
    except (InputError, ValueError) as e:
        return Document(number, None, error=f"not a JSON object ({str(e)[:80]})")
    if not isinstance(value, dict):
        return Document(number, None, error="not a JSON object")
    doc_id = value.get(id_key)
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        what = "no" if doc_id is None else f"{type(doc_id).__name__} as"
        return Document(number, None, error=f'{what} "{id_key}": a string or an integer')
    text = value.get(text_key)
    if not isinstance(text, str):
        return Document(number, doc_id, error=f'no "{text_key}": a string')
    return Document(number, doc_id, text)


def read_corpus(path: Path, text_key: str, id_key: str) -> list[Document]:
    """Every document of ``path``; a repeated id is bad input, reported
    before any work."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    docs = [d for n, raw in enumerate(lines, 1) if (d := parse_line(n, raw, text_key, id_key))]
    seen: dict[tuple, int] = {}
    for doc in docs:
        if doc.id is not None and doc.key in seen:
            raise InputError(
                f"{path}: the id {doc.id!r} is on lines {seen[doc.key]} and {doc.line}: ids "
                "must be unique, so that every document is written exactly once"
            )
        seen[doc.key] = doc.line
    return docs


def record_key(record: dict) -> tuple | None:
    """The key of the document a record written by ``Writer`` is of."""
    if "id" in record and isinstance(record["id"], str | int):
        return key_of(record["id"], None)
    return key_of(None, record["line"]) if isinstance(record.get("line"), int) else None


HEADER_KEY, HEADER = "picogpt2", "score --corpus records"  # the first line's mark
RECORDS_FORMAT = 1


def records_header(settings: dict[str, object]) -> dict[str, object]:
    """The first line of a records file: what it is, and the settings that
    produce its figures (a run goes on in a file only with the same)."""
    return {HEADER_KEY: HEADER, "format": RECORDS_FORMAT, **settings}


@contextmanager
def records_file(out: Path, header: dict[str, object]) -> Iterator[tuple[BinaryIO, set[tuple]]]:
    """``out`` open to append records for this run alone, and the documents
    it already holds, by key. A new (or empty) file gets ``header`` as its
    first line. An existing one is trusted only when picogpt2 wrote it, for
    these settings: its first line must be ``header`` but for the model's
    name (otherwise exit 2, naming what differs, and the file untouched).
    A last line that is not complete (a run killed while writing it) is cut
    off. The file is locked while the run writes: a second run at once is
    refused, naming the process that holds it."""
    try:
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        fd = os.open(out, os.O_RDWR)
    with os.fdopen(fd, "r+b") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = lock_holder(out)
                who = f"process {holder}" if holder else "another process"
                raise PicoGPT2Error(
                    f"--out {out} is being written by another run ({who}): wait for it to end, "
                    "or name another --out"
                ) from None
        data = f.read()
        if data:
            done = _records_so_far(out, data, header)
            f.truncate(data.rfind(b"\n") + 1)
        else:
            f.write(json.dumps(header).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
            done = set()
        f.seek(0, os.SEEK_END)
        yield f, done


def _header_of(out: Path, data: bytes) -> dict:
    """The first line of ``data`` (the start of the file ``out``, not empty),
    when it shows that picogpt2 wrote the file; bad input otherwise."""
    first, newline, _ = data.partition(b"\n")
    try:
        found = parse_json(first) if newline else None
    except ValueError:
        found = None
    if not isinstance(found, dict) or found.get(HEADER_KEY) != HEADER:
        raise InputError(
            f"--out {out} is not a records file picogpt2 wrote (its first line is not one), so "
            "it is left as it is: name a new file"
        )
    return found


def check_records_file(out: Path) -> None:
    """``out`` is new, empty, or a records file picogpt2 wrote (its first
    line): what a command checks before it loads the model."""
    if out.is_file() and out.stat().st_size:
        with open(out, "rb") as f:
            _header_of(out, f.read(1 << 16))


def _records_so_far(out: Path, data: bytes, header: dict[str, object]) -> set[tuple]:
    """The keys of the records in ``data``, the file ``out`` holds, once its
    first line shows it is picogpt2's, of the settings in ``header``."""
    found = _header_of(out, data)
    _, _, rest = data.partition(b"\n")
    differ = [f"{k} {found.get(k)!r} (this run: {v!r})" for k, v in header.items()
              if k != "model" and found.get(k) != v]  # fmt: skip
    if differ:
        raise InputError(
            f"--out {out} holds records of other settings: {', '.join(differ)}; run with those, "
            "or name another --out"
        )
    done = set()
    complete = rest[: rest.rfind(b"\n") + 1]
    for number, raw in enumerate(complete.split(b"\n")[:-1], 2):
        try:
            key = record_key(parse_json(raw))
        except ValueError:
            key = None
        if key is None:
            raise InputError(f"{out}: line {number} is not a record picogpt2 wrote: name another "
                             "--out, or remove it")  # fmt: skip
        done.add(key)
    return done


def chunks(docs: Iterable[Document]) -> Iterator[list[Document]]:
    """Documents in groups of about ``CHUNK_CHARS`` characters."""
    chunk: list[Document] = []
    size = 0
    for doc in docs:
        if chunk and (size + len(doc.text) > CHUNK_CHARS or len(chunk) == CHUNK_DOCS):
            yield chunk
            chunk, size = [], 0
        chunk.append(doc)
        size += len(doc.text)
    if chunk:
        yield chunk


_models: dict[Spec, object] = {}  # per worker process: the model, loaded once


def use_loaded(spec: Spec, model: object) -> None:
    """Score ``spec``'s chunks in this process with ``model``, loaded already."""
    _models[spec] = model


def score_chunk(spec: Spec, docs: list[Document]) -> list[dict]:
    """Each document's record, as ``score --json`` gives its text; a
    document that cannot be scored gets an error record. Runs in workers."""
    from picogpt2.model import load_model  # in the worker, once per process
    from picogpt2.scoring.perplexity import score_many

    if spec not in _models:
        model = load_model(spec.model, dtype=spec.dtype, encoder_dir=spec.encoder_dir,
                           show_progress=False)  # fmt: skip
        if weights_digest(model.params, model.backend.to_numpy) != spec.weights:
            raise PicoGPT2Error(
                f"the worker on {socket.gethostname()} found other weights at {spec.model.path} "
                "than the command loaded: give every worker the same model there"
            )
        _models[spec] = model
    with quiet():  # a long document's own progress line: the corpus has one
        results = score_many(_models[spec], [doc.text for doc in docs], spec.stride)
    return [
        {"id": doc.id, "error": str(result)}
        if isinstance(result, InputError)
        else {"id": doc.id, **result}
        for doc, result in zip(docs, results, strict=True)
    ]


class Writer:
    """Appends records to the output, each flushed as it is complete, each
    document once; counts what it wrote."""

    def __init__(self, out: BinaryIO, done: set[tuple]) -> None:
        self.out, self.done = out, done
        self.documents = self.tokens = self.errors = 0

    def write(self, record: dict) -> None:
        key = record_key(record)
        if key in self.done:  # computed twice (a worker died): written once
            return
        self.out.write(json.dumps(record, allow_nan=False).encode() + b"\n")
        self.out.flush()
        self.done.add(key)
        self.documents += 1
        self.tokens += record.get("scored_tokens", 0)
        self.errors += "error" in record


Submit = Callable[[Spec, list[Document]], Future]


def local_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` processes on this machine, sharing the cores: each one's
    BLAS uses its share (set before they start, as BLAS reads it then)."""
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = threads
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))


def run(
    docs: list[Document],
    spec: Spec,
    writer: Writer,
    submit: Submit | None,
    finished: Callable[[Iterable[Future]], Iterator[Future]] = as_completed,
    progress: Callable[[Writer], None] = lambda w: None,
) -> None:
    """Score every document not yet written: error documents at once, the
    others in chunks, on ``submit`` (None: in this process)."""
    todo = [d for d in docs if d.key not in writer.done]
    for doc in todo:
        if doc.error is not None:
            writer.write(doc.error_record())
    work = list(chunks(d for d in todo if d.error is None))
    if submit is None:
        results = (score_chunk(spec, chunk) for chunk in work)
    else:
        results = (_result(f) for f in finished([submit(spec, chunk) for chunk in work]))
    for records in results:
        for record in records:
            writer.write(record)
        progress(writer)


def _result(future: Future) -> list[dict]:
    try:
        return future.result()
    except PicoGPT2Error:
        raise
    except Exception as e:  # a worker lost for good, or the cluster gone
        raise PicoGPT2Error(f"a worker failed: {type(e).__name__}: {e}") from None
