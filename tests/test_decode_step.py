"""The decoder generating runs per token (fastpath/decode_step.py) is gpt2.gpt2
for one new position, bit for bit: the same logits and the same keys and
values in the cache, step after step, at every batch size, in float32 and
float64, at the tests' widths and at 124M's (whose BLAS kernels differ), with
the weights laid out as generating holds them and as stored."""

import numpy as np
import pytest
from tiny import make_tiny_model, tiny_tensors

from picogpt2 import gpt2
from picogpt2.fastpath.decode_step import DecodeStep
from picogpt2.hparams import HParams
from picogpt2.model import GPT2, load_model
from picogpt2.state import KVCache
from picogpt2.util.errors import WeightsError
from picogpt2.weights.layout import stream_layout
from picogpt2.weights.params import map_params, params_from_tensors

SHAPES = {
    "4 heads of 8": HParams(n_vocab=97, n_ctx=64, n_embd=32, n_head=4, n_layer=2),
    "3 heads of 12": HParams(n_vocab=97, n_ctx=64, n_embd=36, n_head=3, n_layer=2),  # sqrt(12)
    "124M's width": HParams(n_vocab=500, n_ctx=64, n_embd=768, n_head=12, n_layer=1),
}


def params(h: HParams, dtype: str, layout: str = "stream") -> dict:
    """Random weights, laid out as generating holds them (``stream``) or as
    the checkpoint stores them."""
    tensors = params_from_tensors(tiny_tensors(h.as_dict(), seed=1, scale=0.3), h)
    tensors = stream_layout(tensors) if layout == "stream" else tensors
    return map_params(tensors, lambda a: np.asarray(a, dtype))


def caches(h: HParams, n_batch: int, like: np.ndarray) -> list[KVCache]:
    return [KVCache(n_batch, h.n_head, 40, h.n_embd // h.n_head, like) for _ in range(h.n_layer)]


def assert_same_caches(ours: list[KVCache], spec: list[KVCache]) -> None:
    for a, b in zip(ours, spec, strict=True):
        assert a.length == b.length
        np.testing.assert_array_equal(a.k[:, :, : a.length], b.k[:, :, : b.length])
        np.testing.assert_array_equal(a.v[:, :, : a.length], b.v[:, :, : b.length])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_batch", [1, 3])
@pytest.mark.parametrize("layout", ["stream", "stored"])
def test_each_step_equals_gpt2_bit_for_bit(shape, dtype, n_batch, layout):
    h = SHAPES[shape]
    p = params(h, dtype, layout)
    rng = np.random.default_rng(n_batch)
    prompt = rng.integers(0, h.n_vocab, (n_batch, 7))
    ours, spec = caches(h, n_batch, p["wte"]), caches(h, n_batch, p["wte"])
    for cache in (ours, spec):
        gpt2.gpt2(prompt, **p, n_head=h.n_head, cache=cache, last_only=True)
    step = DecodeStep(p, h.n_head)
    for _ in range(12):
        ids = rng.integers(0, h.n_vocab, (n_batch, 1))
        logits = step(ids, ours)
        expected = gpt2.gpt2(ids, **p, n_head=h.n_head, cache=spec, last_only=True)[:, 0]
        assert logits.dtype == np.dtype(dtype) and logits.shape == (n_batch, h.n_vocab)
        np.testing.assert_array_equal(logits, expected)
        assert_same_caches(ours, spec)


def test_a_batch_that_shrinks_keeps_equal():
    # Samples that stop leave the batch: the decoder takes the smaller batch.
    h = SHAPES["4 heads of 8"]
    p = params(h, "float32")
    ours, spec = caches(h, 3, p["wte"]), caches(h, 3, p["wte"])
    for cache in (ours, spec):
        gpt2.gpt2(np.array([[1, 2], [3, 4], [5, 6]]), **p, n_head=h.n_head, cache=cache)
    step = DecodeStep(p, h.n_head)
    for rows in ([0, 1, 2], [0, 2], [1], [0]):
        for cache in (ours, spec):
            for layer in cache:
                layer.k, layer.v = layer.k[rows], layer.v[rows]
        ids = np.arange(len(rows))[:, None] + 10
        expected = gpt2.gpt2(ids, **p, n_head=h.n_head, cache=spec, last_only=True)[:, 0]
        np.testing.assert_array_equal(step(ids, ours), expected)
        assert_same_caches(ours, spec)


def test_a_first_position_equals_gpt2():
    # A one-token prompt (the empty prompt's <|endoftext|>) runs the decoder
    # on an empty cache.
    h = SHAPES["4 heads of 8"]
    p = params(h, "float32")
    ours, spec = caches(h, 2, p["wte"]), caches(h, 2, p["wte"])
    ids = np.array([[96], [3]])
    expected = gpt2.gpt2(ids, **p, n_head=h.n_head, cache=spec, last_only=True)[:, 0]
    np.testing.assert_array_equal(DecodeStep(p, h.n_head)(ids, ours), expected)
    assert_same_caches(ours, spec)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_layer=2, n_head=4, n_embd=32, n_ctx=64, scale=0.3)
    return load_model("tiny", root)


def test_generating_runs_the_decoder_and_keeps_greedy_ids(model):
    # Greedy ids equal the argmax of gpt2's logits over the whole sequence.
    ids = [5, 17, 99, 3]
    new = model.generate(ids, 8)
    sequence = list(ids)
    for _ in range(8):
        sequence.append(int(np.argmax(model.logits(sequence)[-1])))
    assert new == sequence[len(ids) :]


def test_a_step_with_damaged_weights_is_a_weights_error(model):
    # The prompt is fine; the position the step embeds has NaN weights.
    wpe = np.array(model.params["wpe"])
    wpe[3] = np.nan
    damaged = GPT2(model.hparams, model.encoder, {**model.params, "wpe": wpe}, model.backend,
                   "float32", model.model_dir)  # fmt: skip
    cache = damaged.new_cache()
    damaged.forward(damaged.upload_ids([1, 2, 3]), cache)
    with pytest.raises(WeightsError, match="not finite"):
        damaged.new_decoder()(np.array([[42]]), cache)
