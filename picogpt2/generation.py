"""What generating adds around the forward pass: the settings, each sample's
state, and the rules for stopping and for going past the context.

The rules (``GPT2.stream_many`` runs them):

- **Samples.** Several samples of one prompt are decoded as one batch: the
  prompt is run once, its cache copied to every sample, and each step
  reads every weight once for all of them. Sample ``j`` draws from its own
  ``SplitMix64(seed + j)``, so it equals the single generation with seed
  ``seed + j``. A sample that stops leaves the batch; the others go on.
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

import codecs
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from picogpt2.encoder import Encoder
from picogpt2.errors import InputError
from picogpt2.sampling import SplitMix64, check_sampling_args, sample


@dataclass(frozen=True)
class Settings:
    """How to choose tokens and when to stop (see ``sampling`` and above)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    ignore_eot: bool = False

    def check(self) -> None:
        """The one check of a generation's settings (``InputError``)."""
        check_sampling_args(self.temperature, self.top_k, self.top_p, self.repetition_penalty)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError("stop strings must be non-empty text")

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty is not None and self.repetition_penalty != 1


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
        self.encoder, self.stop = encoder, tuple(stop)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self.stopped = False

    def feed(self, ids: Sequence[int]) -> str:
        if self.stopped:
            return ""
        return self._release(self._held + self._utf8.decode(self.encoder.decode_bytes(ids)))

    def flush(self) -> str:
        if self.stopped:
            return ""
        text = self._release(self._held + self._utf8.decode(b"", final=True))
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
