"""Shared fixtures: the real GPT-2 vocabulary from ../shared, when present,
and a small converted model with the loads made of it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "gpt2-124M-real"


def pytest_collection_modifyitems(config, items):
    """The calibration matrix (minutes) runs only when asked for: -m calibration."""
    if "calibration" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="the calibration matrix: run with -m calibration")
    for item in items:
        if "calibration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not (REAL_DIR / "encoder.json").is_file():
        pytest.skip(f"real GPT-2 files not found at {REAL_DIR}")
    return REAL_DIR


@pytest.fixture(scope="session")
def real_encoder(real_dir):
    from picogpt2.encoder import load_encoder

    return load_encoder(real_dir)


@pytest.fixture(scope="session")
def tiktoken_gpt2(real_dir):
    """tiktoken's gpt2 encoding, built offline from the same two files."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(
        str(real_dir / "vocab.bpe"), str(real_dir / "encoder.json")
    )
    return tiktoken.Encoding(
        "gpt2",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> Path:
    """A models folder holding "tiny": 2 blocks 16 wide, a context of 16."""
    from tiny import make_tiny_model

    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_layer=2, n_head=2, n_embd=16, n_ctx=16)
    return root


@pytest.fixture(scope="module")
def converted_models(tmp_path_factory) -> Path:
    """A models folder holding "tiny" (context 64), converted once with its
    checkpoint kept, as a load leaves a user's own checkpoint."""
    from tiny import converted_tiny_models

    return converted_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def converted_model(converted_models):
    """That tiny model, loaded."""
    from picogpt2.model import load_model

    return load_model("tiny", converted_models, show_progress=False)


@pytest.fixture(scope="module")
def nan_model(converted_models, tmp_path_factory):
    """The tiny model with a NaN in ln_f/g, its CRC record left as it was."""
    from tiny import copy_model, without_checkpoint

    from picogpt2.weights.formats.safetensors import WEIGHTS_FILE

    root = tmp_path_factory.mktemp("nan")
    folder = without_checkpoint(copy_model(converted_models, root, "tiny"))
    path = folder / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    begin = json.loads(data[8 : 8 + n])["model/ln_f/g"]["data_offsets"][0]
    data[8 + n + begin : 8 + n + begin + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))
    return root
