"""A loaded GPT-2: hyperparameters, encoder, weights on a backend, and the
calls people make: ``logits``, ``generate``/``stream`` and ``trace``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from picogpt2 import locations
from picogpt2.backend import Backend, get_backend, tune_malloc
from picogpt2.download import download_model, read_marker
from picogpt2.encoder import Encoder, load_encoder
from picogpt2.errors import InputError
from picogpt2.gpt2 import KVCache, Params, Trace, gpt2
from picogpt2.hparams import HPARAMS_FILE, SIZES, HParams, read_hparams
from picogpt2.sampling import SplitMix64, check_sampling_args, sample
from picogpt2.weights import (
    DamagedWeightsError,
    WeightsError,
    has_complete_checkpoint,
    is_converted,
    load_weights,
)

DTYPES = ("float32", "float64")


def check_lengths(n_prompt: int, n_tokens: int, n_ctx: int) -> None:
    """The one check of a generation's lengths: at least one prompt token,
    ``n_tokens`` >= 0 new ones, all within the context of ``n_ctx``."""
    if n_prompt < 1:
        raise InputError("need at least one token id")
    if n_tokens < 0:
        raise InputError(f"n-tokens must be >= 0, got {n_tokens}")
    if n_tokens >= n_ctx:
        raise InputError(
            f"n-tokens {n_tokens} leaves no room for a prompt in the context of {n_ctx}"
        )
    if n_prompt + n_tokens > n_ctx:
        raise InputError(
            f"the prompt is {n_prompt} tokens; with n-tokens {n_tokens} that exceeds "
            f"the context of {n_ctx}"
        )


def tensor_shapes(h: HParams) -> dict[str, tuple[int, ...]]:
    """Every tensor of a GPT-2 checkpoint with these hyperparameters, by name.
    Linear weights are [1, in, out], as OpenAI stored them."""
    e = h.n_embd
    shapes = {"model/wte": (h.n_vocab, e), "model/wpe": (h.n_ctx, e)}
    shapes |= {"model/ln_f/g": (e,), "model/ln_f/b": (e,)}
    for i in range(h.n_layer):
        p = f"model/h{i}"
        for norm in ("ln_1", "ln_2"):
            shapes |= {f"{p}/{norm}/g": (e,), f"{p}/{norm}/b": (e,)}
        for name, n_in, n_out in [
            ("attn/c_attn", e, 3 * e),
            ("attn/c_proj", e, e),
            ("mlp/c_fc", e, 4 * e),
            ("mlp/c_proj", 4 * e, e),
        ]:
            shapes |= {f"{p}/{name}/w": (1, n_in, n_out), f"{p}/{name}/b": (n_out,)}
    return shapes


def check_tensors(tensors: dict[str, np.ndarray], hparams: HParams, model_dir: Path) -> None:
    """The weights are exactly the tensors ``hparams.json`` describes: no
    block missing or left over, every shape as its sizes say, floats."""
    expected = tensor_shapes(hparams)
    problem = None
    extra = sorted(tensors.keys() - expected.keys())
    missing = [name for name in expected if name not in tensors]
    if missing:
        problem = f"{missing[0]} is missing"
    elif extra:
        problem = f"{extra[0]} is left over"
    else:
        for name, shape in expected.items():
            actual = tensors[name]
            if actual.shape != shape:
                problem = f"{name} is {list(actual.shape)}, where they need {list(shape)}"
                break
            if actual.dtype.kind != "f":
                problem = f"{name} holds {actual.dtype}, not floats"
                break
    if problem:
        sizes = ", ".join(f"{k} {v}" for k, v in hparams.as_dict().items())
        raise WeightsError(
            f"{model_dir / HPARAMS_FILE} ({sizes}) does not match the weights in "
            f"{model_dir}: {problem}"
        )


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

    def _ids(self, ids: Sequence[int], n_tokens: int = 0) -> np.ndarray:
        """Check token ids (and room for ``n_tokens`` after them); put them
        where the model runs."""
        try:
            array = np.asarray(ids, dtype=np.int64).reshape(-1)
        except OverflowError:  # a Python int beyond 64 bits
            array = None
        if array is not None:
            check_lengths(array.size, n_tokens, self.hparams.n_ctx)
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

    def new_cache(self) -> list[KVCache]:
        """An empty cache: one ``KVCache`` per block, room for n_ctx positions."""
        h, like = self.hparams, self.params["wte"]
        return [KVCache(h.n_head, h.n_ctx, h.head_dim, like=like) for _ in range(h.n_layer)]

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), n_vocab] for every position of ``ids``."""
        logits = gpt2(self._ids(ids), **self.params, n_head=self.hparams.n_head)
        return self.backend.to_numpy(self._finite(logits))

    def trace(self, ids: Sequence[int], *, attn: bool = False) -> dict[str, np.ndarray]:
        """Every activation an implementer compares against, as NumPy arrays:

        - ``ids`` int64 [n]
        - ``logits`` [n, n_vocab]
        - ``hidden`` [n_layer+1, n, n_embd]: the residual stream; ``hidden[0]``
          is token + position embeddings, ``hidden[i]`` the output of block
          i-1, before any final norm (transformers' last hidden state is
          already normed: compare it with ``ln_f``)
        - ``ln_f`` [n, n_embd]: the final layer norm's output
        - ``attn`` [n_layer, n_head, n, n] attention probabilities, if asked
        """
        trace = Trace()
        device_ids = self._ids(ids)
        logits = gpt2(device_ids, **self.params, n_head=self.hparams.n_head, trace=trace)
        to_numpy = self.backend.to_numpy
        hidden = [trace.arrays["embeddings"]] + [t.arrays["hidden"] for t in trace.layers]
        out = {
            "ids": to_numpy(device_ids),
            "logits": to_numpy(self._finite(logits)),
            "hidden": np.stack([to_numpy(h) for h in hidden]),
            "ln_f": to_numpy(trace.arrays["ln_f"]),
        }
        if attn:
            out["attn"] = np.stack([to_numpy(t.arrays["attn"]) for t in trace.layers])
        return out

    def stream(
        self,
        ids: Sequence[int],
        n_tokens: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[int]:
        """Yield ``n_tokens`` new ids one at a time (see ``sampling`` for the
        rules; greedy unless a sampling option is given)."""
        check_sampling_args(temperature, top_k, top_p)
        device_ids = self._ids(ids, n_tokens)
        rng = SplitMix64(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
        return self._decode(device_ids, n_tokens, rng, temperature, top_k, top_p)

    def _decode(self, device_ids, n_tokens, rng, temperature, top_k, top_p) -> Iterator[int]:
        cache, n_head = self.new_cache(), self.hparams.n_head
        logits = gpt2(device_ids, **self.params, n_head=n_head, cache=cache, last_only=True)
        for i in range(n_tokens):
            next_logits = self._finite(logits[0])
            token = sample(next_logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)
            yield token
            if i + 1 < n_tokens:
                ids = self.backend.upload([token], np.int64)
                logits = gpt2(ids, **self.params, n_head=n_head, cache=cache, last_only=True)

    def generate(
        self,
        ids: Sequence[int],
        n_tokens: int,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> list[int]:
        """The ``n_tokens`` new ids after ``ids`` (not including them)."""
        return list(
            self.stream(ids, n_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        )


def load_model(
    model_size: str = "124M",
    models_dir: str | Path | None = None,
    *,
    backend: str | None = None,
    dtype: str = "float32",
    download: bool = True,
    keep_freed_memory: bool = True,
    show_progress: bool = True,
) -> GPT2:
    """Load ``models_dir/model_size``: any folder with ``hparams.json``,
    ``encoder.json``, ``vocab.bpe`` and weights (converted, or a TensorFlow
    checkpoint, converted on first use). A released size (124M, 355M, 774M,
    1558M) that is not there is downloaded first, unless ``download=False``;
    ``models_dir`` None is the default folder (see ``locations``).

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
    model_dir = locations.models_dir(models_dir) / model_size
    chosen = get_backend(backend)
    if keep_freed_memory:
        tune_malloc()
    prepare_folder(model_size, model_dir, download=download, show_progress=show_progress)
    hparams = read_hparams(model_dir)
    encoder = load_encoder(model_dir)
    if encoder.n_vocab > hparams.n_vocab:
        raise WeightsError(
            f"{model_dir}: encoder.json has {encoder.n_vocab} tokens, more than "
            f"n_vocab {hparams.n_vocab} in {HPARAMS_FILE}"
        )
    tensors = load_weights(model_dir, show_progress=show_progress)
    check_tensors(tensors, hparams, model_dir)
    params = map_params(params_from_tensors(tensors, hparams), lambda a: chosen.upload(a, dtype))
    return GPT2(hparams, encoder, params, chosen, dtype, model_dir)


def prepare_folder(
    model_size: str, model_dir: Path, *, download: bool, show_progress: bool
) -> None:
    """Make ``model_dir`` loadable: download a released size that is not
    there, finish what the downloader started (a download or a conversion
    that was interrupted, removing the shard as it would have), and report
    a damaged conversion with the way to mend it."""
    try:
        if is_converted(model_dir):
            return
    except DamagedWeightsError as e:
        raise WeightsError(f"{e}; {how_to_mend(model_size, model_dir)}") from None
    marker = read_marker(model_dir) if model_size in SIZES else None
    if marker is None and has_complete_checkpoint(model_dir):
        return  # the user's own checkpoint: load_weights converts it and keeps it
    if model_size not in SIZES:
        raise WeightsError(
            f"{model_dir}: no model there (a folder needs hparams.json, encoder.json, "
            f"vocab.bpe and weights); released sizes to download: {', '.join(SIZES)}"
        )
    keep_original = bool(marker and marker.get("keep_original"))
    if not download and not has_complete_checkpoint(model_dir):
        raise WeightsError(f"{model_dir}: GPT-2 {model_size} is not downloaded (download=False)")
    download_model(
        model_size, model_dir.parent, keep_original=keep_original, show_progress=show_progress
    )


def how_to_mend(model_size: str, model_dir: Path) -> str:
    if has_complete_checkpoint(model_dir):
        return "delete it, and picogpt2 converts the checkpoint beside it again"
    if model_size in SIZES:
        return f"delete it, and picogpt2 downloads GPT-2 {model_size} again"
    return "restore it from where it came from"
