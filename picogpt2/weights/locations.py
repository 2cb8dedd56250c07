"""Where models live and where they come from, and the environment
variables that change either.

Models live in one folder whatever the current directory, so a model is
never downloaded twice by running from somewhere else:

1. ``$PICOGPT2_MODELS_DIR``, when set;
2. else, when picogpt2 runs from a source checkout (an editable install
   or ``python picogpt2/generate.py``), the checkout's ``weights/``;
3. else a per-user cache folder: ``$XDG_CACHE_HOME/picogpt2`` or
   ``~/.cache/picogpt2`` (``%LOCALAPPDATA%\\picogpt2`` on Windows).

Files come from OpenAI's public bucket, or the mirror named by
``--base-url`` or ``$PICOGPT2_BASE_URL`` (same layout: BASE/SIZE/FILE).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from picogpt2.hparams import SIZES
from picogpt2.util.errors import InputError

MODELS_DIR_ENV = "PICOGPT2_MODELS_DIR"
BASE_URL_ENV = "PICOGPT2_BASE_URL"
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
CHECKOUT = Path(__file__).resolve().parents[2]


def _checkout_weights() -> Path | None:
    """The checkout's ``weights/`` when this package runs from one."""
    try:
        pyproject = (CHECKOUT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    weights = CHECKOUT / "weights"
    if 'name = "picogpt2"' in pyproject and (weights / "README.md").is_file():
        return weights
    return None


def _user_cache() -> Path:
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "picogpt2"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "picogpt2"


def default_models_dir() -> Path:
    """The folder models live in when none is given (rules above)."""
    from_env = os.environ.get(MODELS_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return _checkout_weights() or _user_cache()


def models_dir(given: str | Path | None) -> Path:
    """The folder given, or the default."""
    if given is None:
        return default_models_dir()
    if str(given) == "":
        raise InputError("the models folder is empty: name a folder, or leave it out")
    return Path(given).expanduser()


def base_url(given: str | None) -> str:
    """The mirror given, else ``$PICOGPT2_BASE_URL``, else OpenAI's bucket;
    an empty or non-HTTP one is an error, never a silent fallback."""
    if given is not None:
        source, url = "--base-url", given
    elif os.environ.get(BASE_URL_ENV) is not None:
        source, url = f"${BASE_URL_ENV}", os.environ[BASE_URL_ENV]
    else:
        return DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"{source} must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def locate(name: str | Path, given: str | Path | None) -> Path:
    """Where the model ``name`` is. A path that exists (absolute, or relative
    to the current folder) is that path, and so is one that starts at a
    folder (``./x``, ``../x``, ``~/x``) even when nothing is there; any
    other name is a model inside the models folder (``given``, or the
    default): ``124M``, ``my-finetune``, ``llmc/model.bin``."""
    path = Path(name).expanduser()
    if path.exists() or path.is_absolute() or str(name).startswith(("./", "../", "~", ".\\")):
        return path
    return models_dir(given) / name


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it, and where that is: resolved once
    (``resolve``) and passed unchanged to whatever loads it, in this
    process or in a worker."""

    name: str  # as given: "124M", "my-finetune", "./x.bin"
    path: Path  # where it is (``locate``)
    models_dir: Path  # the models folder it was looked for in

    @property
    def released(self) -> bool:
        """One of OpenAI's released sizes: fetched when it is not there."""
        return self.name in SIZES

    def describe(self) -> str:
        """Which model this is, in words, for a status line."""
        # An absolute name joins to itself (models_dir / "/x" is "/x"): a path given.
        if not Path(self.name).is_absolute() and self.path == self.models_dir / self.name:
            return f"GPT-2 {self.name} from the models folder {self.models_dir}"
        return f"GPT-2 from {self.path.resolve()} (the path given)"


def resolve(name: str | Path | ModelRef, given: str | Path | None = None) -> ModelRef:
    """The model ``name`` (in the models folder ``given``, or the default,
    or at a path: ``locate``); a ``ModelRef`` is already resolved."""
    if isinstance(name, ModelRef):
        return name
    return ModelRef(str(name), locate(name, given), models_dir(given))
