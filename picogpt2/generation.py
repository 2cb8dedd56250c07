"""Generating: the settings, each sample's state, and the decode loop that
runs the forward pass step by step.

The rules (``stream_many`` runs them):

- **The prompt.** Token ids, 1 to ``n_ctx`` of them; an empty text prompt
  starts from ``<|endoftext|>`` (``prompt_ids``).
- **Samples.** Several samples of one prompt are decoded as one batch: the
  prompt is run once, its cache copied to every sample, and each step
  reads every weight once for all of them. Sample ``j`` draws from its own
  ``SplitMix64(seed + j)``, so it equals the single generation with seed
  ``seed + j``. A sample that stops leaves the batch; the others go on.
- **Choosing.** Greedy unless a sampling option is given; ``sampling.py``
  states the rules (temperature, top-k, top-p, repetition penalty).
- **Stopping.** A sample stops after ``n_tokens`` new ids; at
  ``<|endoftext|>`` (that id is its last one) unless ``ignore_eot``; and as
  soon as its decoded continuation contains one of the ``stop`` strings
  (the id that completes it is its last one; the text, ``Continuation``,
  ends before it). Stop strings are found in text, so one split across
  tokens is found too.
- **Longer than the context.** When a sample's prompt and continuation fill
  all ``n_ctx`` positions and another token is wanted, its last
  ``n_ctx // 2`` tokens become its context: their keys and values are
  computed afresh, and generation goes on. Until then nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Protocol

import numpy as np

from picogpt2.encoder import Encoder
from picogpt2.hparams import HParams
from picogpt2.sampling import SplitMix64, check_sampling_args, sample
from picogpt2.state import KVCache
from picogpt2.util.backend import Backend
from picogpt2.util.errors import InputError
from picogpt2.util.memory import check_fits, generation_bytes


@dataclass(frozen=True)
class Settings:
    """How to choose tokens and when to stop (the rules above). ``seed``
    None draws a random one; ``stop`` takes strings (one string is one
    stop string)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eot: bool = False

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)

    def check(self) -> None:
        """The one check of a generation's settings (``InputError``)."""
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.repetition_penalty)
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)):
            raise InputError(f"seed must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError("stop strings must be non-empty text")

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty is not None and self.repetition_penalty != 1


def check_lengths(n_prompt: int, n_tokens: int, n_ctx: int | None, n_samples: int = 1) -> None:
    """The one check of a generation's lengths: a prompt of 1 to ``n_ctx``
    tokens (any number when the context is not known yet), ``n_tokens`` >=
    0 new ones (past the context, the window slides), ``n_samples`` >= 1."""
    for name, value in (("n-tokens", n_tokens), ("n-samples", n_samples)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise InputError(f"{name} must be an integer, got {value!r}")
    if n_prompt < 1:
        raise InputError("need at least one token id")
    if n_ctx is not None and n_prompt > n_ctx:
        raise InputError(f"the prompt is {n_prompt} tokens, more than the context of {n_ctx}")
    if n_tokens < 0:
        raise InputError(f"n-tokens must be >= 0, got {n_tokens}")
    if n_samples < 1:
        raise InputError(f"n-samples must be >= 1, got {n_samples}")


def check_generation(
    h: HParams | None,
    n_prompt: int,
    n_tokens: int,
    n_samples: int,
    dtype: np.dtype,
    backend: Backend,
    setup: int = 0,
) -> None:
    """The one check of a generation, before it starts: its lengths, and
    the memory it needs where it runs: its KV caches and logits
    (``util/memory.py`` estimates them) and ``setup``, what the model
    allocates before the first step. With ``h`` None (the model's sizes
    not known yet: a released size not downloaded), the counts alone; a
    command checks what it can before a download, with this very function."""
    check_lengths(n_prompt, n_tokens, h.n_ctx if h else None, n_samples)
    if h is not None:
        itemsize = np.dtype(dtype).itemsize
        needed = setup + generation_bytes(h, n_prompt, n_tokens, n_samples, itemsize)
        what = f"{n_samples} sample{'s' if n_samples > 1 else ''} of {n_tokens} tokens"
        check_fits(needed, what, backend.available())


def prompt_ids(encoder: Encoder, prompt: str) -> list[int]:
    """A text prompt's ids; the empty prompt starts from <|endoftext|>."""
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text (str), got {type(prompt).__name__}")
    return encoder.encode(prompt) if prompt else [encoder.eot_token]


def window(sequence: Sequence[int], n_ctx: int) -> list[int]:
    """The context a sample goes on from once its sequence fills ``n_ctx``."""
    return list(sequence[-(n_ctx // 2) :])


class Continuation:
    """One sample's continuation as text, as its ids arrive: whole UTF-8
    characters only, cut before the first stop string.

    ``feed`` returns the text that is now certain: a suffix that could be
    the start of a stop string is held back until the next ids show whether
    it is one. ``stopped`` says a stop string appeared; ``flush`` returns
    what is held back at the end.
    """

    def __init__(self, encoder: Encoder, stop: Sequence[str] = ()) -> None:
        self.stop = tuple(stop)
        self._utf8 = encoder.stream_decoder()
        self._held = ""
        self.stopped = False

    def feed(self, ids: Sequence[int]) -> str:
        if self.stopped:
            return ""
        return self._release(self._held + self._utf8.feed(ids))

    def flush(self) -> str:
        if self.stopped:
            return ""
        text = self._release(self._held + self._utf8.flush())
        rest, self._held = self._held, ""
        return text + rest

    def _release(self, text: str) -> str:
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            self.stopped, self._held = True, ""
            return text[: min(cuts)]
        hold = max((n for s in self.stop for n in range(len(s) - 1, 0, -1)
                    if text.endswith(s[:n])), default=0)  # fmt: skip
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold]


def sample_text(encoder: Encoder, ids: Sequence[int], settings: Settings) -> str:
    """A finished sample's continuation as text: without its final
    <|endoftext|> (unless ``ignore_eot``), ending before a stop string."""
    if list(ids[-1:]) == [encoder.eot_token] and not settings.ignore_eot:
        ids = ids[:-1]
    text = Continuation(encoder, settings.stop)
    return text.feed(ids) + text.flush()


class SampleState:
    """One sample being generated: its sequence, generator and stopping."""

    def __init__(
        self,
        index: int,
        prompt: Sequence[int],
        seed: int,
        settings: Settings,
        encoder: Encoder,
        seen: np.ndarray | None,
    ) -> None:
        self.index, self.settings, self.encoder = index, settings, encoder
        self.sequence = list(prompt)
        self.rng = SplitMix64(seed)
        self.seen = seen  # [n_vocab] bool on the model's backend, with a penalty
        self.text = Continuation(encoder, settings.stop) if settings.stop else None
        self.stopped = False

    def choose(self, logits: np.ndarray) -> int:
        """The next token from this sample's logits [n_vocab]; it is taken."""
        s = self.settings
        token = sample(logits, self.rng, temperature=s.temperature, top_k=s.top_k,
                       top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                       seen=self.seen)  # fmt: skip
        self.sequence.append(token)
        if self.seen is not None:
            self.seen[token] = True
        if token == self.encoder.eot_token and not s.ignore_eot:
            self.stopped = True
        elif self.text is not None:
            self.text.feed([token])
            self.stopped = self.text.stopped
        return token


class LanguageModel(Protocol):
    """What the decode loop needs of a model (``model.GPT2`` is one)."""

    hparams: HParams
    encoder: Encoder
    backend: Backend
    dtype: np.dtype

    def upload_ids(self, ids: Sequence[int]) -> np.ndarray: ...

    def new_cache(self, n_batch: int = 1, size: int | None = None) -> list[KVCache]: ...

    def new_decoder(self) -> Callable[[np.ndarray, list[KVCache]], np.ndarray]: ...

    def setup_bytes(self) -> int: ...


def stream_many(
    model: LanguageModel, ids: Sequence[int], n_tokens: int, n_samples: int, settings: Settings
) -> Iterator[tuple[int, int]]:
    """(sample, id) pairs as they are generated, step by step, for
    ``n_samples`` continuations of ``ids`` (checked before the first step)."""
    settings.check()
    prompt = model.upload_ids(ids)  # [1, n_seq]
    check_generation(model.hparams, prompt.shape[1], n_tokens, n_samples, model.dtype,
                     model.backend, model.setup_bytes())  # fmt: skip
    # A NumPy integer too, as a Python int: seed + j never wraps at 64 bits.
    seed = int(settings.seed) if settings.seed is not None else (
        int.from_bytes(os.urandom(8), "little") >> 1)  # fmt: skip
    samples = [
        SampleState(j, ids, seed + j, settings, model.encoder,
                    _seen(model, ids) if settings.penalized else None)
        for j in range(n_samples)
    ]  # fmt: skip
    return _decode(model, prompt, n_tokens, samples)


def generate_many(
    model: LanguageModel, ids: Sequence[int], n_tokens: int, n_samples: int, settings: Settings
) -> list[list[int]]:
    """``n_samples`` continuations of ``ids`` (only the new ids), decoded as
    one batch; sample ``j`` is the single generation with seed ``seed + j``."""
    steps = stream_many(model, ids, n_tokens, n_samples, settings)  # checks everything first
    samples: list[list[int]] = [[] for _ in range(n_samples)]
    for j, token in steps:
        samples[j].append(token)
    return samples


def complete(
    model: LanguageModel, prompt: str, n_tokens: int, n_samples: int, settings: Settings
) -> list[str]:
    """Text in, text out: each sample's continuation of ``prompt``, ending
    before a stop string, without a final <|endoftext|>."""
    ids = prompt_ids(model.encoder, prompt)
    samples = generate_many(model, ids, n_tokens, n_samples, settings)
    return [sample_text(model.encoder, sample, settings) for sample in samples]


def _seen(model: LanguageModel, ids: Sequence[int]) -> np.ndarray:
    """[n_vocab] True at the prompt's ids: what a repetition penalty needs."""
    seen = np.zeros(model.hparams.n_vocab, dtype=bool)
    seen[np.asarray(ids, dtype=np.int64)] = True
    return model.backend.upload(seen, bool)


def _decode(
    model: LanguageModel, prompt: np.ndarray, n_tokens: int, samples: list[SampleState]
) -> Iterator[tuple[int, int]]:
    """The decode loop: run the prompt once; then per step, every sample
    still going picks a token, stopped ones leave the batch, and the rest
    take one more position (or slide their window)."""
    n_ctx = model.hparams.n_ctx
    cache = model.new_cache(1, min(prompt.shape[1] + n_tokens, n_ctx))
    decode = model.new_decoder()  # the last position's logits, the cache extended
    logits = decode(prompt, cache)  # [1, n_vocab]
    if len(samples) > 1:  # every sample continues the prompt's cache
        cache = [repeat(layer, len(samples)) for layer in cache]
        logits = np.repeat(logits, len(samples), axis=0)  # [n_batch, n_vocab]
    for step in range(n_tokens):
        for i, s in enumerate(samples):
            yield s.index, s.choose(logits[i])
        going = [i for i, s in enumerate(samples) if not s.stopped]
        if step + 1 == n_tokens or not going:
            return
        if len(going) < len(samples):
            samples = [samples[i] for i in going]
            for layer in cache:
                keep(layer, going)
        if cache[0].length == n_ctx:  # full: each sample goes on from its window
            ids = [window(s.sequence, n_ctx) for s in samples]
            cache = model.new_cache(len(samples), n_ctx)
        else:
            ids = [[s.sequence[-1]] for s in samples]
        logits = decode(model.backend.upload(ids, np.int64), cache)  # [n_batch, n_vocab]


def repeat(cache: KVCache, n_batch: int) -> KVCache:
    """A cache of ``n_batch`` rows, each holding this one-row cache's
    positions: several samples continuing one prompt."""
    _, n_head, size, head_dim = cache.k.shape
    copy = KVCache(n_batch, n_head, size, head_dim, like=cache.k)
    copy.k[:, :, : cache.length] = cache.k[:, :, : cache.length]
    copy.v[:, :, : cache.length] = cache.v[:, :, : cache.length]
    copy.length = cache.length
    return copy


def keep(cache: KVCache, rows: list[int]) -> None:
    """Keep only the sequences ``rows`` (their index in the batch), in that
    order: the samples that have not stopped."""
    cache.k, cache.v = cache.k[rows], cache.v[rows]
