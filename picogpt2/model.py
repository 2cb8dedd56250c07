"""A loaded GPT-2: hyperparameters, encoder, weights on a backend, and the
calls people make: ``logits``, ``trace``, and generating (``generate``,
``stream``, ``generate_many``, ``stream_many``, ``complete``), whose loop and
rules are in ``generation.py``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from picogpt2 import generation
from picogpt2.activations import ATTN_DEFAULT, BLOCK, EMBEDDINGS
from picogpt2.encoder import Encoder, load_encoder
from picogpt2.fastpath.decode_step import DecodeStep
from picogpt2.generation import Settings, check_lengths
from picogpt2.gpt2 import Params, gpt2
from picogpt2.hparams import HParams
from picogpt2.state import NO_TRACE, KVCache, Trace
from picogpt2.util.backend import Backend, get_backend, tune_malloc
from picogpt2.util.errors import InputError, WeightsError
from picogpt2.util.memory import check_fits, trace_bytes
from picogpt2.util.status import quiet
from picogpt2.weights.layout import layout_bytes, stream_layout
from picogpt2.weights.loading import open_model
from picogpt2.weights.locations import ModelRef
from picogpt2.weights.params import map_params, params_from_tensors

DTYPES = ("float32", "float64")


class GPT2:
    """GPT-2 ready to run. Arrays returned to callers are NumPy arrays."""

    def __init__(
        self,
        hparams: HParams,
        encoder: Encoder,
        params: Params,
        backend: Backend,
        dtype: str,
        model_dir: Path,
    ) -> None:
        self.hparams = hparams
        self.encoder = encoder
        self.params = params
        self.backend = backend
        self.dtype = np.dtype(dtype)
        self.model_dir = model_dir

    def upload_ids(self, ids: Sequence[int]) -> np.ndarray:
        """Check a prompt's token ids (a flat sequence of 1 to ``n_ctx``
        integers in the vocabulary); put them where the model runs, as a
        batch of one, [1, n_seq]."""
        try:
            array = np.asarray(ids)
        except OverflowError:  # a Python int beyond 64 bits, next to small ones
            array = np.asarray(ids, dtype=object)
        if array.ndim != 1 or (array.size and array.dtype.kind not in "iuO"):
            raise InputError(f"token ids must be a flat sequence of integers, got {ids!r:.60}")
        check_lengths(array.size, 0, self.hparams.n_ctx)
        # An object array holds ints beyond 64 bits (or no ints): out of range either way.
        if array.dtype.kind == "O" or array.min() < 0 or array.max() >= self.hparams.n_vocab:
            raise InputError(f"token ids must be in [0, {self.hparams.n_vocab})")
        return self.backend.upload(array.astype(np.int64).reshape(1, -1), np.int64)

    def _finite(self, logits: np.ndarray) -> np.ndarray:
        """``logits``, unless a NaN or an infinity shows the weights are damaged."""
        if not np.all(np.isfinite(logits)):
            raise WeightsError(
                f"GPT-2 in {self.model_dir} computed logits that are not finite: its weights "
                f"are likely damaged; check them with python -m picogpt2.download "
                f"{self.model_dir.resolve()} --verify"
            )
        return logits

    def new_cache(self, n_batch: int = 1, size: int | None = None) -> list[KVCache]:
        """An empty cache: one ``KVCache`` per block, ``n_batch`` rows of
        ``size`` positions (default: the whole context)."""
        h, like = self.hparams, self.params["wte"]
        size = size or h.n_ctx
        return [KVCache(n_batch, h.n_head, size, h.head_dim, like=like) for _ in range(h.n_layer)]

    def forward(
        self,
        ids: np.ndarray,
        cache: list[KVCache] | None = None,
        trace: Trace = NO_TRACE,
        *,
        last_only: bool = False,
        params: Params | None = None,
    ) -> np.ndarray:
        """``gpt2`` with this model's weights (``params``, unless others are
        given: ``decoding_params``): [n_batch, n_seq] -> logits, checked to
        be finite."""
        weights = self.params if params is None else params
        logits = gpt2(ids, **weights, n_head=self.hparams.n_head, cache=cache, trace=trace,
                      last_only=last_only)  # fmt: skip
        return self._finite(logits)

    @functools.cached_property
    def decoding_params(self) -> Params:
        """The weights as generating reads them. With NumPy, each matrix a
        product reads is held contiguous along its longer side
        (``weights/layout.py``): ``wte`` and every ``mlp/c_proj`` are copied
        transposed at the process's first generation, and every token after
        streams them faster. ``logits``, ``trace`` and scoring read
        ``params`` as loaded, so their bits never depend on whether the
        process generated."""
        return stream_layout(self.params) if self.backend.lays_out_for_decoding else self.params

    def setup_bytes(self) -> int:
        """The memory the next generation allocates before its first step,
        beyond its caches: ``decoding_params``' copies, until the first
        generation has made them (on NumPy; 0 after, and on other backends)."""
        if "decoding_params" in self.__dict__ or not self.backend.lays_out_for_decoding:
            return 0  # made (the cached property lives in the instance's dict), or never made
        return layout_bytes(self.params)

    def new_decoder(self) -> Callable[[np.ndarray, list[KVCache]], np.ndarray]:
        """What one generation runs for its prompt and each token after:
        ids [n_batch, n_seq] continuing the cache -> the last position's
        logits [n_batch, n_vocab], checked to be finite: ``forward`` with
        ``last_only`` and ``decoding_params``, bit for bit. One new position
        runs in buffers of the decoder's own (``fastpath/decode_step.py``),
        so it is one per generation; several run ``forward``."""
        params = self.decoding_params
        step = DecodeStep(params, self.hparams.n_head)

        def decode(ids: np.ndarray, cache: list[KVCache]) -> np.ndarray:
            if ids.shape[1] > 1:
                return self.forward(ids, cache, last_only=True, params=params)[:, 0]
            return self._finite(step(ids, cache))

        return decode

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), n_vocab] for every position of ``ids``."""
        return self.backend.to_numpy(self.forward(self.upload_ids(ids))[0])

    def trace(
        self, ids: Sequence[int], *, attn: bool = False, detail: bool = False
    ) -> dict[str, np.ndarray]:
        """Every activation an implementer compares against, as NumPy arrays
        (``activations`` documents each key):

        - ``ids`` int64 [n]
        - ``logits`` [n, n_vocab]
        - ``hidden`` [n_layer+1, n, n_embd]: the residual stream; ``hidden[0]``
          is token + position embeddings, ``hidden[i]`` the output of block
          i-1, before any final norm (transformers' last hidden state is
          already normed: compare it with ``ln_f``)
        - ``ln_f`` [n, n_embd]: the final layer norm's output
        - ``attn`` [n_layer, n_head, n, n] attention probabilities, if asked
        - with ``detail``, the inside of every block, stacked over layers:
          ``ln_1``, ``q``, ``k``, ``v``, ``attn_scores``, ``attn``,
          ``attn_heads``, ``attn_out``, ``resid_attn``, ``ln_2``,
          ``mlp_pre``, ``mlp_hidden``, ``mlp_out``
        """
        trace = Trace()
        device_ids = self.upload_ids(ids)
        needed = trace_bytes(self.hparams, device_ids.shape[1], self.dtype.itemsize, detail)
        check_fits(needed, f"a trace of {device_ids.shape[1]} tokens", self.backend.available())
        logits = self.forward(device_ids, trace=trace)

        def one(array: np.ndarray) -> np.ndarray:  # the batch of one, as NumPy
            return self.backend.to_numpy(array[0])

        def stacked(name: str) -> np.ndarray:
            return np.stack([one(layer.arrays[name]) for layer in trace.layers])

        hidden = [trace.arrays[EMBEDDINGS]] + [t.arrays["hidden"] for t in trace.layers]
        out = {
            "ids": one(device_ids),
            "logits": one(logits),
            "hidden": np.stack([one(h) for h in hidden]),
            "ln_f": one(trace.arrays["ln_f"]),
        }
        names = [key.name for key in BLOCK] if detail else [ATTN_DEFAULT] if attn else []
        out.update({name: stacked(name) for name in names})
        return out

    def stream(self, ids: Sequence[int], n_tokens: int, **settings) -> Iterator[int]:
        """Yield up to ``n_tokens`` new ids one at a time. ``settings`` are
        ``generation.Settings``' fields: ``temperature``, ``top_k``,
        ``top_p``, ``repetition_penalty``, ``seed``, ``stop`` (strings),
        ``ignore_eot`` (greedy unless a sampling option is given, stopping
        at <|endoftext|>)."""
        return (token for _, token in self.stream_many(ids, n_tokens, 1, **settings))

    def generate(self, ids: Sequence[int], n_tokens: int, **settings) -> list[int]:
        """The new ids after ``ids`` (not including them); see ``stream``."""
        return list(self.stream(ids, n_tokens, **settings))

    def generate_many(
        self, ids: Sequence[int], n_tokens: int, n_samples: int, **settings
    ) -> list[list[int]]:
        """``n_samples`` continuations of ``ids``, decoded as one batch;
        sample ``j`` is the single generation with seed ``seed + j``."""
        return generation.generate_many(self, ids, n_tokens, n_samples, Settings(**settings))

    def stream_many(
        self, ids: Sequence[int], n_tokens: int, n_samples: int, **settings
    ) -> Iterator[tuple[int, int]]:
        """(sample, id) pairs as they are generated, step by step, for
        ``n_samples`` continuations of ``ids`` (see ``generate_many``)."""
        return generation.stream_many(self, ids, n_tokens, n_samples, Settings(**settings))

    def complete(self, prompt: str, n_tokens: int, n_samples: int = 1, **settings) -> list[str]:
        """Text in, text out: each sample's continuation of ``prompt``,
        ending before a stop string, without a final <|endoftext|>."""
        return generation.complete(self, prompt, n_tokens, n_samples, Settings(**settings))


def load_model(
    model_size: str | Path | ModelRef = "124M",
    models_dir: str | Path | None = None,
    *,
    backend: str | None = None,
    dtype: str = "float32",
    download: bool = True,
    keep_freed_memory: bool = True,
    show_progress: bool = True,
    encoder_dir: str | Path | None = None,
) -> GPT2:
    """Load ``models_dir/model_size`` (a name in the models folder, a path,
    or a ``ModelRef`` resolved before): OpenAI's layout (a folder with
    ``hparams.json``, ``encoder.json``, ``vocab.bpe`` and weights, converted
    or a TensorFlow checkpoint), a transformers GPT-2 folder, or an llm.c
    ``.bin`` file (``weights/loading.py`` says how a file becomes tensors;
    ``weights/formats`` lists the formats).
    A released size (124M, 355M, 774M, 1558M) that is not there is
    downloaded first, unless ``download=False``; ``models_dir`` None is the
    default folder (see ``locations``). ``encoder_dir`` is a folder with the
    vocabulary, for a model that has none (an llm.c file). Every file is
    read once.

    ``backend`` is "numpy" or "cupy" (an NVIDIA GPU); None means
    ``$PICOGPT2_BACKEND``, else NumPy. ``dtype="float64"`` runs the whole
    pass in float64 (a reference free of float32 rounding).
    ``keep_freed_memory`` asks glibc's malloc, once for the whole process,
    to keep freed memory for the next forward pass (see
    ``backend.tune_malloc``); pass False to leave the C library alone.
    ``show_progress`` reports downloads and conversions on stderr.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    chosen = get_backend(backend)
    if keep_freed_memory:
        tune_malloc()
    with quiet(not show_progress):
        files = open_model(model_size, models_dir, download=download, encoder_dir=encoder_dir)
    hparams = files.hparams
    encoder = load_encoder(files.vocabulary)
    if encoder.n_vocab > hparams.n_vocab:
        raise WeightsError(
            f"{files.vocabulary}: the vocabulary has {encoder.n_vocab} tokens, more than "
            f"the model's n_vocab {hparams.n_vocab}"
        )
    params = params_from_tensors(files.tensors, hparams)
    params = map_params(params, lambda a: chosen.upload(a, dtype))
    return GPT2(hparams, encoder, params, chosen, dtype, files.path)
