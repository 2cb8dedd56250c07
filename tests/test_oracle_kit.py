"""The oracle kit: dump --detail/--format/--generate, compare (which names the
first operation that goes wrong and tells a near-tie from a bug), and the
tokens command. Commands run as the README runs them."""

import json
import math

import numpy as np
import pytest
from mirror import one_line_error, run, text
from tiny import make_tiny_model

from picogpt2 import gpt2
from picogpt2.activations import ALONE32, BLOCK, GENERATION, KEYS, RTOL32
from picogpt2.encoder import load_encoder
from picogpt2.model import load_model
from picogpt2.weights.formats.safetensors import read_tensors

IDS = "5,17,99,3,42,8,120,7,64,33"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # Small embeddings make every operation's effect visible at float32.
    make_tiny_model(root / "tiny", n_layer=3, n_head=4, n_embd=32, n_ctx=32, scale=0.05)
    return root


def args(models, *extra):
    return ["--model-size", "tiny", "--models-dir", str(models), *extra]


@pytest.fixture(scope="module")
def dumps(models, tmp_path_factory):
    """The float64 reference and our float32 dump, with every key."""
    out = tmp_path_factory.mktemp("dumps")
    for dtype in ("float64", "float32"):
        r = run("dump", "--ids", IDS, "--dtype", dtype, "--detail", "--generate", "6",
                "--out", str(out / f"{dtype}.npz"), *args(models))  # fmt: skip
        assert r.returncode == 0, text(r.stderr)
    return out


def load(path):
    with np.load(path) as f:
        return dict(f)


# -- dump ---------------------------------------------------------------------


def test_detail_keys_shapes_and_where_they_are_taken(dumps, models):
    ref = load(dumps / "float64.npz")
    n, h = 10, load_model("tiny", models).hparams
    shapes = {
        "ln_1": (3, n, 32), "q": (3, 4, n, 8), "k": (3, 4, n, 8), "v": (3, 4, n, 8),
        "attn_scores": (3, 4, n, n), "attn": (3, 4, n, n), "attn_heads": (3, n, 32),
        "attn_out": (3, n, 32), "resid_attn": (3, n, 32), "ln_2": (3, n, 32),
        "mlp_pre": (3, n, 128), "mlp_hidden": (3, n, 128), "mlp_out": (3, n, 32),
    }  # fmt: skip
    assert {k.name for k in BLOCK} == shapes.keys()
    for key, shape in shapes.items():
        assert ref[key].shape == shape and ref[key].dtype == np.float64, key
    # Each key is the value the README says it is.
    blocks = load_model("tiny", models, dtype="float64").params["blocks"]
    for i, block in enumerate(blocks):
        x = ref["hidden"][i]
        np.testing.assert_allclose(ref["ln_1"][i], gpt2.layer_norm(x, **block["ln_1"]), rtol=1e-12)
        np.testing.assert_allclose(ref["resid_attn"][i], x + ref["attn_out"][i], rtol=1e-12)
        after = ref["resid_attn"][i] + ref["mlp_out"][i]
        np.testing.assert_allclose(ref["hidden"][i + 1], after, rtol=1e-12)
        pre = gpt2.linear(ref["ln_2"][i][None], **block["mlp"]["c_fc"])[0]
        np.testing.assert_allclose(ref["mlp_pre"][i], pre, rtol=1e-12)
        np.testing.assert_allclose(ref["mlp_hidden"][i], gpt2.gelu(ref["mlp_pre"][i]), rtol=1e-12)
        scores = ref["q"][i] @ np.swapaxes(ref["k"][i], -1, -2) / np.sqrt(8)
        np.testing.assert_allclose(ref["attn_scores"][i], scores, rtol=1e-12)
        heads = np.concatenate([ref["attn"][i, h] @ ref["v"][i, h] for h in range(4)], axis=-1)
        np.testing.assert_allclose(ref["attn_heads"][i], heads, rtol=1e-12)
    assert ref["logits"].shape == (n, h.n_vocab) and "attn" in ref


def test_generate_records_each_step(dumps, models):
    ref = load(dumps / "float64.npz")
    assert set(GENERATION) <= ref.keys()
    assert ref["gen_ids"].shape == (6,) and ref["gen_top_ids"].shape == (6, 5)
    model = load_model("tiny", models, dtype="float64")
    ids = [int(i) for i in IDS.split(",")]
    assert ref["gen_ids"].tolist() == model.generate(ids, 6, ignore_eot=True)
    assert (ref["gen_ids"] == ref["gen_top_ids"][:, 0]).all()  # greedy: the most likely
    np.testing.assert_allclose(ref["gen_logprob"], ref["gen_top_logprobs"][:, 0])
    assert (ref["gen_gap"] >= 0).all() and (np.diff(ref["gen_top_logits"], axis=1) <= 0).all()
    assert (np.exp(ref["gen_top_logprobs"]).sum(1) <= 1 + 1e-12).all()
    # Every other key covers the prompt only, as the README says.
    n = len(ids)
    assert ref["ids"].tolist() == ids and ref["logits"].shape[0] == n
    assert ref["hidden"].shape[1] == ref["attn"].shape[-1] == n


def test_the_dump_keys_are_exactly_as_the_readme_states(dumps, models):
    ref = load(dumps / "float64.npz")
    n = ref["attn"].shape[-1]
    above = np.triu(np.ones((n, n), bool), 1)
    assert (ref["attn"][..., above] == 0).all()  # masked entries: exactly 0
    blocks = load_model("tiny", models, dtype="float64").params["blocks"]
    for i, block in enumerate(blocks):  # head h of q: columns [h*8, (h+1)*8) of the first third
        qkv = gpt2.linear(ref["ln_1"][i][None], **block["attn"]["c_attn"])[0]
        for h in range(4):
            np.testing.assert_allclose(ref["q"][i, h], qkv[:, h * 8 : (h + 1) * 8], rtol=1e-12)
            np.testing.assert_allclose(ref["v"][i, h], qkv[:, 64 + h * 8 : 64 + (h + 1) * 8],
                                       rtol=1e-12)  # fmt: skip
        merged = np.concatenate([ref["attn"][i, h] @ ref["v"][i, h] for h in range(4)], axis=-1)
        out = gpt2.linear(merged[None], **block["attn"]["c_proj"])[0]
        np.testing.assert_allclose(ref["attn_out"][i], out, rtol=1e-10)


@pytest.mark.parametrize("fmt, name", [("safetensors", "d.safetensors"), ("npy-dir", "d")])
def test_formats_hold_the_same_arrays(dumps, models, tmp_path, fmt, name):
    out = tmp_path / name
    r = run("dump", "--ids", IDS, "--dtype", "float64", "--detail", "--generate", "6",
            "--out", str(out), *args(models))  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    ref = load(dumps / "float64.npz")
    got = (
        dict(read_tensors(out)[0])
        if fmt == "safetensors"
        else {f.stem: np.load(f) for f in out.glob("*.npy")}
    )
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])
    if fmt == "npy-dir":
        assert json.loads((out / "metadata.json").read_text())["dtype"] == "float64"
    again = run("dump", "--ids", IDS, "--out", str(out), *args(models))  # one rule: never replaced
    one_line_error(again, 2, "exists: name a new file or folder")


def test_safetensors_dump_is_readable_by_the_safetensors_package(models, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    out = tmp_path / "d.safetensors"
    assert run("dump", "--ids", IDS, "--out", str(out), *args(models)).returncode == 0
    assert safetensors_numpy.load_file(str(out))["logits"].shape == (10, 264)


# -- compare ------------------------------------------------------------------


def compare(*paths, extra=()):
    return run("compare", *map(str, paths), *extra)


def test_float32_candidate_against_float64_reference_is_ok(dumps):
    r = compare(dumps / "float64.npz", dumps / "float32.npz")
    assert r.returncode == 0, text(r.stdout) + text(r.stderr)
    out = text(r.stdout)
    assert "float32 vs float64" in out and "NOT OK" not in out
    assert "OK: every shared key is within tolerance" in out
    assert "argmax: 10/10 positions agree" in out and "all 6 ids identical" in out
    for key in ("ln_1[0]", "mlp_hidden[2]", "hidden[3]", "ln_f", "logits"):
        assert f"\n{key} " in out


def test_json_report(dumps):
    r = compare(dumps / "float64.npz", dumps / "float32.npz", extra=["--json"])
    report = json.loads(r.stdout)
    assert report["ok"] and report["first_wrong"] is None and report["mode"] == "float32 vs float64"
    labels = [c["label"] for c in report["checks"]]
    assert labels.index("hidden[0]") < labels.index("ln_1[0]") < labels.index("q[0]")
    assert labels.index("mlp_out[0]") < labels.index("hidden[1]") < labels.index("ln_1[1]")


def exact_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))).astype(x.dtype)


def eps_outside(x, g, b, eps=1e-5):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    return g * centred / (np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True)) + eps) + b


@pytest.mark.parametrize(
    "bug, first_wrong",
    [("gelu", "mlp_hidden[0]"), ("layer_norm", "ln_1[0]"), ("k_and_v", "k[0]")],
)
def test_a_buggy_candidate_is_caught_at_its_first_wrong_operation(
    dumps, models, tmp_path, monkeypatch, bug, first_wrong
):
    if bug == "gelu":
        monkeypatch.setattr(gpt2, "gelu", exact_gelu)
    elif bug == "layer_norm":
        monkeypatch.setattr(gpt2, "layer_norm", eps_outside)
    else:
        original = np.split

        def split(array, sections, axis=0):
            q, k, v = original(array, sections, axis=axis)
            return [q, v, k]

        monkeypatch.setattr(gpt2.np, "split", split)
    model = load_model("tiny", models)
    buggy = model.trace([int(i) for i in IDS.split(",")], detail=True)
    monkeypatch.undo()
    candidate = tmp_path / "buggy.npz"
    np.savez(candidate, **buggy)
    r = compare(dumps / "float64.npz", candidate)
    assert r.returncode == 1, text(r.stdout) + text(r.stderr)
    last = text(r.stdout).splitlines()[-1]
    assert last.startswith(f"first over tolerance: {first_wrong} "), last
    assert "give the model (--model)" in last and "agrees" not in last
    r = compare(dumps / "float64.npz", candidate, extra=["--model", str(models / "tiny")])
    last = text(r.stdout).splitlines()[-1]
    assert r.returncode == 1 and last.startswith(f"blamed: {first_wrong}, "), last
    assert "(block 0)" in last
    report = json.loads(compare(dumps / "float64.npz", candidate, extra=["--json"]).stdout)
    assert report["first_wrong"]["label"] == first_wrong and report["blamed"] is None


def near_tie_pair(dumps, tmp_path, gap_fraction):
    """A reference whose position 4 has its two best logits ``gap_fraction``
    of the largest logit apart, and a candidate that picks the second."""
    ref = load(dumps / "float64.npz")
    logits = ref["logits"]
    row = logits[4]
    first, second = np.argsort(-row)[:2]
    row[second] = row[first] - gap_fraction * np.max(np.abs(logits))
    cand = {k: ref[k].astype(np.float32) if ref[k].dtype.kind == "f" else ref[k] for k in ref}
    cand["logits"] = logits.copy()
    cand["logits"][4, [first, second]] = row[second], row[first]
    for name, arrays in (("ref.npz", ref), ("cand.npz", cand)):
        np.savez(tmp_path / name, **arrays)
    return tmp_path / "ref.npz", tmp_path / "cand.npz"


def test_a_flipped_near_tie_is_labelled_and_passes(dumps, tmp_path):
    r = compare(*near_tie_pair(dumps, tmp_path, 1e-7))
    out = text(r.stdout)
    assert r.returncode == 0, out
    assert "argmax: 9/10 positions agree" in out and "position 4:" in out
    assert out.split("position 4:")[1].splitlines()[0].endswith("near-tie")


def test_a_real_disagreement_fails(dumps, tmp_path):
    r = compare(*near_tie_pair(dumps, tmp_path, 1e-2))
    assert r.returncode == 1
    assert "real disagreement" in text(r.stdout)


def test_candidate_with_a_subset_of_keys_as_a_folder(dumps, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    ref = load(dumps / "float32.npz")
    for key in ("hidden", "logits"):
        np.save(folder / f"{key}.npy", ref[key])
    r = compare(dumps / "float64.npz", folder)
    assert r.returncode == 0, text(r.stdout)
    assert "q[0]" not in text(r.stdout) and "hidden[3]" in text(r.stdout)


def test_a_generation_that_differs_is_explained(dumps, tmp_path):
    ref = load(dumps / "float64.npz")
    cand = {"gen_ids": ref["gen_ids"].copy()}
    cand["gen_ids"][3] = ref["gen_top_ids"][3, 1]
    np.savez(tmp_path / "gen.npz", **cand)
    r = compare(dumps / "float64.npz", tmp_path / "gen.npz")
    assert "the ids first differ at step 3" in text(r.stdout)
    assert r.returncode == (0 if "near-tie" in text(r.stdout) else 1)


@pytest.mark.parametrize(
    "change, words",
    [
        ("missing", "no such file or folder"),
        (
            "shape",
            "hidden[0]: the candidate is [10, 31], the reference [10, 32] (our layout: "
            "[n_layer+1, n, n_embd]",
        ),
        ("nan", "ln_f: the candidate holds NaN"),
        ("ids", "ids: the dumps are of different inputs"),
        ("garbage", "not a dump picogpt2 can read"),
    ],
)
def test_bad_input_is_exit_2(dumps, tmp_path, change, words):
    ref = load(dumps / "float32.npz")
    if change == "shape":
        ref["hidden"] = ref["hidden"][..., :31]
    elif change == "nan":
        ref["ln_f"][0, 0] = np.nan
    elif change == "ids":
        ref["ids"] = ref["ids"][::-1].copy()
    path = tmp_path / "cand.npz"
    if change == "garbage":
        path.write_bytes(b"not a zip")
    elif change != "missing":
        np.savez(path, **ref)
    one_line_error(compare(dumps / "float64.npz", path), 2, words)


def test_tolerances_documented_for_every_key():
    assert {"ids", "hidden", "ln_f", "logits"} | {k.name for k in BLOCK} == KEYS.keys()
    assert all(0 < ALONE32[k.made_by.rounding] <= RTOL32 for k in KEYS.values() if k.name != "ids")


# -- tokens ---------------------------------------------------------------------


def tokens(*extra, stdin=None):
    return run("tokens", *extra, stdin=stdin)


def test_tokens_encode_decode_and_lines(real_dir, real_encoder):
    vocab = ["--vocab-dir", str(real_dir)]
    assert json.loads(tokens("Hello my name is", *vocab).stdout) == [15496, 616, 1438, 318]
    r = tokens("--jsonl", *vocab, stdin="Hello\nmy name\n")
    assert [json.loads(line) for line in text(r.stdout).splitlines()] == [[15496], [1820, 1438]]
    assert text(tokens("--decode", "15496, 616", *vocab).stdout) == "Hello my\n"
    assert tokens("--decode", "--bytes", "[12520]", *vocab).stdout == b" \xf0\x9f"
    assert json.loads(tokens("x<|endoftext|>", *vocab).stdout) == real_encoder.encode(
        "x<|endoftext|>"
    )
    assert json.loads(tokens("--special", "x<|endoftext|>", *vocab).stdout) == [87, 50256]


def test_tokens_show_work_applies_merges_in_rank_order(real_dir, real_encoder):
    r = tokens("--show-work", "Hello  wörld", "--vocab-dir", str(real_dir))
    out = text(r.stdout)
    assert r.returncode == 0 and "3 pieces" in out and "byte-level  ĠwÃ¶rld" in out
    hello = out.split("piece 2")[0]
    ranks = [int(line.split("rank")[1].split(":")[0]) for line in hello.splitlines()
             if "merge rank" in line]  # fmt: skip
    assert ranks == sorted(ranks) and "H + ello -> Hello" in hello
    assert out.splitlines()[-1] == f"ids {json.dumps(real_encoder.encode('Hello  wörld'))}"


def test_tokens_of_a_tiny_model_folder(models):
    expected = load_encoder(models / "tiny").encode("the cat")
    r = tokens("the cat", "--model-size", "tiny", "--models-dir", str(models))
    assert json.loads(r.stdout) == expected


def test_tokens_of_a_folder_with_transformers_file_names(models, tmp_path):
    # vocab.json + merges.txt: once refused for lacking encoder.json.
    import shutil

    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copyfile(models / "tiny" / "encoder.json", folder / "vocab.json")
    shutil.copyfile(models / "tiny" / "vocab.bpe", folder / "merges.txt")
    expected = load_encoder(models / "tiny").encode("the cat")
    r = tokens("the cat", "--model-size", "hf", "--models-dir", str(tmp_path))
    assert r.returncode == 0 and json.loads(r.stdout) == expected, text(r.stderr)


@pytest.mark.parametrize(
    "extra, status, words",
    [
        (["--bytes", "x"], 2, "--bytes goes with --decode"),
        (["--decode", "1,x"], 2, "expected token ids"),
        (["--decode", "[1.5]"], 2, "expected token ids"),
        (["--decode", "999999"], 2, "token id 999999 is not in the vocabulary"),
        (["--model-size", "nope", "x"], 2, "no encoder.json and vocab.bpe in it"),
    ],
)
def test_tokens_bad_input(models, extra, status, words):
    r = (
        tokens(*extra, "--models-dir", str(models))
        if "--model-size" in extra
        else tokens(*extra, "--model-size", "tiny", "--models-dir", str(models))
    )
    one_line_error(r, status, words)


def test_the_docs_document_every_key():
    from mirror import ROOT

    doc = (ROOT / "docs" / "oracle.md").read_text(encoding="utf-8")
    for key in [*KEYS, *GENERATION]:
        assert f"`{key}`" in doc, key


def test_compare_is_a_function_with_a_typed_report(dumps):
    from picogpt2.oracle.comparison import Argmax, Check, Report, compare

    ref, cand = dict(np.load(dumps / "float64.npz")), dict(np.load(dumps / "float32.npz"))
    report = compare(ref, cand)
    assert isinstance(report, Report) and report.ok and report.blamed is None
    assert all(isinstance(c, Check) and c.ok for c in report.checks)
    assert isinstance(report.argmax, Argmax) and report.argmax.real_disagreements == 0
    cand["logits"] = cand["logits"].copy()
    cand["logits"][0, 0] += 1e3  # a flipped argmax, far beyond any near-tie
    report = compare(ref, cand)
    assert not report.ok and report.first_wrong.key == "logits"
    assert not report.argmax.disagreements[0].near_tie  # the verdict is data, not words
