"""A loaded GPT-2: hyperparameters, encoder, weights on a backend, and the
calls people make: ``logits``, ``generate``/``stream`` and ``trace``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picogpt2.backend import Backend, get_backend
from picogpt2.download import SIZES, download_model
from picogpt2.encoder import Encoder, load_encoder
from picogpt2.gpt2 import KVCache, Params, gpt2_hidden, lm_head
from picogpt2.sampling import SplitMix64, check_sampling_args, sample
from picogpt2.weights import WeightsError, has_complete_checkpoint, is_converted, load_weights

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class HParams:
    n_vocab: int
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int


def read_hparams(model_dir: Path) -> HParams:
    path = model_dir / "hparams.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return HParams(**{k: int(values[k]) for k in HParams.__dataclass_fields__})
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: not GPT-2 hyperparameters ({e!r})") from None


def params_from_tensors(tensors: dict[str, np.ndarray], hparams: HParams) -> Params:
    """The checkpoint's flat names -> the tree the model reads, e.g.
    ``model/h3/attn/c_attn/w`` [1, n_embd, 3*n_embd] -> ``blocks[3]["attn"]
    ["c_attn"]["w"]`` [n_embd, 3*n_embd] (a view: nothing is copied)."""

    def get(name: str) -> np.ndarray:
        try:
            return tensors[f"model/{name}"]
        except KeyError:
            raise WeightsError(f"the weights have no tensor model/{name}") from None

    def layer(prefix: str) -> dict[str, np.ndarray]:
        w = get(f"{prefix}/w")
        return {"w": w.reshape(w.shape[-2:]), "b": get(f"{prefix}/b")}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"g": get(f"{prefix}/g"), "b": get(f"{prefix}/b")}

    return {
        "wte": get("wte"),
        "wpe": get("wpe"),
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


def map_params(params: Params, fn) -> Params:
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

    def _ids(self, ids: Sequence[int], extra: int = 0) -> np.ndarray:
        """Validate token ids and put them where the model runs."""
        array = np.asarray(ids, dtype=np.int64).reshape(-1)
        if array.size == 0:
            raise ValueError("need at least one token id")
        if array.min() < 0 or array.max() >= self.hparams.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.hparams.n_vocab})")
        if array.size + extra > self.hparams.n_ctx:
            raise ValueError(
                f"{array.size} tokens + {extra} new exceeds the context of {self.hparams.n_ctx}"
            )
        return self.backend.upload(array, np.int64)

    def new_cache(self) -> KVCache:
        h = self.hparams
        return KVCache(h.n_layer, h.n_head, h.n_ctx, h.n_embd // h.n_head, like=self.params["wte"])

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), n_vocab] for every position of ``ids``."""
        x = gpt2_hidden(self._ids(ids), self.params, self.hparams.n_head)
        return self.backend.to_numpy(lm_head(x, self.params["wte"]))

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
        trace: dict = {"hidden": [], "attn": []}
        device_ids = self._ids(ids)
        x = gpt2_hidden(device_ids, self.params, self.hparams.n_head, trace=trace)
        to_numpy = self.backend.to_numpy
        out = {
            "ids": to_numpy(device_ids),
            "logits": to_numpy(lm_head(x, self.params["wte"])),
            "hidden": np.stack([to_numpy(h) for h in trace["hidden"]]),
            "ln_f": to_numpy(trace["ln_f"]),
        }
        if attn:
            out["attn"] = np.stack([to_numpy(a) for a in trace["attn"]])
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
        if n_tokens < 0:
            raise ValueError(f"the number of tokens must be >= 0, got {n_tokens}")
        device_ids = self._ids(ids, extra=n_tokens)
        rng = SplitMix64(seed if seed is not None else int.from_bytes(os.urandom(8), "little"))
        return self._decode(device_ids, n_tokens, rng, temperature, top_k, top_p)

    def _decode(self, device_ids, n_tokens, rng, temperature, top_k, top_p) -> Iterator[int]:
        cache, wte, n_head = self.new_cache(), self.params["wte"], self.hparams.n_head
        x = gpt2_hidden(device_ids, self.params, n_head, cache)
        for i in range(n_tokens):
            logits = lm_head(x[-1:], wte)[0]  # only the last position is needed
            token = sample(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p)
            yield token
            if i + 1 < n_tokens:
                x = gpt2_hidden(self.backend.upload([token], np.int64), self.params, n_head, cache)

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
    models_dir: str | Path = "weights",
    *,
    backend: str | None = "numpy",
    dtype: str = "float32",
    download: bool = True,
) -> GPT2:
    """Load ``models_dir/model_size``: any folder with ``hparams.json``,
    ``encoder.json``, ``vocab.bpe`` and weights (converted, or a TensorFlow
    checkpoint, converted on first use). A released size (124M, 355M, 774M,
    1558M) that is not there is downloaded first, unless ``download=False``.
    ``dtype="float64"`` runs the whole pass in float64 (a reference free of
    float32 rounding); ``backend="cupy"`` runs it on an NVIDIA GPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model_dir = Path(models_dir) / model_size
    chosen = get_backend(backend)
    if not is_converted(model_dir) and not has_complete_checkpoint(model_dir):
        if model_size not in SIZES:
            raise WeightsError(
                f"{model_dir}: no model there (a folder needs hparams.json, encoder.json, "
                f"vocab.bpe and weights); released sizes to download: {', '.join(SIZES)}"
            )
        if not download:
            raise WeightsError(
                f"{model_dir}: GPT-2 {model_size} is not downloaded (download=False)"
            )
        download_model(model_size, models_dir)
    hparams = read_hparams(model_dir)
    encoder = load_encoder(model_dir)
    tensors = load_weights(model_dir)
    params = map_params(params_from_tensors(tensors, hparams), lambda a: chosen.upload(a, dtype))
    return GPT2(hparams, encoder, params, chosen, dtype, model_dir)
