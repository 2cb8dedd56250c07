"""The forward pass and the model: the spec's functions, the KV cache, the
trace, loading, and the checks the library makes of what it is given."""

import numpy as np
import pytest
from tiny import make_tiny_model

from picogpt2 import gpt2
from picogpt2.fastpath.decode_step import DecodeStep
from picogpt2.model import load_model
from picogpt2.state import Trace
from picogpt2.util.errors import WeightsError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_layer=3, n_head=4, n_embd=32, n_ctx=48)
    return root


@pytest.fixture(scope="module")
def model(models):
    return load_model("tiny", models)


IDS = [83, 257, 220, 66, 64, 83, 220, 259, 258, 220, 71, 64, 83, 12, 99]


def test_gelu_is_the_tanh_form():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(gpt2.gelu(x), expected, rtol=1e-15)
    assert gpt2.gelu(np.float32(1.0)) == pytest.approx(0.8411920, abs=1e-7)


def test_softmax_is_stable_and_normalised():
    p = gpt2.softmax(np.array([[1000.0, 1000.0, -np.inf]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]])


def test_layer_norm_uses_biased_variance_and_eps_inside_sqrt():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    out = gpt2.layer_norm(x, np.ones(4), np.zeros(4))
    np.testing.assert_allclose(out, (x - 2.5) / np.sqrt(1.25 + 1e-5), rtol=1e-14)


def test_attention_is_causal():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 2, 5, 4))
    trace = Trace()
    out = gpt2.attention(q, k, v, trace)
    probs = trace.arrays["attn"]
    assert (np.triu(probs[0], 1) == 0).all() and np.allclose(probs.sum(-1), 1)
    np.testing.assert_allclose(out, probs @ v, rtol=1e-14)
    # Changing a later position never changes an earlier output.
    k2, v2 = k.copy(), v.copy()
    k2[:, 3:], v2[:, 3:] = 9.0, 9.0
    out2 = gpt2.attention(q, k2, v2)
    np.testing.assert_allclose(out[:, :3], out2[:, :3])


def test_logits_shape_and_dtype(model):
    logits = model.logits(IDS)
    assert logits.shape == (len(IDS), model.hparams.n_vocab) and logits.dtype == np.float32


def forward(model, ids, cache=None, **kwargs):
    """gpt2 on one sequence: [n_seq] -> [n_seq, n_vocab]."""
    return gpt2.gpt2(np.array([ids]), **model.params, n_head=4, cache=cache, **kwargs)[0]


def test_cache_gives_the_same_logits(model):
    full = model.logits(IDS)
    for split in (1, 5, len(IDS) - 1):
        cache = model.new_cache()
        parts = [IDS[:split], *[[i] for i in IDS[split:]]]
        rows = [forward(model, p, cache) for p in parts]
        np.testing.assert_allclose(np.concatenate(rows), full, rtol=1e-5, atol=1e-5)
        assert [c.length for c in cache] == [len(IDS)] * model.hparams.n_layer


def test_cache_never_reads_past_its_length(model):
    # The buffers start uninitialised; NaN in every slot shows none is read
    # before it is written.
    cache = model.new_cache()
    for layer in cache:
        layer.k[...] = np.nan
        layer.v[...] = np.nan
    first = forward(model, IDS[:5], cache)
    rest = [forward(model, [i], cache) for i in IDS[5:]]
    np.testing.assert_allclose(
        np.concatenate([first, *rest]), model.logits(IDS), rtol=1e-5, atol=1e-5
    )


def test_each_layer_cache_holds_its_own_keys_and_values(model):
    cache = model.new_cache()
    forward(model, IDS[:6], cache)
    trace = gpt2.Trace()
    forward(model, IDS[:6], trace=trace)
    assert len(cache) == len(model.params["blocks"])
    for layer_cache in cache:
        assert layer_cache.length == 6 and layer_cache.k.shape == (1, 4, 48, 8)
    # Layer 1's keys are computed from block 0's output, not the embeddings.
    x = trace.layers[0].arrays["hidden"]
    block = model.params["blocks"][1]
    qkv = gpt2.linear(gpt2.layer_norm(x, **block["ln_1"]), **block["attn"]["c_attn"])
    k = gpt2.split_heads(np.split(qkv, 3, axis=-1)[1], 4)
    np.testing.assert_allclose(cache[1].k[:, :, :6], k, rtol=1e-6)


def test_positions_continue_after_the_cache(model):
    # A token after a cached prefix differs from the same token alone.
    cache = model.new_cache()
    forward(model, IDS[:4], cache)
    after = forward(model, [IDS[4]], cache)
    alone = forward(model, [IDS[4]])
    assert not np.allclose(after, alone)


def test_last_only_is_the_last_row(model):
    # One row goes through BLAS's matrix-vector product: equal to float32 rounding.
    full = forward(model, IDS)
    np.testing.assert_allclose(forward(model, IDS, last_only=True), full[-1:], rtol=1e-5, atol=1e-6)


def test_the_spec_function_is_what_runs(model, monkeypatch):
    # logits, trace and a generation's prompt go through gpt2.gpt2; each
    # further token through the decoder, equal to it bit for bit
    # (tests/test_decode_step.py).
    calls, steps = [], []
    original, original_step = gpt2.gpt2, DecodeStep.__call__

    def counting(*args, **kwargs):
        calls.append(kwargs.get("last_only", False))
        return original(*args, **kwargs)

    def counting_step(self, ids, cache):
        steps.append(ids.shape)
        return original_step(self, ids, cache)

    monkeypatch.setattr(gpt2, "gpt2", counting)
    import picogpt2.model

    monkeypatch.setattr(picogpt2.model, "gpt2", counting)
    monkeypatch.setattr(DecodeStep, "__call__", counting_step)
    model.logits(IDS)
    model.trace(IDS)
    model.generate(IDS, 4)
    assert calls == [False, False, True] and steps == [(1, 1)] * 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_silent_upcast_in_any_intermediate(models, monkeypatch, dtype):
    model = load_model("tiny", models, dtype=dtype)
    seen = []
    for name in ("gelu", "softmax", "layer_norm", "linear", "ffn", "attention", "split_heads",
                 "merge_heads", "mha", "transformer_block", "lm_head", "gpt2"):  # fmt: skip
        original = getattr(gpt2, name)

        def recording(*args, _original=original, _name=name, **kwargs):
            out = _original(*args, **kwargs)
            for array in out if isinstance(out, tuple) else (out,):
                seen.append((_name, array.dtype))
            return out

        monkeypatch.setattr(gpt2, name, recording)
    import picogpt2.model

    monkeypatch.setattr(picogpt2.model, "gpt2", gpt2.gpt2)
    cache = model.new_cache()
    model.forward(model.upload_ids(IDS[:5]), cache)
    model.forward(model.upload_ids(IDS[5:6]), cache, last_only=True)
    assert len(seen) > 50
    assert {d for _, d in seen} == {np.dtype(dtype)}, sorted(set(seen))


def test_float64_agrees_with_float32(models):
    f32 = load_model("tiny", models).logits(IDS)
    f64 = load_model("tiny", models, dtype="float64").logits(IDS)
    assert f64.dtype == np.float64
    assert np.max(np.abs(f32 - f64)) < 1e-5 * np.max(np.abs(f64))


def test_generate_returns_new_ids_and_greedy_matches_argmax(model):
    new = model.generate(IDS, 6)
    assert len(new) == 6
    sequence = list(IDS)
    for _ in range(6):
        sequence.append(int(np.argmax(model.logits(sequence)[-1])))
    assert sequence[len(IDS) :] == new


def test_top_k_one_is_greedy(model):
    assert model.generate(IDS, 5, top_k=1, seed=3) == model.generate(IDS, 5)


def test_seed_makes_sampling_reproducible(model):
    a = model.generate(IDS, 8, top_k=50, top_p=0.95, temperature=1.3, seed=42)
    b = model.generate(IDS, 8, top_k=50, top_p=0.95, temperature=1.3, seed=42)
    c = model.generate(IDS, 8, top_k=50, top_p=0.95, temperature=1.3, seed=43)
    assert a == b and a != c


def test_trace_keys_shapes_and_dtypes(model):
    h, n = model.hparams, len(IDS)
    out = model.trace(IDS, attn=True)
    assert out["ids"].dtype == np.int64 and out["ids"].tolist() == IDS
    assert out["logits"].shape == (n, h.n_vocab)
    assert out["hidden"].shape == (h.n_layer + 1, n, h.n_embd)
    assert out["ln_f"].shape == (n, h.n_embd)
    assert out["attn"].shape == (h.n_layer, h.n_head, n, n)
    np.testing.assert_allclose(out["logits"], model.logits(IDS), rtol=1e-6)
    wte, wpe = model.params["wte"], model.params["wpe"]
    np.testing.assert_array_equal(out["hidden"][0], wte[IDS] + wpe[:n])
    ln_f = model.params["ln_f"]
    np.testing.assert_allclose(out["ln_f"], gpt2.layer_norm(out["hidden"][-1], **ln_f), rtol=1e-6)
    assert "attn" not in model.trace(IDS)


def test_context_and_id_limits(model):
    with pytest.raises(ValueError, match="the prompt is 49 tokens, more than the context of 48"):
        model.generate([1] * 49, 1)
    assert len(model.generate([1] * 48, 3, ignore_eot=True)) == 3  # the window slides
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 264\)"):
        model.logits([264])
    with pytest.raises(ValueError, match="at least one"):
        model.logits([])
    with pytest.raises(ValueError, match="top-p"):
        model.generate(IDS, 1, top_p=0)


def test_load_refuses_download_when_told(tmp_path):
    with pytest.raises(WeightsError, match="not downloaded"):
        load_model("124M", tmp_path, download=False)
    with pytest.raises(WeightsError, match="no model there"):
        load_model("mine", tmp_path)


def test_unknown_dtype_and_backend(models):
    from picogpt2.util.backend import BackendError

    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny", models, dtype="float16")
    with pytest.raises(BackendError, match="unknown backend"):
        load_model("tiny", models, backend="jax")


def test_sharded_openai_layout_folder_loads(tmp_path):
    make_tiny_model(tmp_path / "ft", n_shards=2)
    model = load_model("ft", tmp_path)
    assert model.logits([1, 2]).shape == (2, 264)
    assert (tmp_path / "ft" / "model.ckpt.data-00000-of-00002").exists()  # user's files kept


def test_backend_from_environment(models, monkeypatch):
    # One rule everywhere: the argument, else $PICOGPT2_BACKEND, else NumPy.
    # load_model's own default used to be "numpy", ignoring the variable.
    from picogpt2.util.backend import BackendError

    monkeypatch.setenv("PICOGPT2_BACKEND", "numpy")
    assert load_model("tiny", models).backend.name == "numpy"
    monkeypatch.setenv("PICOGPT2_BACKEND", "tpu")
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        load_model("tiny", models)
    assert load_model("tiny", models, backend="numpy").backend.name == "numpy"


def test_the_keys_gpt2_records_are_the_operation_tables(models):
    from picogpt2.activations import BLOCK, EMBEDDINGS, KEYS

    model = load_model("tiny", models)
    trace = Trace()
    model.forward(model.upload_ids([1, 2, 3]), trace=trace)
    assert set(trace.arrays) == {EMBEDDINGS, "ln_f"}
    per_block = {key.name for key in BLOCK} | {"hidden"}
    assert all(set(layer.arrays) == per_block for layer in trace.layers)
    # The table: these, plus the ids in and the logits out, each made by an operation.
    assert KEYS.keys() == per_block | {"ids", "ln_f", "logits"}
    assert all(key.made_by is not None for name, key in KEYS.items() if name != "ids")


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m: m.generate([1.5, 2], 3), "flat sequence of integers"),
        (lambda m: m.generate([[1, 2]], 3), "flat sequence of integers"),
        (lambda m: m.generate([1, 2], 3, top_k=2.5), "top-k must be an integer"),
        (lambda m: m.generate([1, 2], 3, seed=1.5), "seed must be an integer"),
        (lambda m: m.generate([1, 2], 2.5), "n-tokens must be an integer"),
        (lambda m: m.generate([1, 2], 3, temperature="hot"), "temperature must be a number"),
        (lambda m: m.complete(b"Hello", 3), "the prompt must be text"),
    ],
)
def test_the_library_refuses_bad_arguments_with_its_own_error(converted_model, call, words):
    from picogpt2.util.errors import InputError

    with pytest.raises(InputError, match=words):
        call(converted_model)


def test_a_trace_and_a_score_that_cannot_fit_are_refused(converted_model):
    from dataclasses import replace

    from picogpt2.model import GPT2
    from picogpt2.scoring.perplexity import score
    from picogpt2.util.errors import InputError

    small = replace(converted_model.backend, available=lambda: 10_000)  # bytes
    cramped = GPT2(
        converted_model.hparams,
        converted_model.encoder,
        converted_model.params,
        small,
        "float32",
        converted_model.model_dir,
    )
    with pytest.raises(InputError, match="a trace of 20 tokens would need about"):
        cramped.trace(list(range(20)), detail=True)
    with pytest.raises(InputError, match="scoring windows of 20 tokens would need about"):
        score(cramped, converted_model.encoder.decode(list(range(21, 41))))
    assert converted_model.trace(list(range(20)), detail=True)["attn"].shape == (2, 2, 20, 20)
