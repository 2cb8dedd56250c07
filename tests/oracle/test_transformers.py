"""Exactness against HuggingFace transformers' GPT2LMHeadModel, loaded with
the same weights (its Conv1D keeps the checkpoint's [in, out] layout, so the
weights map one to one). Runs when torch and transformers are installed:

    python -m pip install -e ".[oracle]" && python -m pytest -q -m oracle
"""

import json

import numpy as np
import pytest
from tiny import make_tiny_model

from picogpt2.model import load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.oracle

N_INPUT = 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Random weights with GPT-2 124M's shapes, in OpenAI's file format."""
    root = tmp_path_factory.mktemp("oracle")
    make_tiny_model(
        root / "124M-random",
        n_layer=12,
        n_head=12,
        n_embd=768,
        n_ctx=1024,
        n_vocab=50257,
        scale=0.1,
    )
    return root


def hf_model(ours, dtype):
    h = ours.hparams
    config = transformers.GPT2Config(
        vocab_size=h.n_vocab,
        n_positions=h.n_ctx,
        n_embd=h.n_embd,
        n_layer=h.n_layer,
        n_head=h.n_head,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "eager"  # output_attentions needs the eager path
    model = transformers.GPT2LMHeadModel(config).eval()
    p = ours.params

    def t(a):
        return torch.from_numpy(np.array(a))

    state = {
        "transformer.wte.weight": t(p["wte"]),
        "transformer.wpe.weight": t(p["wpe"]),
        "transformer.ln_f.weight": t(p["ln_f"]["g"]),
        "transformer.ln_f.bias": t(p["ln_f"]["b"]),
    }
    for i, block in enumerate(p["blocks"]):
        pre = f"transformer.h.{i}."
        pairs = {
            "ln_1": block["ln_1"],
            "ln_2": block["ln_2"],
            "attn.c_attn": block["attn"]["c_attn"],
            "attn.c_proj": block["attn"]["c_proj"],
            "mlp.c_fc": block["mlp"]["c_fc"],
            "mlp.c_proj": block["mlp"]["c_proj"],
        }
        for name, params in pairs.items():
            weight = params["g"] if "g" in params else params["w"]
            state[pre + name + ".weight"] = t(weight)
            state[pre + name + ".bias"] = t(params["b"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m or "attn.bias" in m for m in missing)
    model.tie_weights()
    return model.to(dtype)


def input_ids(n_vocab):
    return np.random.default_rng(1).integers(0, n_vocab, N_INPUT).tolist()


@pytest.fixture(scope="module")
def float32_pair(folder):
    ours = load_model("124M-random", folder)
    return ours, hf_model(ours, torch.float32)


def test_float32_logits_within_2e5_of_largest(float32_pair):
    ours, theirs = float32_pair
    ids = input_ids(ours.hparams.n_vocab)
    mine = ours.logits(ids)
    with torch.no_grad():
        ref = theirs(torch.tensor([ids])).logits[0].numpy()
    err = np.max(np.abs(mine - ref)) / np.max(np.abs(ref))
    assert err <= 2e-5, err


def their_greedy(model, ids: list[int], n_tokens: int, **options) -> list[int]:
    """transformers' greedy generate, running the full count (no end-of-text
    stop: our oracle tests pass ignore_eot=True to match)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0, **options)  # fmt: skip
    return out[0, len(ids) :].tolist()


def test_greedy_32_tokens_match_generate(float32_pair):
    ours, theirs = float32_pair
    ids = input_ids(ours.hparams.n_vocab)
    assert ours.generate(ids, 32, ignore_eot=True) == their_greedy(theirs, ids, 32)


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_greedy_with_repetition_penalty_matches_generate(float32_pair, penalty):
    ours, theirs = float32_pair
    ids = input_ids(ours.hparams.n_vocab)[:16] * 2  # repeats for the penalty to act on
    mine = ours.generate(ids, 32, ignore_eot=True, repetition_penalty=penalty)
    assert mine == their_greedy(theirs, ids, 32, repetition_penalty=penalty)
    assert mine != ours.generate(ids, 32, ignore_eot=True)  # the penalty changed something


def test_float64_reference_agrees_to_1e10(folder):
    ours = load_model("124M-random", folder, dtype="float64")
    theirs = hf_model(ours, torch.float64)
    ids = input_ids(ours.hparams.n_vocab)[:32]
    trace = ours.trace(ids, attn=True)
    with torch.no_grad():
        ref = theirs(torch.tensor([ids]), output_hidden_states=True, output_attentions=True)
    hidden = [h[0].numpy() for h in ref.hidden_states]

    def rel(a, b):
        return np.max(np.abs(a - b)) / np.max(np.abs(b))

    assert rel(trace["logits"], ref.logits[0].numpy()) < 1e-10
    # transformers' last hidden state is already normed: it is our ln_f.
    for i in range(ours.hparams.n_layer):
        assert rel(trace["hidden"][i], hidden[i]) < 1e-10, i
    assert rel(trace["ln_f"], hidden[-1]) < 1e-10
    attn = np.stack([a[0].numpy() for a in ref.attentions])
    assert np.max(np.abs(trace["attn"] - attn)) < 1e-10


@pytest.mark.parametrize(
    "case",
    ["float32", "float16", "bfloat16", "sharded", "untied-equal"],
)
def test_transformers_save_pretrained_loads_and_matches(tmp_path, case):
    """A folder transformers itself wrote, read by picogpt2, gives
    transformers' logits (from the same saved weights, run in float32)."""
    import shutil

    from tiny import vocab_files

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=264, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        tie_word_embeddings=case != "untied-equal", bos_token_id=263, eos_token_id=263,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    if case == "untied-equal":
        model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(case, torch.float32)
    folder = tmp_path / "saved"
    options = {"max_shard_size": "60KB"} if case == "sharded" else {}
    model.to(dtype).save_pretrained(folder, **options)
    if case == "sharded":
        assert (folder / "model.safetensors.index.json").is_file()
    encoder, bpe = vocab_files()
    (folder / "vocab.json").write_text(json.dumps(encoder))
    (folder / "merges.txt").write_text(bpe)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    ids = list(range(3, 40, 3))
    with torch.no_grad():
        expected = theirs(torch.tensor([ids])).logits[0].numpy()
    ours = load_model("saved", tmp_path, show_progress=False).logits(ids)
    assert np.max(np.abs(ours - expected)) <= 2e-5 * np.max(np.abs(expected))
    shutil.rmtree(folder)


def test_export_loads_in_transformers_without_warnings(folder, tmp_path):
    from mirror import run

    r = run(
        "export", "124M-random", "--models-dir", str(folder), "--to", "hf", str(tmp_path / "hf")
    )
    assert r.returncode == 0, r.stderr
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = load_model("124M-random", folder)
    ids = input_ids(ours.hparams.n_vocab)[:16]
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].numpy()
    assert np.max(np.abs(ours.logits(ids) - theirs)) <= 2e-5 * np.max(np.abs(theirs))
