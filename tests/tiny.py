"""Tiny GPT-2 models in OpenAI's exact folder layout, with random weights,
for tests that must not need the network or the real 500 MB checkpoint;
and the ways tests damage a model's files on purpose."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from picogpt2.hparams import HParams
from picogpt2.weights.formats.tf_bundle import write_tf_checkpoint
from picogpt2.weights.params import schema
from picogpt2.weights.vocabulary import bytes_to_unicode

# The ids the oracle tests dump and compare.
DUMP_IDS = "5,17,99,3,42,8,120,7,64,33"
# A small merge list over the byte alphabet, enough to exercise BPE.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n")]


def vocab_files() -> tuple[dict[str, int], str]:
    spelled = list(bytes_to_unicode().values())
    tokens = spelled + [a + b for a, b in MERGES] + ["<|endoftext|>"]
    encoder = {t: i for i, t in enumerate(tokens)}
    bpe = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES)
    return encoder, bpe


def tiny_tensors(hparams: dict, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Random float32 tensors named and shaped exactly like OpenAI's (the
    schema's order); layer norm gains around 1."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for t in schema(HParams(**hparams)):
        values = (rng.standard_normal(t.shape) * scale).astype(np.float32)
        tensors[t.name] = 1 + values if t.leaf == "g" else values
    return tensors


def make_tiny_model(
    folder: Path,
    *,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 16,
    n_ctx: int = 64,
    seed: int = 0,
    n_shards: int = 1,
    n_vocab: int | None = None,
    scale: float = 0.2,
) -> Path:
    """Write hparams.json, encoder.json, vocab.bpe and a TF checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder, bpe = vocab_files()
    hparams = {
        "n_vocab": n_vocab or len(encoder),
        "n_ctx": n_ctx,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
    }
    (folder / "hparams.json").write_text(json.dumps(hparams))
    (folder / "encoder.json").write_text(json.dumps(encoder))
    (folder / "vocab.bpe").write_text(bpe)
    tensors = tiny_tensors(hparams, seed, scale)
    write_tf_checkpoint(folder / "model.ckpt", tensors, n_shards=n_shards)
    return folder


def converted(folder: Path) -> dict[str, np.ndarray]:
    """The tensors of an OpenAI-layout folder, converted first if needed."""
    from picogpt2.weights.formats import openai

    return openai.detect(folder).weights()


def is_converted(folder: Path) -> bool:
    """The folder's checkpoint is converted, and the conversion is of the
    checkpoint as it is now."""
    from picogpt2.weights.formats import openai

    opened = openai.detect(folder)
    return opened is not None and opened.tensors is not None


def converted_tiny_models(root: Path) -> Path:
    """A models folder holding "tiny" (context 64), converted once with its
    checkpoint kept, as a load leaves a user's own checkpoint."""
    make_tiny_model(root / "tiny", n_ctx=64)
    converted(root / "tiny")
    return root


def tiny(models: Path, *args: str) -> list[str]:
    """The command-line arguments that name the tiny model in ``models``."""
    return ["--model-size", "tiny", "--models-dir", str(models), *args]


def copy_model(models, tmp_path, name="copy") -> Path:
    folder = tmp_path / name
    shutil.copytree(models / "tiny", folder)
    return folder


def without_checkpoint(folder: Path) -> Path:
    for f in folder.glob("model.ckpt*"):
        f.unlink()
    (folder / "checkpoint").unlink()
    return folder


def rewrite_header(path: Path, change) -> None:
    """Apply ``change`` to the safetensors header dict, keeping the data."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header)
    text_ = json.dumps(header).encode()
    text_ += b" " * (-(8 + len(text_)) % 8)
    path.write_bytes(struct.pack("<Q", len(text_)) + text_ + data[8 + n :])


def poison(path: Path, offset: int) -> None:
    """A NaN written over the float32 at byte ``offset`` of ``path``."""
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))


def safetensors_offset(path: Path, name: str) -> int:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return 8 + n + json.loads(data[8 : 8 + n])[name]["data_offsets"][0]


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """An .npz's arrays, read whole."""
    with np.load(path) as f:
        return dict(f)
