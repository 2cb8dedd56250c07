"""The oracle kit's model and dumps, shared by the dump and compare tests."""

import pytest
from mirror import run, text
from tiny import DUMP_IDS, make_tiny_model, tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # Small embeddings make every operation's effect visible at float32.
    make_tiny_model(root / "tiny", n_layer=3, n_head=4, n_embd=32, n_ctx=32, scale=0.05)
    return root


@pytest.fixture(scope="module")
def dumps(models, tmp_path_factory):
    """The float64 reference and our float32 dump, with every key."""
    out = tmp_path_factory.mktemp("dumps")
    for dtype in ("float64", "float32"):
        r = run("dump", "--ids", DUMP_IDS, "--dtype", dtype, "--detail", "--generate", "6",
                "--out", str(out / f"{dtype}.npz"), *tiny(models))  # fmt: skip
        assert r.returncode == 0, text(r.stderr)
    return out
