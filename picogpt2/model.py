"""A loaded GPT-2: hyperparameters, encoder, weights on a backend, and the
calls people make: ``logits``, ``generate``/``stream`` and ``trace``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from picogpt2.activations import BLOCK
from picogpt2.backend import Backend, get_backend, tune_malloc
from picogpt2.encoder import Encoder, load_encoder
from picogpt2.errors import InputError
from picogpt2.generation import SampleState, Settings, sample_text, window
from picogpt2.gpt2 import KVCache, Params, Trace, gpt2
from picogpt2.hparams import HParams
from picogpt2.sources import open_source
from picogpt2.weights import (
    WeightsError,
)

DTYPES = ("float32", "float64")


def check_lengths(n_prompt: int, n_tokens: int, n_ctx: int, n_samples: int = 1) -> None:
    """The one check of a generation's lengths: a prompt of 1 to ``n_ctx``
    tokens, ``n_tokens`` >= 0 new ones (past the context, the window
    slides), ``n_samples`` >= 1."""
    if n_prompt < 1:
        raise InputError("need at least one token id")
    if n_prompt > n_ctx:
        raise InputError(f"the prompt is {n_prompt} tokens, more than the context of {n_ctx}")
    if n_tokens < 0:
        raise InputError(f"n-tokens must be >= 0, got {n_tokens}")
    if n_samples < 1:
        raise InputError(f"n-samples must be >= 1, got {n_samples}")


def params_from_tensors(tensors: dict[str, np.ndarray], hparams: HParams) -> Params:
    """The checkpoint's flat names -> the tree the model reads, e.g.
    ``model/h3/attn/c_attn/w`` [1, n_embd, 3*n_embd] -> ``blocks[3]["attn"]
    ["c_attn"]["w"]`` [n_embd, 3*n_embd] (a view: nothing is copied)."""

    def layer(prefix: str) -> dict[str, np.ndarray]:
        w = tensors[f"model/{prefix}/w"]
        return {"w": w.reshape(w.shape[-2:]), "b": tensors[f"model/{prefix}/b"]}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"g": tensors[f"model/{prefix}/g"], "b": tensors[f"model/{prefix}/b"]}

    return {
        "wte": tensors["model/wte"],
        "wpe": tensors["model/wpe"],
        "blocks": [
            {
                "ln_1": norm(f"h{i}/ln_1"),
                "attn": {
                    "c_attn": layer(f"h{i}/attn/c_attn"),
                    "c_proj": layer(f"h{i}/attn/c_proj"),
                },
                "ln_2": norm(f"h{i}/ln_2"),
                "mlp": {"c_fc": layer(f"h{i}/mlp/c_fc"), "c_proj": layer(f"h{i}/mlp/c_proj")},
            }
            for i in range(hparams.n_layer)
        ],
        "ln_f": norm("ln_f"),
    }


def map_params(params: Params, fn: Callable[[np.ndarray], np.ndarray]) -> Params:
    """Apply ``fn`` to every array of the tree."""
    if isinstance(params, dict):
        return {k: map_params(v, fn) for k, v in params.items()}
    if isinstance(params, list):
        return [map_params(v, fn) for v in params]
    return fn(params)


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

    def _ids(self, ids: Sequence[int]) -> np.ndarray:
        """Check a prompt's token ids; put them where the model runs, as a
        batch of one, [1, n_seq]."""
        try:
            array = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        except OverflowError:  # a Python int beyond 64 bits
            array = None
        if array is not None:
            check_lengths(array.size, 0, self.hparams.n_ctx)
        if array is None or array.min() < 0 or array.max() >= self.hparams.n_vocab:
            raise InputError(f"token ids must be in [0, {self.hparams.n_vocab})")
        return self.backend.upload(array, np.int64)

    def _finite(self, logits: np.ndarray) -> np.ndarray:
        """``logits``, unless a NaN or an infinity shows the weights are damaged."""
        if not np.all(np.isfinite(logits)):
            raise WeightsError(
                f"GPT-2 in {self.model_dir} computed logits that are not finite: its weights "
                f"are likely damaged; check them with python -m picogpt2.download "
                f"{self.model_dir.name} --models-dir {self.model_dir.parent} --verify"
            )
        return logits

    def new_cache(self, n_batch: int = 1, size: int | None = None) -> list[KVCache]:
        """An empty cache: one ``KVCache`` per block, ``n_batch`` rows of
        ``size`` positions (default: the whole context)."""
        h, like = self.hparams, self.params["wte"]
        size = size or h.n_ctx
        return [KVCache(n_batch, h.n_head, size, h.head_dim, like=like) for _ in range(h.n_layer)]

    def forward(self, ids: np.ndarray, cache: list[KVCache] | None = None, **kwargs) -> np.ndarray:
        """``gpt2`` with this model's weights: [n_batch, n_seq] -> logits,
        checked to be finite."""
        logits = gpt2(ids, **self.params, n_head=self.hparams.n_head, cache=cache, **kwargs)
        return self._finite(logits)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), n_vocab] for every position of ``ids``."""
        return self.backend.to_numpy(self.forward(self._ids(ids))[0])

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
          ``ln_1``, ``q``, ``k``, ``v``, ``attn``, ``attn_out``,
          ``resid_attn``, ``ln_2``, ``mlp_hidden``, ``mlp_out``
        """
        trace = Trace()
        device_ids = self._ids(ids)
        logits = self.forward(device_ids, trace=trace)

        def one(array: np.ndarray) -> np.ndarray:  # the batch of one, as NumPy
            return self.backend.to_numpy(array[0])

        def stacked(name: str) -> np.ndarray:
            return np.stack([one(layer.arrays[name]) for layer in trace.layers])

        hidden = [trace.arrays["embeddings"]] + [t.arrays["hidden"] for t in trace.layers]
        out = {
            "ids": one(device_ids),
            "logits": one(logits),
            "hidden": np.stack([one(h) for h in hidden]),
            "ln_f": one(trace.arrays["ln_f"]),
        }
        names = [key.name for key in BLOCK] if detail else ["attn"] if attn else []
        out.update({name: stacked(name) for name in names})
        return out

    def stream(self, ids: Sequence[int], n_tokens: int, **settings) -> Iterator[int]:
        """Yield up to ``n_tokens`` new ids one at a time. ``settings``:
        ``temperature``, ``top_k``, ``top_p``, ``seed``,
        ``repetition_penalty``, ``stop`` (strings), ``ignore_eot`` (see
        ``sampling`` and ``generation`` for the rules; greedy unless a
        sampling option is given, stopping at <|endoftext|>)."""
        return (token for _, token in self.stream_many(ids, n_tokens, 1, **settings))

    def generate(self, ids: Sequence[int], n_tokens: int, **settings) -> list[int]:
        """The new ids after ``ids`` (not including them); see ``stream``."""
        return list(self.stream(ids, n_tokens, **settings))

    def generate_many(
        self, ids: Sequence[int], n_tokens: int, n_samples: int, **settings
    ) -> list[list[int]]:
        """``n_samples`` continuations of ``ids``, decoded as one batch;
        sample ``j`` is the single generation with seed ``seed + j``."""
        samples: list[list[int]] = [[] for _ in range(n_samples)]
        for j, token in self.stream_many(ids, n_tokens, n_samples, **settings):
            samples[j].append(token)
        return samples

    def complete(self, prompt: str, n_tokens: int, n_samples: int = 1, **settings) -> list[str]:
        """Text in, text out: each sample's continuation of ``prompt``,
        ending before a stop string, without a final <|endoftext|>."""
        ids = self.encoder.encode(prompt) if prompt else [self.encoder.eot_token]
        samples = self.generate_many(ids, n_tokens, n_samples, **settings)
        rules = Settings(stop=tuple(settings.get("stop", ())),
                         ignore_eot=settings.get("ignore_eot", False))  # fmt: skip
        return [sample_text(self.encoder, sample, rules) for sample in samples]

    def stream_many(
        self,
        ids: Sequence[int],
        n_tokens: int,
        n_samples: int,
        *,
        seed: int | None = None,
        stop: Sequence[str] = (),
        **options,
    ) -> Iterator[tuple[int, int]]:
        """(sample, id) pairs as they are generated, step by step, for
        ``n_samples`` continuations of ``ids`` (see ``generate_many``)."""
        settings = Settings(stop=tuple(stop), **options)
        settings.check()
        prompt = self._ids(ids)
        check_lengths(prompt.shape[1], n_tokens, self.hparams.n_ctx, n_samples)
        seed = seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        samples = [
            SampleState(j, ids, seed + j, settings, self.encoder, self._seen(ids, settings))
            for j in range(n_samples)
        ]
        return self._decode(prompt, n_tokens, samples)

    def _seen(self, ids: Sequence[int], settings: Settings) -> np.ndarray | None:
        """[n_vocab] True at the prompt's ids, where a repetition penalty needs it."""
        if not settings.penalized:
            return None
        seen = np.zeros(self.hparams.n_vocab, dtype=bool)
        seen[np.asarray(ids, dtype=np.int64)] = True
        return self.backend.upload(seen, bool)

    def _decode(
        self, prompt: np.ndarray, n_tokens: int, samples: list[SampleState]
    ) -> Iterator[tuple[int, int]]:
        """The decode loop: run the prompt once; then per step, every sample
        still going picks a token, stopped ones leave the batch, and the
        rest take one more position (or slide their window)."""
        n_ctx = self.hparams.n_ctx
        cache = self.new_cache(1, min(prompt.shape[1] + n_tokens, n_ctx))
        logits = self.forward(prompt, cache, last_only=True)[:, 0]  # [1, n_vocab]
        if len(samples) > 1:  # every sample continues the prompt's cache
            cache = [layer.repeat(len(samples)) for layer in cache]
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
                    layer.keep(going)
            if cache[0].length == n_ctx:  # full: each sample goes on from its window
                ids = [window(s.sequence, n_ctx) for s in samples]
                cache = self.new_cache(len(samples), n_ctx)
            else:
                ids = [[s.sequence[-1]] for s in samples]
            ids = self.backend.upload(ids, np.int64)  # [n_batch, n_seq]
            logits = self.forward(ids, cache, last_only=True)[:, 0]


def load_model(
    model_size: str = "124M",
    models_dir: str | Path | None = None,
    *,
    backend: str | None = None,
    dtype: str = "float32",
    download: bool = True,
    keep_freed_memory: bool = True,
    show_progress: bool = True,
    encoder_dir: str | Path | None = None,
) -> GPT2:
    """Load ``models_dir/model_size`` (a name in the models folder, or a
    path): OpenAI's layout (a folder with ``hparams.json``, ``encoder.json``,
    ``vocab.bpe`` and weights, converted or a TensorFlow checkpoint), a
    transformers GPT-2 folder, or an llm.c ``.bin`` file (see ``sources``).
    A released size (124M, 355M, 774M, 1558M) that is not there is
    downloaded first, unless ``download=False``; ``models_dir`` None is the
    default folder (see ``locations``). ``encoder_dir`` is a folder with the
    vocabulary, for a model that has none (an llm.c file).

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
    source = open_source(model_size, models_dir, download=download,
                         show_progress=show_progress, encoder_dir=encoder_dir)  # fmt: skip
    hparams = source.hparams
    encoder = load_encoder(source.vocabulary)
    if encoder.n_vocab > hparams.n_vocab:
        raise WeightsError(
            f"{source.vocabulary}: the vocabulary has {encoder.n_vocab} tokens, more than "
            f"the model's n_vocab {hparams.n_vocab}"
        )
    params = params_from_tensors(source.tensors, hparams)
    params = map_params(params, lambda a: chosen.upload(a, dtype))
    return GPT2(hparams, encoder, params, chosen, dtype, source.path)
