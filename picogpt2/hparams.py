"""GPT-2's hyperparameters, and the catalogue of OpenAI's released sizes.

Five numbers fix every shape of a GPT-2 (a model folder states them in
``hparams.json``, exactly these keys; ``weights/params.py`` reads and
checks them). This module imports nothing, so every other may import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


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
