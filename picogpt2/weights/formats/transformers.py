"""transformers GPT-2 folders (``--to hf``): ``config.json``,
``model.safetensors`` (or shards named by ``model.safetensors.index.json``),
``vocab.json`` and ``merges.txt``, read and written.

transformers' GPT-2 stores its linear layers as ``Conv1D``, whose weights
are [in, out] like OpenAI's, so every tensor maps one to one onto the
checkpoint's names (``params.schema``): ``transformer.h.3.attn.c_attn.weight``
[n_embd, 3*n_embd] is ``model/h3/attn/c_attn/w`` [1, n_embd, 3*n_embd]; a
layer norm's ``weight`` and ``bias`` are ``g`` and ``b``. A float32 file is
used where it lies (memory-mapped, nothing converted); float16 and bfloat16
are upcast to float32 once and cached beside it (``picogpt2.safetensors``,
see ``cache``). ``pytorch_model.bin`` is a pickle and is never opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from picogpt2.hparams import HParams
from picogpt2.util.atomic import atomic_folder
from picogpt2.util.errors import FormatError
from picogpt2.util.textio import parse_json
from picogpt2.weights.formats import cache
from picogpt2.weights.formats.opened import OpenedModel, fingerprint
from picogpt2.weights.formats.safetensors import (
    WEIGHTS_FILE,
    SafetensorsFile,
    entry_shapes,
    open_safetensors,
    write_tensors,
)
from picogpt2.weights.params import Tensor, check_layer_count, check_shapes, parse_hparams, schema
from picogpt2.weights.vocabulary import ENDOFTEXT, copy_vocabulary, read_vocabulary

NAME = "hf"
DESCRIPTION = "a transformers folder: config.json, model.safetensors, vocab.json, merges.txt"
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
CACHE_FILE = "picogpt2.safetensors"
PREFIX = "transformer."
HEAD = "lm_head.weight"
LEAVES = {"w": "weight", "b": "bias", "g": "weight", "": "weight"}
# Activation names that mean GPT-2's tanh approximation of GELU.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
# Buffers older transformers saved beside the weights: h.N.attn.bias and
# h.N.attn.masked_bias, the causal mask.
BUFFERS = ("bias", "masked_bias")


def hf_name(t: Tensor) -> str:
    """transformers' name of a tensor of the schema."""
    block = "" if t.layer is None else f"h.{t.layer}."
    return f"{PREFIX}{block}{t.module.replace('/', '.')}.{LEAVES[t.leaf]}"


def detect(path: Path) -> OpenedModel | None:
    """A transformers folder, opened: GPT-2's sizes from ``config.json``
    (refusing any setting that changes the math in a way picogpt2 does not
    implement), checked against the tensors the weight files hold; float32
    used in place, half precision from the cached float32 copy (made at
    ``weights()`` when missing)."""
    if not (path.is_dir() and (path / CONFIG_FILE).is_file()):
        return None
    hparams = read_config(path / CONFIG_FILE)
    files = [open_safetensors(file) for file in weight_files(path)]
    shapes = {}
    for file in files:
        header = entry_shapes(file.entries)
        for theirs, ours in checkpoint_names(header, hparams, file.path).items():
            shape, dtype = header[theirs]
            shapes[ours.name] = ((1, *shape) if ours.leaf == "w" else shape, dtype)
    check_shapes(shapes, hparams, path)
    identity = fingerprint((f.path, f.stat, f.head) for f in files)
    stored = {entry["dtype"] for file in files for entry in file.entries.values()}
    if stored <= {"F32", "F64"}:
        return OpenedModel(path, NAME, hparams, path, identity, mapped(files, hparams))

    def upcast() -> cache.Conversion:
        return {k: np.asarray(v, np.float32) for k, v in mapped(files, hparams).items()}, None

    mend = f"delete it, and picogpt2 converts {path} again"

    def convert() -> dict[str, np.ndarray]:
        return cache.converted(path / CACHE_FILE, identity, upcast, str(files[0].path), mend)

    tensors = cache.lookup(path / CACHE_FILE, identity, mend)
    return OpenedModel(path, NAME, hparams, path, identity, tensors, convert)


def read_config(path: Path) -> HParams:
    """GPT-2's sizes from ``config.json`` (``path``)."""
    try:
        config = parse_json(path.read_text(encoding="utf-8"))
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
    """The folder's safetensors files: one, or the shards its index names
    (plain file names in the folder, nothing else)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            names = set(parse_json(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"{index}: not a readable shard index ({e})") from None
        for name in sorted(names, key=str):
            plain = (
                isinstance(name, str) and Path(name).name == name and name not in ("", ".", "..")
            )
            if not plain or (folder / name).exists() and not (folder / name).is_file():
                raise FormatError(
                    f"{index}: names the shard {name!r}, which is not a file in {folder}"
                )
        return sorted(folder / name for name in names)
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    if list(folder.glob("pytorch_model*.bin")):
        raise FormatError(
            f"{folder}: holds only pytorch_model.bin, a pickle, which picogpt2 never opens (it "
            "can run code); save the model with safe_serialization=True to get model.safetensors"
        )
    raise FormatError(f"{folder}: a transformers folder with no model.safetensors")


def checkpoint_names(names: Iterable[str], hparams: HParams, path: Path) -> dict[str, Tensor]:
    """transformers' names in a file -> the schema's tensors; its causal-mask
    buffers and the output head (checked apart) are left out; any other
    name is refused."""
    names = list(names)
    check_layer_count(hparams, len(names), path)
    ours = {hf_name(t): t for t in schema(hparams)}
    found = {}
    for name in names:
        full = name if name.startswith(PREFIX) else PREFIX + name
        parts = full.split(".")
        if full in ours:
            found[name] = ours[full]
        elif name.removeprefix(PREFIX) != HEAD and not (
            len(parts) == 5 and parts[3] == "attn" and parts[4] in BUFFERS
        ):
            sizes = ", ".join(f"{k} {v}" for k, v in hparams.as_dict().items())
            raise FormatError(
                f"{path}: {name} is not a weight of transformers' GPT2LMHeadModel with "
                f"{CONFIG_FILE}'s sizes ({sizes})"
            )
    return found


def mapped(files: list[SafetensorsFile], hparams: HParams) -> dict[str, np.ndarray]:
    """The files' weights under the checkpoint's names and shapes (linear
    weights [1, in, out]), views of the memory-mapped files."""
    tensors, head = {}, None
    for file in files:
        arrays = file.tensors()
        for theirs, t in checkpoint_names(arrays, hparams, file.path).items():
            tensors[t.name] = arrays[theirs][None] if t.leaf == "w" else arrays[theirs]
        head = next((a for name, a in arrays.items() if name.removeprefix(PREFIX) == HEAD), head)
    if head is not None and not np.array_equal(head, tensors.get("model/wte")):
        raise FormatError(
            f"{files[0].path.parent}: {HEAD} differs from wte: GPT-2's output head is the token "
            "embedding (tied), and picogpt2 implements only that"
        )
    return tensors


def checksum_files(path: Path) -> list[Path]:
    """The files where picogpt2 records each tensor's CRC-32C: the cached
    conversion of half-precision weights (transformers records none)."""
    return [path / CACHE_FILE]


def config_json(hparams: HParams, eot_token: int) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": hparams.n_vocab,
        "n_positions": hparams.n_ctx,
        "n_ctx": hparams.n_ctx,  # the older name: llama.cpp's convert_hf_to_gguf.py reads it
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


def write(out: Path, hparams: HParams, tensors: dict[str, np.ndarray], vocabulary: Path) -> None:
    """A new folder ``out`` that ``GPT2LMHeadModel.from_pretrained`` and
    ``AutoTokenizer`` load: config.json, model.safetensors (float32, the
    head tied), vocab.json, merges.txt and tokenizer_config.json."""
    # Reading checks the vocabulary: a bad one is refused before anything is written.
    eot = read_vocabulary(vocabulary).token_to_id[ENDOFTEXT.encode()]
    named = {hf_name(t): np.asarray(tensors[t.name], "<f4").reshape(t.tree_shape)
             for t in schema(hparams)}  # fmt: skip
    tokenizer = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": hparams.n_ctx,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    with atomic_folder(out) as folder:
        (folder / CONFIG_FILE).write_text(json.dumps(config_json(hparams, eot), indent=2) + "\n")
        write_tensors(folder / WEIGHTS_FILE, dict(sorted(named.items())), {"format": "pt"})
        copy_vocabulary(vocabulary, folder, ("vocab.json", "merges.txt"))
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2) + "\n")
