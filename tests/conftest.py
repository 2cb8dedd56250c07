"""Shared fixtures: the real GPT-2 vocabulary from ../shared, when present."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "gpt2-124M-real"


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
