"""The CuPy backend: the same model code on an NVIDIA GPU. Skipped unless
CuPy is installed and a GPU is visible (CI has none)."""

import numpy as np
import pytest
from tiny import make_tiny_model

from picogpt2.model import load_model
from picogpt2.util.backend import BackendError, get_backend

try:
    get_backend("cupy")
except BackendError as e:
    pytest.skip(f"no usable CuPy GPU: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_layer=3, n_head=4, n_embd=64, n_ctx=128, scale=0.1)
    return root


IDS = list(range(3, 40, 3))


def test_logits_agree_with_numpy_to_1e4_of_largest(models):
    cpu = load_model("tiny", models).logits(IDS)
    gpu = load_model("tiny", models, backend="cupy").logits(IDS)
    assert isinstance(gpu, np.ndarray) and gpu.dtype == np.float32
    assert np.max(np.abs(cpu - gpu)) <= 1e-4 * np.max(np.abs(cpu))


def test_greedy_tokens_match_over_64_steps(models):
    cpu = load_model("tiny", models).generate(IDS, 64)
    gpu = load_model("tiny", models, backend="cupy").generate(IDS, 64)
    assert cpu == gpu


def test_sampling_follows_the_same_rules(models):
    kwargs = {"top_k": 20, "top_p": 0.9, "temperature": 0.8, "seed": 3}
    cpu = load_model("tiny", models, dtype="float64").generate(IDS, 16, **kwargs)
    gpu = load_model("tiny", models, backend="cupy", dtype="float64").generate(IDS, 16, **kwargs)
    assert cpu == gpu


def test_trace_comes_back_as_numpy(models):
    out = load_model("tiny", models, backend="cupy").trace(IDS, attn=True)
    assert all(isinstance(v, np.ndarray) for v in out.values())
