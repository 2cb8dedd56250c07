"""Download OpenAI's released GPT-2 checkpoints, verify them, convert them.

    python -m picogpt2.download 124M [--models-dir weights] [--base-url URL]

Files come from OpenAI's public bucket (or a mirror with the same layout,
``{base}/{SIZE}/{FILE}``) into ``{models_dir}/{SIZE}/``. A transfer goes to
``FILE.part`` and is renamed only when complete; an interrupted one resumes
with an HTTP Range request. Every tensor's CRC-32C is checked during
conversion, and a damaged file is fetched again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from itertools import chain
from pathlib import Path

import requests

from picogpt2.checkpoint import CheckpointError, read_tf_index
from picogpt2.weights import WEIGHTS_FILE, convert, is_converted

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
BASE_URL_ENV = "PICOGPT2_BASE_URL"

# Layers, heads and width of each released size; all share these two.
N_VOCAB, N_CTX = 50257, 1024
SIZES = {
    "124M": (12, 12, 768),
    "355M": (24, 16, 1024),
    "774M": (36, 20, 1280),
    "1558M": (48, 25, 1600),
}
SMALL_FILES = ["hparams.json", "encoder.json", "vocab.bpe", "checkpoint", "model.ckpt.index"]
SHARD_FILE = "model.ckpt.data-00000-of-00001"
CHUNK = 1 << 16  # bytes per read; a cut transfer loses at most this much
# Failures worth a retry: the connection, not the request, went wrong.
RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DownloadError(RuntimeError):
    """A download failed for a reason worth one line to the user."""


def expected_hparams(model_size: str) -> dict[str, int]:
    n_layer, n_head, n_embd = SIZES[model_size]
    return {
        "n_vocab": N_VOCAB,
        "n_ctx": N_CTX,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
    }


class Progress:
    """One self-overwriting line on stderr: bytes, percent, rate, time left.
    Without a terminal, a line every 10% instead."""

    def __init__(self, name: str, total: int | None, done: int, stream=None) -> None:
        self.name, self.total, self.done, self.start_done = name, total, done, done
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()
        self.last_decile = -1

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last < 0.2:
            return
        decile = self.done * 10 // self.total if self.total else 0
        if not self.tty and decile == self.last_decile:
            return
        self.last, self.last_decile = now, decile
        self.show(now)

    def show(self, now: float, end: str = "") -> None:
        rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
        text = f"{self.name}  {self.done / 1e6:.1f}"
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else 0
            text += f"/{self.total / 1e6:.1f} MB  {100 * self.done / self.total:5.1f}%"
            text += f"  {rate / 1e6:.1f} MB/s  {int(left) // 60}:{int(left) % 60:02d} left"
        else:
            text += f" MB  {rate / 1e6:.1f} MB/s"
        if self.tty:
            self.stream.write("\r\033[K" + text + end)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self.show(time.monotonic(), end="\n" if self.tty else "")


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


def fetch(
    url: str,
    dest: Path,
    *,
    extra_space: int = 0,
    retries: int = 5,
    backoff: float = 1.0,
    show_progress: bool = True,
    session: requests.Session | None = None,
) -> None:
    """Stream ``url`` to ``dest``, resuming ``dest.part`` and retrying with
    exponential backoff on connection errors and 5xx replies. ``extra_space``
    is disk needed beyond the file itself (the conversion's copy)."""
    http = session or requests.Session()
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with http.get(url, headers=headers, stream=True, timeout=30) as reply:
                if reply.status_code == 416:  # our partial file is bad; start over
                    part.unlink()
                    continue
                if reply.status_code >= 500:
                    raise requests.ConnectionError(f"HTTP {reply.status_code} from {url}")
                if reply.status_code not in (200, 206):
                    raise DownloadError(f"HTTP {reply.status_code} {reply.reason} for {url}")
                if reply.status_code == 200:
                    have = 0  # the server ignored our Range: start again
                length = reply.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                if total is not None:
                    check_disk_space(dest.parent, total - have + extra_space, dest.name)
                progress = Progress(dest.name, total, have) if show_progress else None
                chunks = reply.iter_content(CHUNK)
                first = next(chunks, b"")
                if have == 0 and looks_like_error_page(
                    first, reply.headers.get("Content-Type", "")
                ):
                    raise DownloadError(f"{url} returned an HTML/XML page, not a model file")
                with open(part, "ab" if have else "wb") as f:
                    for chunk in chain([first], chunks):
                        f.write(chunk)
                        if progress:
                            progress.update(len(chunk))
                if progress:
                    progress.finish()
                size = part.stat().st_size
                if total is not None and size != total:
                    raise requests.ConnectionError(f"got {size} of {total} bytes")
            os.replace(part, dest)
            return
        except RETRYABLE as e:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"giving up on {url} after {retries} retries: {e}") from None
            if show_progress:
                print(f"\n{dest.name}: {e}; retrying ({attempt}/{retries})", file=sys.stderr)
            time.sleep(backoff * 2 ** (attempt - 1))


def download_model(
    model_size: str,
    models_dir: str | Path = "weights",
    *,
    base_url: str | None = None,
    keep_original: bool = False,
    show_progress: bool = True,
    retries: int = 5,
    backoff: float = 1.0,
) -> Path:
    """Download, verify and convert one released size into
    ``models_dir/model_size``; a no-op when that is already done."""
    if model_size not in SIZES:
        raise DownloadError(f"unknown model size {model_size!r}; choose from {', '.join(SIZES)}")
    base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    model_dir = Path(models_dir) / model_size
    model_dir.mkdir(parents=True, exist_ok=True)
    http = requests.Session()

    def get(name: str, extra_space: int = 0) -> None:
        fetch(
            f"{base}/{model_size}/{name}",
            model_dir / name,
            extra_space=extra_space,
            retries=retries,
            backoff=backoff,
            show_progress=show_progress,
            session=http,
        )

    for name in SMALL_FILES:
        if not (model_dir / name).exists():
            get(name)
    check_small_files(model_dir, model_size)
    refetched: set[Path] = set()
    while True:
        if not is_converted(model_dir):
            if not (model_dir / SHARD_FILE).exists():
                # The conversion writes a copy as large as the shard.
                get(SHARD_FILE, extra_space=_index_data_size(model_dir))
            if show_progress:
                print(f"verifying and converting {model_dir} ...", file=sys.stderr)
        try:
            # A no-op when converted, but for dropping a shard an earlier run kept.
            convert(model_dir, keep_original=keep_original)
            return model_dir
        except CheckpointError as e:
            damaged = e.path
            if damaged is None or damaged in refetched or not damaged.exists():
                raise
            print(f"{e}; fetching {damaged.name} again", file=sys.stderr)
            refetched.add(damaged)
            damaged.unlink()
            if damaged.name != SHARD_FILE:
                get(damaged.name)


def _index_data_size(model_dir: Path) -> int:
    _, entries = read_tf_index(model_dir)
    return sum(e.size for e in entries.values())


def check_small_files(model_dir: Path, model_size: str) -> None:
    """The small files parse, and hparams match the size asked for (a mirror
    serving the wrong model is caught before the large download)."""
    for name in ("hparams.json", "encoder.json"):
        path = model_dir / name
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            path.unlink()
            raise DownloadError(f"{path}: not valid JSON; removed, run again to refetch") from None
        if name == "hparams.json" and value != expected_hparams(model_size):
            raise DownloadError(f"{path}: {value} is not GPT-2 {model_size}")


def add_models_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--models-dir``, shared by every command that finds models by name."""
    parser.add_argument(
        "--models-dir",
        default="weights",
        type=Path,
        help="folder holding one sub-folder per model (default: weights)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m picogpt2.download",
        description="Download, verify (CRC-32C of every tensor) and convert a released "
        f"GPT-2 checkpoint into MODELS_DIR/SIZE/{WEIGHTS_FILE}.",
    )
    parser.add_argument(
        "size", metavar="SIZE", choices=list(SIZES), help=f"model size: {', '.join(SIZES)}"
    )
    add_models_dir_argument(parser)
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"mirror with the layout BASE/SIZE/FILE (default: ${BASE_URL_ENV} "
        f"or {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--keep-original",
        action="store_true",
        help="keep the TensorFlow data shard after a verified conversion",
    )
    args = parser.parse_args(argv)

    def body() -> int:
        model_dir = download_model(
            args.size, args.models_dir, base_url=args.base_url, keep_original=args.keep_original
        )
        print(f"GPT-2 {args.size} ready in {model_dir}", file=sys.stderr)
        return 0

    from picogpt2.cli import run_cli

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
