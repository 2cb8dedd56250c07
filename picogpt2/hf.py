"""transformers GPT-2 folders: ``config.json``, ``model.safetensors`` (or
shards with ``model.safetensors.index.json``), ``vocab.json`` and
``merges.txt``, read and written.

transformers' GPT-2 stores its linear layers as ``Conv1D``, whose weights
are [in, out] like OpenAI's, so every tensor maps one to one onto the
checkpoint's names: ``h.3.attn.c_attn.weight`` [n_embd, 3*n_embd] is
``model/h3/attn/c_attn/w`` [1, n_embd, 3*n_embd]. A float32 file is used
where it lies (memory-mapped, nothing converted); float16 and bfloat16 are
upcast to float32 once and cached beside it (``picogpt2.safetensors``).
``pytorch_model.bin`` is a pickle and is never opened.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from picogpt2.errors import FormatError
from picogpt2.hparams import HParams, parse_hparams
from picogpt2.weights import (
    WEIGHTS_FILE,
    cached_conversion,
    read_header,
    read_safetensors,
    write_safetensors,
)

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
CACHE_FILE = "picogpt2.safetensors"
PREFIX = "transformer."
# Activation names that mean GPT-2's tanh approximation of GELU.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
# Buffers older transformers saved beside the weights: h.N.attn.bias and
# h.N.attn.masked_bias, the causal mask.
BUFFERS = ("bias", "masked_bias")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_config(folder: Path) -> HParams:
    """GPT-2's sizes from ``config.json``, refusing any setting that changes
    the math in a way picogpt2 does not implement."""
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not a readable transformers config ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise FormatError(f'{path}: model_type {kind!r} is not GPT-2 ("gpt2")')
    refuse_unsupported(config, path)
    values = {
        "n_vocab": config.get("vocab_size"),
        "n_ctx": config.get("n_positions", config.get("n_ctx")),
        "n_embd": config.get("n_embd"),
        "n_head": config.get("n_head"),
        "n_layer": config.get("n_layer"),
    }
    return parse_hparams(values, str(path))


def refuse_unsupported(config: dict, path: Path) -> None:
    n_embd = config.get("n_embd")
    unsupported = {
        "activation_function": config.get("activation_function", "gelu_new") not in TANH_GELU,
        "scale_attn_weights": config.get("scale_attn_weights", True) is not True,
        "scale_attn_by_inverse_layer_idx": bool(config.get("scale_attn_by_inverse_layer_idx")),
        "reorder_and_upcast_attn": bool(config.get("reorder_and_upcast_attn")),
        "add_cross_attention": bool(config.get("add_cross_attention")),
        "n_inner": config.get("n_inner") not in (None, 4 * n_embd if n_embd else None),
        "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-5) != 1e-5,
    }
    for name, bad in unsupported.items():
        if bad:
            raise FormatError(
                f"{path}: {name} = {config.get(name)!r} changes GPT-2's math in a way picogpt2 "
                "does not implement"
            )


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files: one, or the shards its index names."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return sorted({folder / name for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{index}: not a readable shard index ({e})") from None
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    if list(folder.glob("pytorch_model*.bin")):
        raise FormatError(
            f"{folder}: holds only pytorch_model.bin, a pickle, which picogpt2 never opens (it "
            "can run code); save the model with safe_serialization=True to get model.safetensors"
        )
    raise FormatError(f"{folder}: a transformers folder with no model.safetensors")


def checkpoint_name(name: str) -> str | None:
    """A transformers GPT-2 weight's name -> the checkpoint's, or None for a
    buffer or the output head (checked apart)."""
    name = name.removeprefix(PREFIX)
    parts = name.split(".")
    if name == "lm_head.weight" or (len(parts) == 4 and parts[2] == "attn" and parts[3] in BUFFERS):
        return None
    if parts[0] in ("wte", "wpe") and parts[1:] == ["weight"]:
        return f"model/{parts[0]}"
    leaf = {"weight": "g", "bias": "b"}
    if parts[0] == "ln_f" and len(parts) == 2 and parts[1] in leaf:
        return f"model/ln_f/{leaf[parts[1]]}"
    if parts[0] == "h" and len(parts) in (4, 5) and parts[1].isdigit():
        layer, rest = parts[1], parts[2:]
        if rest[0] in ("ln_1", "ln_2") and len(rest) == 2 and rest[1] in leaf:
            return f"model/h{layer}/{rest[0]}/{leaf[rest[1]]}"
        if len(rest) == 3 and rest[1] in ("c_attn", "c_proj", "c_fc") and rest[2] in leaf:
            return f"model/h{layer}/{rest[0]}/{rest[1]}/{'w' if rest[2] == 'weight' else 'b'}"
    raise FormatError(f"{name}: not a weight of transformers' GPT2LMHeadModel")


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """The folder's weights under the checkpoint's names and shapes (linear
    weights [1, in, out]), float32 memory-mapped where the file is float32."""
    files = weight_files(folder)
    raw: dict[str, np.ndarray] = {}
    for path in files:
        raw |= read_safetensors(path)[0]
    tensors: dict[str, np.ndarray] = {}
    for name, array in raw.items():
        ours = checkpoint_name(name)
        if ours is not None:
            tensors[ours] = array[None] if ours.endswith("/w") else array
    head = raw.get("lm_head.weight", raw.get(PREFIX + "lm_head.weight"))
    if head is not None and not np.array_equal(head, tensors.get("model/wte")):
        raise FormatError(
            f"{folder}: lm_head.weight differs from wte: GPT-2's output head is the token "
            "embedding (tied), and picogpt2 implements only that"
        )
    return tensors


def load_tensors(folder: Path, *, show_progress: bool = True) -> dict[str, np.ndarray]:
    """``read_tensors``; half-precision files converted once, cached."""
    files = weight_files(folder)
    stored = {entry["dtype"] for path in files for entry in read_header(path)[0].values()}
    if stored <= {"F32", "F64"}:
        return read_tensors(folder)

    def upcast() -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) for k, v in read_tensors(folder).items()}

    return cached_conversion(folder / CACHE_FILE, files, upcast, show_progress=show_progress)


def hf_name(name: str) -> str:
    """The checkpoint's name -> transformers' (the inverse of checkpoint_name)."""
    parts = name.removeprefix("model/").split("/")
    leaf = {"g": "weight", "b": "bias", "w": "weight"}
    if parts[0] in ("wte", "wpe"):
        return f"{PREFIX}{parts[0]}.weight"
    layer = f"h.{parts[0][1:]}." if parts[0].startswith("h") else ""
    return PREFIX + layer + ".".join(parts[1 if layer else 0 : -1]) + "." + leaf[parts[-1]]


def config_json(hparams: HParams, eot_token: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": hparams.n_vocab,
        "n_positions": hparams.n_ctx,
        "n_embd": hparams.n_embd,
        "n_layer": hparams.n_layer,
        "n_head": hparams.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": eot_token,
        "eos_token_id": eot_token,
        "dtype": "float32",
    }


def write_folder(
    out: Path,
    hparams: HParams,
    tensors: dict[str, np.ndarray],
    vocabulary: tuple[Path, Path],
    eot_token: int,
) -> None:
    """A folder ``GPT2LMHeadModel.from_pretrained`` and ``AutoTokenizer`` load:
    config.json, model.safetensors (float32, the head tied), vocab.json and
    merges.txt. ``out`` is filled as given (callers write into a new folder)."""
    (out / CONFIG_FILE).write_text(json.dumps(config_json(hparams, eot_token), indent=2) + "\n")
    named = {hf_name(k): np.asarray(v, np.float32).reshape(v.shape[-2:] if k.endswith("/w")
             else v.shape) for k, v in tensors.items()}  # fmt: skip
    write_safetensors(out / WEIGHTS_FILE, dict(sorted(named.items())), {"format": "pt"})
    shutil.copyfile(vocabulary[0], out / "vocab.json")
    shutil.copyfile(vocabulary[1], out / "merges.txt")
    tokenizer = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": hparams.n_ctx,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n")
