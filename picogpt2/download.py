"""Download OpenAI's released GPT-2 checkpoints, verify them, convert them.

    python -m picogpt2.download 124M [--models-dir DIR] [--base-url URL] [--keep-original]
    python -m picogpt2.download 124M --verify

Files come from OpenAI's public bucket (or a mirror with the same layout,
``{base}/{SIZE}/{FILE}``) into ``{models_dir}/{SIZE}/`` (``locations.py``
says where models live by default). A transfer goes to ``FILE.part`` and is
renamed only when complete; an interrupted one resumes with an HTTP Range
request. Every tensor's CRC-32C is checked during conversion, and a damaged
file is fetched again. One process at a time fills a folder; a second one
waits for it and then finds the work done.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError  # requests' own dependency

from picogpt2 import locations
from picogpt2.atomic import LOCK_FILE, atomic_write, folder_lock
from picogpt2.checkpoint import CheckpointError, find_checkpoint_prefix, read_tf_index
from picogpt2.cli import Parser, add_models_dir_argument, prog_name, run_cli
from picogpt2.encoder import has_vocabulary
from picogpt2.errors import InputError, PicoGPT2Error
from picogpt2.hparams import HPARAMS_FILE, SIZES
from picogpt2.status import Progress, status
from picogpt2.weights import WEIGHTS_FILE, convert, is_converted, verify_weights

SMALL_FILES = [HPARAMS_FILE, "encoder.json", "vocab.bpe", "checkpoint", "model.ckpt.index"]
SHARD_FILE = "model.ckpt.data-00000-of-00001"
PREFIX = "model.ckpt"  # the checkpoint prefix of every released size
MARKER_FILE = "download.json"  # written by the downloader: the folder is its to finish
CHUNK = 1 << 16  # bytes per read; a cut transfer loses at most this much
TIMEOUT_S = 30  # to connect, and at most between two reads of a transfer
RETRIES = 5
BACKOFF_S = 1.0  # the wait before the first retry, doubled for each next one
# Failures worth a retry: the transfer, not the server's address, went wrong.
RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DownloadError(PicoGPT2Error, RuntimeError):
    """A download failed for a reason worth one line to the user."""


def looks_like_error_page(first_bytes: bytes, content_type: str) -> bool:
    """HTML or XML where a model file belongs: a storage service's error
    page served with status 200 by a proxy or a misconfigured mirror."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("text/html", "application/xml", "text/xml", "application/xhtml+xml"):
        return True
    head = first_bytes.lstrip()[:64].lower()
    return head.startswith((b"<?xml", b"<!doctype", b"<html", b"<error"))


def check_disk_space(folder: Path, needed: int, name: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(
            f"not enough disk space in {folder} for {name}: "
            f"need {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
        )


def unreachable(error: requests.RequestException, url: str) -> DownloadError | None:
    """The error to give at once when ``url``'s server cannot be reached at
    all (its name does not resolve, the connection is refused, no route):
    waiting and trying again would not help, as curl and wget also assume."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    if isinstance(error, requests.ConnectTimeout) or not isinstance(reason, NewConnectionError):
        return None
    match = re.search(r"\[Errno -?\d+\] ([^)'\"]+)", str(reason))
    why = match.group(1).strip() if match else "connection failed"
    return DownloadError(
        f"cannot reach {urlsplit(url).netloc} ({why}) for {url}; check the network, "
        f"or name a mirror with --base-url or ${locations.BASE_URL_ENV}"
    )


def fetch(
    url: str,
    dest: Path,
    *,
    extra_space: int = 0,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    show_progress: bool = True,
    session: requests.Session | None = None,
) -> None:
    """Stream ``url`` to ``dest``, resuming ``dest.part`` and retrying with
    exponential backoff on interrupted transfers and 5xx replies.
    ``extra_space`` is disk needed beyond the file itself (the conversion's
    copy)."""
    http = session or requests.Session()
    part = dest.with_name(dest.name + ".part")
    for attempt in itertools.count(1):
        try:
            transfer(http, url, part, extra_space, show_progress)
            os.replace(part, dest)
            return
        except RETRYABLE as e:
            at_once = unreachable(e, url)
            if at_once:
                raise at_once from None
            if attempt > retries:
                raise DownloadError(f"giving up on {url} after {retries} retries: {e}") from None
            if show_progress:
                status(f"{dest.name}: {e}; retrying ({attempt}/{retries})")
            time.sleep(backoff * 2 ** (attempt - 1))


def transfer(
    http: requests.Session, url: str, part: Path, extra_space: int, show_progress: bool
) -> None:
    """One request: append the rest of ``url`` to ``part`` (all of it when
    ``part`` is empty or the server ignores the Range asked for)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as reply:
        if reply.status_code == 416:  # our partial file is not a prefix of theirs
            part.unlink()
            raise requests.ConnectionError("the server cannot resume this file; starting over")
        if reply.status_code >= 500:
            raise requests.ConnectionError(f"HTTP {reply.status_code} from {url}")
        if reply.status_code not in (200, 206):
            raise DownloadError(f"HTTP {reply.status_code} {reply.reason} for {url}")
        if reply.status_code == 200:
            have = 0  # the whole file, from the start
        length = reply.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if total is not None:
            check_disk_space(part.parent, total - have + extra_space, part.name[: -len(".part")])
        chunks = reply.iter_content(CHUNK)
        first = next(chunks, b"")
        if have == 0 and looks_like_error_page(first, reply.headers.get("Content-Type", "")):
            raise DownloadError(f"{url} returned an HTML/XML page, not a model file")
        progress = Progress(part.name[: -len(".part")], total, have) if show_progress else None
        write_body(part, have, chain([first], chunks), progress)
    size = part.stat().st_size
    if total is not None and size != total:
        raise requests.ConnectionError(f"got {size} of {total} bytes")


def write_body(part: Path, have: int, chunks, progress: Progress | None) -> None:
    """Append ``chunks`` to ``part`` (write it afresh when ``have`` is 0). A
    network error reading them propagates, to be retried; a disk error names
    the file (a full disk's own message does not)."""
    try:
        with open(part, "ab" if have else "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                if progress:
                    progress.update(len(chunk))
    except requests.RequestException:  # OSErrors too, but the network's
        raise
    except OSError as e:
        raise DownloadError(f"{part}: cannot write: {e.strerror}") from None
    if progress:
        progress.finish()


def download_model(
    model_size: str,
    models_dir: str | Path | None = None,
    *,
    base_url: str | None = None,
    keep_original: bool = False,
    show_progress: bool = True,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    small_files_only: bool = False,
) -> Path:
    """Download, verify and convert one released size into
    ``models_dir/model_size`` (``models_dir`` None: the default, see
    ``locations``); a no-op when that is already done. A first run that
    fails removes the folders it created, unless they hold a partial
    transfer to resume. ``small_files_only`` stops after the vocabulary and
    hyperparameters (a few MB), for checks to make before the large shard."""
    if model_size not in SIZES:
        raise InputError(f"unknown model size {model_size!r}; choose from {', '.join(SIZES)}")
    base = locations.base_url(base_url)
    model_dir = locations.models_dir(models_dir) / model_size
    created = folders_to_create(model_dir)
    try:
        with folder_lock(model_dir, f"waiting for another process downloading into {model_dir}"):
            http = requests.Session()

            def get(name: str, extra_space: int = 0) -> None:
                fetch(f"{base}/{model_size}/{name}", model_dir / name, extra_space=extra_space,
                      retries=retries, backoff=backoff, show_progress=show_progress,
                      session=http)  # fmt: skip

            if not is_converted(model_dir):
                write_marker(model_dir, keep_original)
                if show_progress and not (model_dir / SHARD_FILE).exists():
                    what = "the vocabulary of GPT-2" if small_files_only else "GPT-2"
                    status(f"downloading {what} {model_size} from {base} into {model_dir}")
                fetch_small_files(model_dir, model_size, get)
            if not small_files_only:
                convert_fetching_again(model_dir, get, keep_original, show_progress)
            return model_dir
    except BaseException:
        remove_if_unused(created)
        raise


def folders_to_create(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_if_unused(folders: list[Path]) -> None:
    """Remove folders this run created that hold nothing but its own
    bookkeeping (the lock, the marker), deepest first."""
    for folder in folders:
        try:
            if {p.name for p in folder.iterdir()} <= {LOCK_FILE, MARKER_FILE}:
                for name in (MARKER_FILE, LOCK_FILE):
                    (folder / name).unlink(missing_ok=True)
                folder.rmdir()
        except OSError:
            return


def write_marker(model_dir: Path, keep_original: bool) -> None:
    """Mark the folder as the downloader's, so that a later load finishes an
    interrupted download or conversion the same way (and removes the shard
    unless ``keep_original``)."""
    with atomic_write(model_dir / MARKER_FILE) as f:
        f.write(json.dumps({"keep_original": keep_original}).encode() + b"\n")


def read_marker(model_dir: Path) -> dict | None:
    """The downloader's marker of a folder, or None when it has none."""
    try:
        marker = json.loads((model_dir / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def fetch_vocabulary(model_size: str, models_dir: str | Path | None = None) -> Path:
    """The folder of ``model_size`` in the models folder, its vocabulary
    fetched first (the small files only) for a released size without it."""
    folder = locations.models_dir(models_dir) / model_size
    if model_size in SIZES and not has_vocabulary(folder):
        download_model(model_size, folder.parent, small_files_only=True)
    return folder


def fetch_small_files(model_dir: Path, model_size: str, get: Callable[[str], None]) -> None:
    for name in SMALL_FILES:
        if not (model_dir / name).exists():
            get(name)
    check_small_files(model_dir, model_size)


def check_small_files(model_dir: Path, model_size: str) -> None:
    """The small files are GPT-2 ``model_size``'s, caught before the large
    download. A file that is not (a mirror serving another model, an error
    page) is removed, so the next run fetches it again."""
    for name in (HPARAMS_FILE, "encoder.json"):
        path = model_dir / name
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            path.unlink()
            raise DownloadError(f"{path}: not valid JSON; removed, run again to refetch") from None
        expected = SIZES[model_size].as_dict()
        if name == HPARAMS_FILE and value != expected:
            path.unlink()
            raise DownloadError(
                f"{path}: {value} is not GPT-2 {model_size} ({expected}); removed it, so the "
                "next run fetches it again (check --base-url)"
            )
    state = model_dir / "checkpoint"
    try:
        prefix = find_checkpoint_prefix(model_dir)
    except CheckpointError:
        prefix = None
    if prefix != model_dir / PREFIX:
        state.unlink(missing_ok=True)
        raise DownloadError(f"{state}: does not name {PREFIX}; removed, run again to refetch")


def convert_fetching_again(
    model_dir: Path, get: Callable[..., None], keep_original: bool, show_progress: bool
) -> None:
    """Convert (fetching the shard first if needed); a file the conversion
    finds damaged is fetched again, once."""
    refetched: set[Path] = set()
    while True:
        if not is_converted(model_dir) and not (model_dir / SHARD_FILE).exists():
            # The conversion writes a copy as large as the shard.
            get(SHARD_FILE, extra_space=index_data_size(model_dir))
        try:
            convert(model_dir, keep_original=keep_original, show_progress=show_progress)
            return
        except CheckpointError as e:
            damaged = e.path
            if damaged is None or damaged in refetched or not damaged.exists():
                raise
            status(f"{e}; fetching {damaged.name} again")
            refetched.add(damaged)
            damaged.unlink()
            if damaged.name != SHARD_FILE:
                get(damaged.name)


def index_data_size(model_dir: Path) -> int:
    _, entries = read_tf_index(model_dir)
    return sum(e.size for e in entries.values())


def verify(model_dir: Path) -> int:
    """Check a converted folder's tensors against their recorded CRC-32C."""
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(f"{path}: no converted model to verify")
    progress = Progress(f"verifying {path}", path.stat().st_size)
    n = verify_weights(model_dir, progress.update)
    progress.finish()
    status(f"{path}: all {n} tensors match their CRC-32C")
    return 0


def build_parser() -> Parser:
    parser = Parser(
        prog=prog_name("download"),
        description="Download, verify (CRC-32C of every tensor) and convert a released "
        f"GPT-2 checkpoint into MODELS_DIR/SIZE/{WEIGHTS_FILE}.",
    )
    parser.add_argument(
        "size",
        metavar="SIZE",
        help=f"model size: {', '.join(SIZES)} (with --verify, any model folder's name)",
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
        help="download nothing: check a converted model's tensors against the CRC-32C "
        "recorded when it was converted",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        models_dir = locations.models_dir(args.models_dir)
        if args.verify:
            return verify(models_dir / args.size)
        if args.retries < 0:
            raise InputError(f"--retries must be >= 0, got {args.retries}")
        model_dir = download_model(
            args.size,
            models_dir,
            base_url=args.base_url,
            keep_original=args.keep_original,
            retries=args.retries,
        )
        status(f"GPT-2 {args.size} ready in {model_dir}")
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
