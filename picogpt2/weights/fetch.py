"""Fetching one file over HTTP, the way a model download needs it.

A transfer streams to ``FILE.part`` and is renamed only when complete; an
interrupted one resumes with an HTTP Range request. Interrupted transfers,
timeouts and 5xx replies are retried with backoff; a host that cannot be
reached at all (its name does not resolve, the connection is refused) is
not, as curl and wget do not retry it. Error pages (HTML or XML served
where a model file belongs) are refused, and so is a transfer that the
disk has no room for, before it starts.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NewConnectionError  # requests' own dependency

from picogpt2.util.errors import PicoGPT2Error
from picogpt2.util.status import Progress, status
from picogpt2.weights.locations import BASE_URL_ENV

CHUNK = 1 << 16  # bytes per read; a cut transfer loses at most this much
TIMEOUT_S = 30  # to connect, and at most between two reads of a transfer
RETRIES = 5
BACKOFF_S = 1.0  # the wait before the first retry, doubled for each next one
# Failures worth a retry: the transfer, not the server's address, went wrong.
RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class DownloadError(PicoGPT2Error, RuntimeError):
    """A download failed for a reason worth one line to the user."""


class TooLarge(DownloadError):
    """A server sends more than the file can be."""


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
        f"or name a mirror in ${BASE_URL_ENV} (or with download's --base-url)"
    )


def fetch(
    url: str,
    dest: Path,
    *,
    max_size: int,
    extra_space: int = 0,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    session: requests.Session | None = None,
) -> None:
    """Stream ``url`` to ``dest``, resuming ``dest.part`` and retrying with
    exponential backoff on interrupted transfers and 5xx replies.
    ``max_size`` is the most bytes the file can be (what it is says so): a
    server that says or sends more is refused, the transfer stopped there.
    ``extra_space`` is disk needed beyond the file itself (a conversion's
    copy)."""
    http = session or requests.Session()
    part = dest.with_name(dest.name + ".part")
    for attempt in itertools.count(1):
        try:
            transfer(http, url, part, max_size, extra_space)
            os.replace(part, dest)
            return
        except RETRYABLE as e:
            at_once = unreachable(e, url)
            if at_once:
                raise at_once from None
            if attempt > retries:
                raise DownloadError(f"giving up on {url} after {retries} retries: {e}") from None
            status(f"{dest.name}: {e}; retrying ({attempt}/{retries})")
            time.sleep(backoff * 2 ** (attempt - 1))


def transfer(http: requests.Session, url: str, part: Path, max_size: int, extra_space: int) -> None:
    """One request: append the rest of ``url`` to ``part`` (all of it when
    ``part`` is empty or the server ignores the Range asked for)."""
    have = resume_point(part)
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.get(url, headers=headers, stream=True, timeout=TIMEOUT_S) as reply:
        check_status(reply, url, part)
        if reply.status_code == 200:
            have = 0  # the whole file, from the start
        length = reply.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        name = part.name[: -len(".part")]
        if total is not None and total > max_size:
            raise DownloadError(too_large(url, f"says it is {total:,} bytes", max_size))
        if total is not None:
            check_disk_space(part.parent, total - have + extra_space, name)
        chunks = reply.iter_content(CHUNK)
        first = next(chunks, b"")
        if have == 0 and looks_like_error_page(first, reply.headers.get("Content-Type", "")):
            raise DownloadError(f"{url} returned an HTML/XML page, not a model file")
        body = capped(chain([first], chunks), max_size - have, url, max_size)
        try:
            write_body(part, have, body, Progress(name, total, have))
        except TooLarge:
            part.unlink(missing_ok=True)  # none of it is the file: nothing to resume
            raise
    size = part.stat().st_size
    if total is not None and size != total:
        raise requests.ConnectionError(f"got {size} of {total} bytes")


def too_large(url: str, what: str, max_size: int) -> str:
    return f"{url} {what}, more than the file can be ({max_size:,} bytes): check --base-url"


def capped(chunks: Iterable[bytes], room: int, url: str, max_size: int) -> Iterator[bytes]:
    """``chunks``, up to ``room`` bytes: past it, the transfer stops."""
    for chunk in chunks:
        room -= len(chunk)
        if room < 0:
            raise TooLarge(too_large(url, "sends more", max_size))
        yield chunk


def check_status(reply: requests.Response, url: str, part: Path) -> None:
    """A reply worth reading (200, 206); one worth a retry raises
    ``requests.ConnectionError``; any other, ``DownloadError``."""
    if reply.status_code == 416:  # our partial file is not a prefix of theirs
        part.unlink()
        raise requests.ConnectionError("the server cannot resume this file; starting over")
    if reply.status_code >= 500:
        raise requests.ConnectionError(f"HTTP {reply.status_code} from {url}")
    if reply.status_code not in (200, 206):
        raise DownloadError(f"HTTP {reply.status_code} {reply.reason} for {url}")


def resume_point(part: Path) -> int:
    """How many bytes of a partial transfer there are to resume from. A link
    is never written through (whatever it points at is not ours): removed."""
    if part.is_symlink():
        part.unlink()
    return part.stat().st_size if part.exists() else 0


def write_body(part: Path, have: int, chunks: Iterable[bytes], progress: Progress) -> None:
    """Append ``chunks`` to ``part`` (write it afresh when ``have`` is 0). A
    network error reading them propagates, to be retried; a disk error names
    the file (a full disk's own message does not)."""
    try:
        if not have:
            part.unlink(missing_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if not have else 0)
        with os.fdopen(os.open(part, flags | getattr(os, "O_BINARY", 0), 0o666), "ab") as f:
            for chunk in chunks:
                f.write(chunk)
                progress.update(len(chunk))
    except requests.RequestException:  # OSErrors too, but the network's
        raise
    except OSError as e:
        raise DownloadError(f"{part}: cannot write: {e.strerror}") from None
    progress.finish()
