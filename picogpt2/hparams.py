"""GPT-2's hyperparameters, and the catalogue of OpenAI's released sizes.

Five numbers fix every shape of a GPT-2; a model folder states them in
``hparams.json``, exactly these keys. This module imports nothing of
picogpt2's but the error base, so every other module may import it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from picogpt2.errors import PicoGPT2Error

HPARAMS_FILE = "hparams.json"


class HParamsError(PicoGPT2Error, ValueError):
    """``hparams.json`` is missing, unreadable or not GPT-2 hyperparameters."""


@dataclass(frozen=True)
class HParams:
    """The sizes of one GPT-2, named as in ``hparams.json``."""

    n_vocab: int  # tokens: the rows of wte
    n_ctx: int  # positions: the rows of wpe, the longest input
    n_embd: int  # the width of the residual stream
    n_head: int  # attention heads, each head_dim = n_embd // n_head wide
    n_layer: int  # transformer blocks

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(HParams))

# OpenAI's released sizes, by the names its bucket uses.
SIZES: dict[str, HParams] = {
    "124M": HParams(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12),
    "355M": HParams(n_vocab=50257, n_ctx=1024, n_embd=1024, n_head=16, n_layer=24),
    "774M": HParams(n_vocab=50257, n_ctx=1024, n_embd=1280, n_head=20, n_layer=36),
    "1558M": HParams(n_vocab=50257, n_ctx=1024, n_embd=1600, n_head=25, n_layer=48),
}


def parse_hparams(values: object, source: str) -> HParams:
    """``HParams`` from a parsed ``hparams.json``; ``source`` names it in errors.
    Every field must be a positive integer and ``n_head`` must divide ``n_embd``."""
    if not isinstance(values, dict):
        raise HParamsError(f"{source}: expected a JSON object with {', '.join(FIELDS)}")
    missing = [k for k in FIELDS if k not in values]
    if missing:
        raise HParamsError(f"{source}: missing {', '.join(missing)}")
    for key in FIELDS:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HParamsError(f"{source}: {key} must be a positive integer, got {value!r}")
    hparams = HParams(**{k: values[k] for k in FIELDS})
    if hparams.n_embd % hparams.n_head:
        raise HParamsError(
            f"{source}: n_head {hparams.n_head} does not divide n_embd {hparams.n_embd}"
        )
    return hparams


def read_hparams(model_dir: str | Path) -> HParams:
    """The hyperparameters in ``model_dir/hparams.json``."""
    path = Path(model_dir) / HPARAMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HParamsError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HParamsError(f"{path}: cannot read: {e}") from None
    try:
        values = json.loads(text)
    except ValueError as e:
        raise HParamsError(f"{path}: not valid JSON ({e})") from None
    return parse_hparams(values, str(path))


def write_hparams(model_dir: Path, hparams: HParams) -> None:
    """``model_dir/hparams.json``, as OpenAI wrote it."""
    (model_dir / HPARAMS_FILE).write_text(json.dumps(hparams.as_dict()) + "\n", encoding="utf-8")
