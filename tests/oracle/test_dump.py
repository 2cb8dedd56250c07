"""dump: every activation of a forward pass (and of a decoding) in each
format, whole or not at all, and what the docs say each key is."""

import json

import numpy as np
import pytest
from mirror import ROOT, full_disk, one_line_error, run, text
from tiny import DUMP_IDS, read_npz, tiny

from picogpt2 import gpt2
from picogpt2.activations import BLOCK, GENERATION, KEYS
from picogpt2.model import load_model
from picogpt2.weights.formats.safetensors import read_tensors


def test_a_dump_never_replaces_a_file(converted_models, tmp_path):
    out = tmp_path / "ref.npz"
    out.write_bytes(b"mine")
    r = run("dump", "--ids", "1,2", "--out", str(out), *tiny(converted_models))
    one_line_error(r, 2, "exists: name a new file or folder")
    assert out.read_bytes() == b"mine"


def test_an_npy_folder_on_a_full_disk_names_the_file(converted_models, tmp_path):
    out = tmp_path / "ref"
    r = run("dump", "--ids", "1,2", "--detail", "--out", str(out), *tiny(converted_models),
            preexec_fn=full_disk(1500))  # fmt: skip
    one_line_error(r, 1, str(out), ".npy", "File too large")
    assert list(tmp_path.iterdir()) == []


def test_detail_keys_shapes_and_where_they_are_taken(dumps, models):
    ref = read_npz(dumps / "float64.npz")
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
    ref = read_npz(dumps / "float64.npz")
    assert set(GENERATION) <= ref.keys()
    assert ref["gen_ids"].shape == (6,) and ref["gen_top_ids"].shape == (6, 5)
    model = load_model("tiny", models, dtype="float64")
    ids = [int(i) for i in DUMP_IDS.split(",")]
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
    ref = read_npz(dumps / "float64.npz")
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
    r = run("dump", "--ids", DUMP_IDS, "--dtype", "float64", "--detail", "--generate", "6",
            "--out", str(out), *tiny(models))  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    ref = read_npz(dumps / "float64.npz")
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
    # One rule for every format: never replaced.
    again = run("dump", "--ids", DUMP_IDS, "--out", str(out), *tiny(models))
    one_line_error(again, 2, "exists: name a new file or folder")


def test_safetensors_dump_is_readable_by_the_safetensors_package(models, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    out = tmp_path / "d.safetensors"
    assert run("dump", "--ids", DUMP_IDS, "--out", str(out), *tiny(models)).returncode == 0
    assert safetensors_numpy.load_file(str(out))["logits"].shape == (10, 264)


def test_the_docs_document_every_key():
    doc = (ROOT / "docs" / "oracle.md").read_text(encoding="utf-8")
    for key in [*KEYS, *GENERATION]:
        assert f"`{key}`" in doc, key


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dump_keys_shapes_dtypes(small_models, tmp_path, dtype):
    out = tmp_path / "ref.npz"
    r = run("dump", "--ids", "5,6,7,8", "--dtype", dtype, "--attn", "--out", str(out),
            *tiny(small_models))  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    with np.load(out) as f:
        data = dict(f)
    assert data["ids"].dtype == np.int64 and data["ids"].tolist() == [5, 6, 7, 8]
    assert data["logits"].shape == (4, 264) and data["logits"].dtype == dtype
    assert data["hidden"].shape == (3, 4, 16) and data["hidden"].dtype == dtype
    assert data["ln_f"].shape == (4, 16)
    assert data["attn"].shape == (2, 2, 4, 4)
    model = load_model("tiny", small_models, dtype=dtype)
    np.testing.assert_array_equal(data["logits"], model.logits([5, 6, 7, 8]))


def test_dump_text_without_attention(small_models, tmp_path):
    out = tmp_path / "t.npz"
    assert run("dump", "--text", "the cat", "--out", str(out), *tiny(small_models)).returncode == 0
    with np.load(out) as f:
        assert "attn" not in f and f["ids"].tolist() == load_model(
            "tiny", small_models
        ).encoder.encode("the cat")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ids", "1,x"], "comma-separated integers"),
        (["--ids", "1,999"], "token ids must be in"),
        (["--ids", ",".join(["1"] * 17)], "more than the context of 16"),
        (["--text", ""], "--text is empty"),
    ],
)
def test_dump_bad_input(small_models, tmp_path, extra, message):
    out = tmp_path / "x.npz"
    r = run("dump", *extra, "--out", str(out), *tiny(small_models))
    one_line_error(r, 2, message)
    assert text(r.stderr).count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_float64_and_float32_dumps_agree(small_models):
    ids = [5, 6, 7, 8, 9, 10]
    a = load_model("tiny", small_models).trace(ids)
    b = load_model("tiny", small_models, dtype="float64").trace(ids)
    for key in ("logits", "hidden", "ln_f"):
        assert np.max(np.abs(a[key] - b[key])) <= 1e-5 * np.max(np.abs(b[key])), key


@pytest.mark.parametrize("written", ["5 6 7", "5, 6, 7", "[5, 6, 7]"])
def test_dump_ids_by_commas_spaces_or_json(small_models, tmp_path, written):
    # Spaces were once removed before splitting: "5 6 7" became the id 567.
    out = tmp_path / "ids.npz"
    assert run("dump", "--ids", written, "--out", str(out), *tiny(small_models)).returncode == 0
    with np.load(out) as f:
        assert f["ids"].tolist() == [5, 6, 7]


def test_dump_id_beyond_64_bits(converted_models, tmp_path):
    r = run("dump", "--ids", "99999999999999999999999", "--out", str(tmp_path / "x.npz"),
            *tiny(converted_models))  # fmt: skip
    one_line_error(r, 2, "token ids must be in [0, 264)")


def test_dump_to_a_full_disk_names_the_file(converted_models, tmp_path):
    out = tmp_path / "ref.npz"
    r = run(
        "dump",
        "--ids",
        "1,2",
        "--out",
        str(out),
        *tiny(converted_models),
        preexec_fn=full_disk(2000),
    )
    one_line_error(r, 1, str(out), "File too large")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary file
