"""OpenAI's released GPT-2 sizes (124M, 355M, 774M, 1558M): the files, where
they come from, how they are checked, and how a download is finished.

A release lives in ``MODELS_DIR/SIZE/`` and comes from OpenAI's bucket, or
a mirror with the same layout (``{base}/{SIZE}/{FILE}``; ``locations``).
The small files come first (hyperparameters, vocabulary, checkpoint index)
and are checked before the large shard is fetched; the shard is then
converted (``formats.openai``: every tensor's CRC-32C verified; a damaged
file is fetched again, once) and removed unless ``keep_original``.
``download.json`` marks a folder as the downloader's, so that any later
command finishes an interrupted download or conversion the same way; a
folder without it holds a model of the user's and is never changed here.
One process at a time fills a folder (its lock).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import requests

from picogpt2.hparams import SIZES
from picogpt2.util.atomic import LOCK_FILE, atomic_write, folder_lock
from picogpt2.util.errors import InputError, WeightsError
from picogpt2.util.status import status
from picogpt2.util.textio import parse_json
from picogpt2.weights import formats, locations
from picogpt2.weights.fetch import BACKOFF_S, RETRIES, DownloadError, fetch
from picogpt2.weights.formats import openai
from picogpt2.weights.formats.opened import OpenedModel
from picogpt2.weights.formats.tf_bundle import CheckpointError, read_tf_index
from picogpt2.weights.params import HPARAMS_FILE

SMALL_FILES = [HPARAMS_FILE, "encoder.json", "vocab.bpe", "checkpoint", "model.ckpt.index"]
SHARD_FILE = "model.ckpt.data-00000-of-00001"
SMALL_FILE_MAX = 8 << 20  # the most any small file can be (encoder.json is 1 MB)
MARKER_FILE = "download.json"  # written by the downloader: the folder is its to finish


# What the downloader has left to do in a folder (``next_step``).
FETCH = "fetch"  # the large shard (and any small file missing) to download, then convert
CONVERT = "convert"  # a complete checkpoint of its own download to convert
TIDY = "tidy"  # converted; the shard to remove, as the download asked
DONE = "done"  # converted, nothing left
USERS = "users"  # a model of the user's, not the downloader's: never changed here


def found(folder: Path) -> tuple[OpenedModel | None, dict | None]:
    """What is in ``folder``: the model there, opened (``formats.detect``;
    None when nothing is), and the downloader's marker. A checkpoint the
    downloader has not finished may not open (its index damaged in
    transit): None too, so that the download goes on and fetches it again;
    a model of the user's that does not open is the user's error."""
    marker = read_marker(folder)
    try:
        return formats.detect(folder), marker
    except CheckpointError:
        if marker is None:
            raise
        return None, marker


def next_step(folder: Path, opened: OpenedModel | None, marker: dict | None) -> str:
    """What is left to do for a release in ``folder``, from what is there
    (``found``): each question about it (converted? complete? whose?)
    asked once, here."""
    if opened is not None and opened.format == openai.NAME and opened.tensors is not None:
        keep = marker is None or marker.get("keep_original")
        return DONE if keep or not (folder / SHARD_FILE).exists() else TIDY
    if marker is None and opened is not None:
        return USERS
    return CONVERT if openai.has_complete_checkpoint(folder) else FETCH


def is_missing(folder: Path) -> bool:
    """The release's large download is still to come."""
    return next_step(folder, *found(folder)) == FETCH


def download_model(
    model_size: str,
    models_dir: str | Path | None = None,
    *,
    base_url: str | None = None,
    keep_original: bool = False,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
) -> Path:
    """Download, verify and convert one released size into
    ``models_dir/model_size`` (``models_dir`` None: the default, see
    ``locations``); a no-op when that is done. A first run that fails
    removes the folders it created, unless they hold a partial transfer to
    resume (``fetch_vocabulary`` stops after the small files)."""
    if model_size not in SIZES:
        raise InputError(f"unknown model size {model_size!r}; choose from {', '.join(SIZES)}")
    folder = locations.models_dir(models_dir) / model_size
    options = {"retries": retries, "backoff": backoff}
    _download(model_size, folder, locations.base_url(base_url), keep_original, **options)
    return folder


def ensure_release(model_size: str, folder: Path, *, download: bool = True) -> OpenedModel | None:
    """Make ``folder`` hold the released ``model_size``, ready to use: fetch
    it when nothing is there, and finish what an interrupted download or
    conversion left (the shard removed as the downloader would have). A
    model of the user's there (no marker) is left as it is. Returns the
    model there, opened (``formats.detect``)."""
    opened, marker = found(folder)
    step = next_step(folder, opened, marker)
    if step in (DONE, USERS):
        return opened
    if step == FETCH and not download:
        raise WeightsError(f"{folder}: GPT-2 {model_size} is not downloaded (download=False)")
    keep_original = bool(marker and marker.get("keep_original"))
    _download(model_size, folder, locations.base_url(None), keep_original)
    return opened if step == TIDY else formats.detect(folder)


def _download(
    model_size: str,
    folder: Path,
    base: str,
    keep_original: bool,
    *,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    small_files_only: bool = False,
) -> None:
    created = folders_to_create(folder)
    try:
        with folder_lock(folder, f"waiting for another process downloading into {folder}"):
            http = requests.Session()

            def get(name: str, extra_space: int = 0) -> None:
                max_size = index_data_size(folder) if name == SHARD_FILE else SMALL_FILE_MAX
                fetch(f"{base}/{model_size}/{name}", folder / name, max_size=max_size,
                      extra_space=extra_space, retries=retries, backoff=backoff,
                      session=http)  # fmt: skip

            step = next_step(folder, *found(folder))  # again: another process may have done it
            if step in (FETCH, CONVERT):
                write_marker(folder, keep_original)
                if step == FETCH:
                    what = "the vocabulary of GPT-2" if small_files_only else "GPT-2"
                    status(f"downloading {what} {model_size} from {base} into {folder}")
                fetch_small_files(folder, model_size, get)
                if small_files_only:
                    return
                if step == FETCH:  # the conversion writes a copy as large as the shard
                    get(SHARD_FILE, extra_space=index_data_size(folder))
                convert_fetching_again(folder, get)
            if step != USERS and not keep_original:
                (folder / SHARD_FILE).unlink(missing_ok=True)
    except BaseException:
        remove_if_unused(created)
        raise


def fetch_vocabulary(model_size: str, folder: Path) -> None:
    """The small files of the released ``model_size`` in ``folder`` (its
    vocabulary, hyperparameters and checkpoint index, a few MB), those
    missing fetched and all checked: what to know before the large shard."""
    _download(model_size, folder, locations.base_url(None), False, small_files_only=True)


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


def write_marker(folder: Path, keep_original: bool) -> None:
    """Mark the folder as the downloader's, so that a later load finishes an
    interrupted download or conversion the same way (and removes the shard
    unless ``keep_original``)."""
    with atomic_write(folder / MARKER_FILE) as f:
        f.write(json.dumps({"keep_original": keep_original}).encode() + b"\n")


def read_marker(folder: Path) -> dict | None:
    """The downloader's marker of a folder, or None when it has none."""
    try:
        marker = parse_json((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def fetch_small_files(folder: Path, model_size: str, get: Callable[[str], None]) -> None:
    for name in SMALL_FILES:
        if not (folder / name).exists():
            get(name)
    check_small_files(folder, model_size)


def check_small_files(folder: Path, model_size: str) -> None:
    """The small files are GPT-2 ``model_size``'s, caught before the large
    download. A file that is not (a mirror serving another model, an error
    page) is removed, so the next run fetches it again."""
    for name in (HPARAMS_FILE, "encoder.json"):
        path = folder / name
        try:
            value = parse_json(path.read_text(encoding="utf-8"))
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
    state = folder / "checkpoint"
    if openai.checkpoint_prefix(folder) != folder / openai.PREFIX:
        state.unlink(missing_ok=True)
        raise DownloadError(
            f"{state}: does not name {openai.PREFIX}; removed, run again to refetch"
        )


def convert_fetching_again(folder: Path, get: Callable[..., None]) -> None:
    """Convert the checkpoint (``formats.openai``, every CRC verified); a
    file the conversion finds damaged is fetched again, once."""
    refetched: set[Path] = set()
    while True:
        try:
            openai.detect(folder).weights()
            return
        except CheckpointError as e:
            damaged = e.path
            if damaged is None or damaged in refetched or not damaged.exists():
                raise
            status(f"{e}; fetching {damaged.name} again")
            refetched.add(damaged)
            damaged.unlink()
            get(damaged.name)


def index_data_size(folder: Path) -> int:
    _, entries = read_tf_index(folder)
    return sum(e.size for e in entries.values())
