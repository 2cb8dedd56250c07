"""Every GPT-2 file people have: transformers folders and llm.c files in and
out, OpenAI's layout out, and the conformance fixture."""

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from mirror import export, one_line_error, run, text
from tiny import make_tiny_model, tiny

from picogpt2.model import load_model
from picogpt2.sampling import SplitMix64
from picogpt2.weights.formats import transformers as hf
from picogpt2.weights.formats.safetensors import WEIGHTS_FILE, read_tensors, write_tensors
from picogpt2.weights.loading import open_model
from picogpt2.weights.params import schema

IDS = [5, 17, 99, 3, 42, 8, 120, 7]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_layer=2, n_head=4, n_embd=32, n_ctx=32, scale=0.1)
    return root


@pytest.fixture(scope="module")
def ours(models):
    return load_model("tiny", models, show_progress=False)


def checkpoint_tensors(model):
    """The model's weights under the checkpoint's names and shapes."""
    return open_model("tiny", model.model_dir.parent).tensors


# -- transformers folders, written by hand (no transformers needed) --------------


def hf_folder(root, model, *, dtype=np.float32, prefix=hf.PREFIX, bf16=False, extra=None):
    """A transformers folder as save_pretrained writes it, from our weights."""
    folder = root / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf.config_json(model.hparams, 263)))
    named, tensors = {}, checkpoint_tensors(model)
    for t in schema(model.hparams):
        key = prefix + hf.hf_name(t).removeprefix(hf.PREFIX)
        named[key] = tensors[t.name].reshape(t.tree_shape)
    named |= extra or {}
    if bf16:
        write_bf16(folder / WEIGHTS_FILE, named)
    else:
        write_tensors(folder / WEIGHTS_FILE, {k: v.astype(dtype) for k, v in named.items()},
                          {"format": "pt"})  # fmt: skip
    shutil.copyfile(model.model_dir / "encoder.json", folder / "vocab.json")
    shutil.copyfile(model.model_dir / "vocab.bpe", folder / "merges.txt")
    return folder


def write_bf16(path, tensors):
    """A bfloat16 safetensors file, written independently: the top 16 bits
    of each float32, rounded to nearest even."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        bits = np.ascontiguousarray(array, np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        blobs.append(rounded.tobytes())
        header[name] = {"dtype": "BF16", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blobs[-1])]}  # fmt: skip
        offset += len(blobs[-1])
    text_ = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text_)) + text_ + b"".join(blobs))


def rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("prefix", [hf.PREFIX, ""])
def test_a_float32_transformers_folder_is_used_in_place(models, ours, tmp_path, prefix):
    folder = hf_folder(tmp_path, ours, prefix=prefix)
    model = load_model("hf", tmp_path, show_progress=False)
    np.testing.assert_array_equal(model.logits(IDS), ours.logits(IDS))
    assert not (folder / hf.CACHE_FILE).exists()  # memory-mapped, nothing converted
    base = model.params["wte"]
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert (
        isinstance(base, np.memmap)
        and Path(base.filename).resolve() == (folder / WEIGHTS_FILE).resolve()
    )


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_half_precision_is_upcast_once_and_cached(ours, tmp_path, kind):
    folder = hf_folder(tmp_path, ours, dtype=np.float16, bf16=kind == "bfloat16")
    r = run("generate", "the cat", "--model-size", "hf", "--models-dir", str(tmp_path),
            "--n-tokens", "3")  # fmt: skip
    assert r.returncode == 0 and "converting" in text(r.stderr), text(r.stderr)
    assert (folder / hf.CACHE_FILE).exists()
    again = run("generate", "the cat", "--model-size", "hf", "--models-dir", str(tmp_path),
                "--n-tokens", "3")  # fmt: skip
    assert "converting" not in text(again.stderr) and again.stdout == r.stdout
    model = load_model("hf", tmp_path, show_progress=False)
    wte = model.params["wte"]
    reference = checkpoint_tensors(ours)["model/wte"]
    if kind == "float16":
        np.testing.assert_array_equal(wte, reference.astype(np.float16).astype(np.float32))
    else:  # exact: bfloat16 widened is a float32 whose low 16 bits are zero
        assert (wte.view(np.uint32) & 0xFFFF == 0).all()
        assert np.max(np.abs(wte - reference)) <= 2**-8 * np.max(np.abs(reference))
    assert rel(model.logits(IDS), ours.logits(IDS)) < 0.05  # the precision lost, no more
    # A changed source is converted again.
    shutil.copyfile(folder / WEIGHTS_FILE, tmp_path / "copy")
    (folder / WEIGHTS_FILE).unlink()
    shutil.copyfile(tmp_path / "copy", folder / WEIGHTS_FILE)
    third = run("generate", "the cat", "--model-size", "hf", "--models-dir", str(tmp_path),
                "--n-tokens", "3")  # fmt: skip
    assert "converting" in text(third.stderr)


def test_sharded_transformers_folder(ours, tmp_path):
    folder = hf_folder(tmp_path, ours)
    tensors = read_tensors(folder / WEIGHTS_FILE)[0]
    names = sorted(tensors)
    (folder / WEIGHTS_FILE).unlink()
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    for file, keys in shards.items():
        write_tensors(folder / file, {k: np.array(tensors[k]) for k in keys}, {"format": "pt"})
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (folder / hf.INDEX_FILE).write_text(json.dumps(index))
    np.testing.assert_array_equal(load_model("hf", tmp_path).logits(IDS), ours.logits(IDS))


def test_tied_or_absent_head_loads_and_an_untied_one_is_refused(ours, tmp_path):
    wte = checkpoint_tensors(ours)["model/wte"]
    (tmp_path / "a").mkdir()
    hf_folder(tmp_path / "a", ours, extra={"lm_head.weight": wte})
    assert load_model("hf", tmp_path / "a").logits(IDS).shape == (len(IDS), 264)
    (tmp_path / "b").mkdir()
    hf_folder(tmp_path / "b", ours, extra={"lm_head.weight": wte * 2})
    r = run("generate", "x", "--model-size", "hf", "--models-dir", str(tmp_path / "b"))
    one_line_error(r, 1, "lm_head.weight differs from wte")


@pytest.mark.parametrize(
    "setting, value",
    [
        ("activation_function", "gelu"),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("scale_attn_weights", False),
        ("n_inner", 100),
        ("layer_norm_epsilon", 1e-6),
        ("add_cross_attention", True),
        ("model_type", "gpt_neo"),
    ],
)
def test_a_setting_that_changes_the_math_is_refused_by_name(ours, tmp_path, setting, value):
    folder = hf_folder(tmp_path, ours)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, setting: value}))
    r = run("generate", "x", "--model-size", "hf", "--models-dir", str(tmp_path))
    one_line_error(r, 1, "config.json", setting if setting != "model_type" else "is not GPT-2")


def test_a_pickle_is_never_opened(ours, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf.config_json(ours.hparams, 263)))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that must not be read")
    (folder / "vocab.json").write_text("{}")
    r = run("generate", "x", "--model-size", "hf", "--models-dir", str(tmp_path))
    one_line_error(r, 1, "pytorch_model.bin, a pickle, which picogpt2 never opens")


# -- llm.c files ----------------------------------------------------------------


def write_llmc_independently(path, model, *, bf16=False, padded=384):
    """An llm.c file from llm.c's documented layout, in a few lines: header,
    then each parameter kind for all layers, linear weights [out, in]."""
    t = checkpoint_tensors(model)
    h, layers = model.hparams, range(model.hparams.n_layer)
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, 5 if bf16 else 3, h.n_ctx, h.n_vocab, h.n_layer, h.n_head,
                  h.n_embd, padded]  # fmt: skip
    wte = np.zeros((padded, h.n_embd), np.float32)
    wte[: h.n_vocab] = t["model/wte"]
    parts = [wte, t["model/wpe"]]
    for name in ["ln_1/g", "ln_1/b", "attn/c_attn/w", "attn/c_attn/b", "attn/c_proj/w",
                 "attn/c_proj/b", "ln_2/g", "ln_2/b", "mlp/c_fc/w", "mlp/c_fc/b", "mlp/c_proj/w",
                 "mlp/c_proj/b"]:  # fmt: skip
        parts += [t[f"model/h{i}/{name}"][0].T if name.endswith("/w") else t[f"model/h{i}/{name}"]
                  for i in layers]  # fmt: skip
    parts += [t["model/ln_f/g"], t["model/ln_f/b"]]
    data = b"".join(np.ascontiguousarray(p, np.float32).tobytes() for p in parts)
    if bf16:
        data = np.frombuffer(data, np.uint32).astype(np.uint64)
        data = ((data + 0x7FFF + ((data >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    path.write_bytes(header.tobytes() + data)


def test_an_independently_written_llmc_file_gives_identical_logits(models, ours, tmp_path):
    write_llmc_independently(tmp_path / "model.bin", ours)
    model = load_model("model.bin", tmp_path, encoder_dir=models / "tiny", show_progress=False)
    np.testing.assert_array_equal(model.logits(IDS), ours.logits(IDS))
    assert (tmp_path / "model.bin.picogpt2.safetensors").exists()  # the transposed copy


def test_a_bfloat16_llmc_file_loads(models, ours, tmp_path):
    write_llmc_independently(tmp_path / "model.bin", ours, bf16=True)
    model = load_model("model.bin", tmp_path, encoder_dir=models / "tiny", show_progress=False)
    assert rel(model.logits(IDS), ours.logits(IDS)) < 0.05


def test_llmc_vocabulary_beside_or_given_or_named_as_missing(models, ours, tmp_path):
    write_llmc_independently(tmp_path / "model.bin", ours)
    r = run("generate", "x", "--model-size", str(tmp_path / "model.bin"))
    one_line_error(r, 1, "no encoder.json and vocab.bpe beside it", "--encoder-dir")
    r = run("generate", "the cat", "--model-size", str(tmp_path / "model.bin"), "--n-tokens", "2",
            "--encoder-dir", str(models / "tiny"))  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    shutil.copyfile(models / "tiny" / "encoder.json", tmp_path / "encoder.json")
    shutil.copyfile(models / "tiny" / "vocab.bpe", tmp_path / "vocab.bpe")
    assert run("generate", "the cat", "--model-size", str(tmp_path / "model.bin"),
               "--n-tokens", "2").stdout == r.stdout  # fmt: skip


def test_a_truncated_llmc_file_is_named(ours, tmp_path):
    write_llmc_independently(tmp_path / "model.bin", ours)
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:-100])
    r = run("generate", "x", "--model-size", str(tmp_path / "model.bin"))
    one_line_error(r, 1, "model.bin", "truncated")


@pytest.mark.parametrize("fmt, out", [("hf", "out-hf"), ("openai", "out-openai"),
                                      ("safetensors", "out-safetensors"),
                                      ("llmc", "out.bin")])  # fmt: skip
# -- export ---------------------------------------------------------------------


def test_export_round_trips_bit_exactly(models, ours, tmp_path, fmt, out):
    r = run("export", "tiny", "--models-dir", str(models), "--to", fmt, str(tmp_path / out))
    assert r.returncode == 0, text(r.stderr)
    back = load_model(out, tmp_path, encoder_dir=models / "tiny" if fmt == "llmc" else None,
                      show_progress=False)  # fmt: skip
    mine = checkpoint_tensors(ours)
    theirs = open_model(out, tmp_path, encoder_dir=models / "tiny").tensors
    assert mine.keys() == theirs.keys()
    for name in mine:
        np.testing.assert_array_equal(np.asarray(theirs[name]), mine[name], err_msg=name)
    np.testing.assert_array_equal(back.logits(IDS), ours.logits(IDS))
    if fmt == "hf":  # both names of the context: llama.cpp's converter reads n_ctx
        config = json.loads((tmp_path / out / "config.json").read_text())
        assert config["n_positions"] == config["n_ctx"] == ours.hparams.n_ctx
    again = run("export", "tiny", "--models-dir", str(models), "--to", fmt, str(tmp_path / out))
    one_line_error(again, 2, "exists: name a new file or folder")


def test_our_safetensors_layout_is_the_checkpoints_names_in_one_file(models, ours, tmp_path):
    out = tmp_path / "st"
    assert run("export", "tiny", "--models-dir", str(models), "--to", "safetensors",
               str(out)).returncode == 0  # fmt: skip
    files = ["encoder.json", "hparams.json", "model.safetensors", "vocab.bpe"]
    assert sorted(p.name for p in out.iterdir()) == files
    tensors, metadata = read_tensors(out / WEIGHTS_FILE)
    expected = {t.name: t.shape for t in schema(ours.hparams)}
    assert {k: v.shape for k, v in tensors.items()} == expected
    assert all(v.dtype == np.float32 for v in tensors.values()) and "crc32c" in metadata
    assert json.loads((out / "hparams.json").read_text()) == ours.hparams.as_dict()
    r = run("download", str(out), "--verify")
    assert r.returncode == 0 and "all 28 tensors match their CRC-32C" in text(r.stderr)


def test_llmc_export_pads_the_vocabulary_with_zero_rows(models, ours, tmp_path):
    run("export", "tiny", "--models-dir", str(models), "--to", "llmc", str(tmp_path / "m.bin"))
    header = np.frombuffer((tmp_path / "m.bin").read_bytes()[:1024], np.int32)
    assert header[:8].tolist() == [20240326, 3, 32, 264, 2, 4, 32, 384]
    wte = np.frombuffer((tmp_path / "m.bin").read_bytes()[1024:], np.float32)[: 384 * 32]
    assert (wte.reshape(384, 32)[264:] == 0).all()


# -- the fixture ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_dir(real_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fixture") / "fx"
    r = run("fixture", str(out), "--encoder-dir", str(real_dir))
    assert r.returncode == 0, text(r.stderr)
    return out


def test_fixture_is_byte_identical_when_regenerated(fixture_dir, real_dir, tmp_path):
    again = tmp_path / "again"
    assert run("fixture", str(again), "--encoder-dir", str(real_dir)).returncode == 0
    files = sorted(p.relative_to(fixture_dir) for p in fixture_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (fixture_dir / f).read_bytes() == (again / f).read_bytes(), f
    other = tmp_path / "other"
    run("fixture", str(other), "--encoder-dir", str(real_dir), "--seed", "1")
    assert (other / "hf" / WEIGHTS_FILE).read_bytes() != (
        fixture_dir / "hf" / WEIGHTS_FILE
    ).read_bytes()


def test_fixture_default_shapes_show_every_orientation_but_c_projs(fixture_dir):
    # Context 48, width 64: wpe is not square; only attn/c_proj's weight is.
    tensors = open_model("openai", fixture_dir).tensors
    square = sorted({k.split("/", 2)[-1] for k, v in tensors.items()
                     if v.ndim > 1 and v.shape[-1] == v.shape[-2]})  # fmt: skip
    assert square == ["attn/c_proj/w"] and tensors["model/wpe"].shape == (48, 64)


def test_fixture_weights_follow_the_documented_formula(fixture_dir):
    tensors = load_model("openai", fixture_dir, show_progress=False).params
    rng = SplitMix64(0)
    first = [np.float32(0.1 * (2.0 * rng.uniform() - 1.0)) for _ in range(5)]
    assert tensors["wte"][0, :5].tolist() == first


@pytest.mark.parametrize("fmt", ["openai", "hf", "llmc/model.bin"])
def test_fixture_references_agree_with_each_format(fixture_dir, tmp_path, fmt):
    copy = tmp_path / "fx"
    shutil.copytree(fixture_dir, copy)
    reference = read_tensors(copy / "reference.safetensors")[0]
    model = load_model(fmt, copy, dtype="float64", show_progress=False)
    ids = reference["ids"].tolist()
    trace = model.trace(ids, detail=True)
    for key, array in trace.items():
        np.testing.assert_allclose(array, reference[key], rtol=1e-12, atol=1e-15, err_msg=key)
    assert model.generate(ids, 16, ignore_eot=True) == reference["gen_ids"].tolist()
    samples = json.loads((copy / "samples.json").read_text())
    for s in samples["samples"]:
        again = model.generate(ids, 16, seed=s["seed"], top_k=s["top_k"],
                               temperature=s["temperature"], ignore_eot=True)  # fmt: skip
        assert again == s["ids"]
    for entry in json.loads((copy / "tokens.json").read_text()):
        assert model.encoder.encode(entry["text"]) == entry["ids"]


def test_fixture_transformers_folder_loads_in_transformers(fixture_dir):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        fixture_dir / "hf", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = load_model("hf", fixture_dir, show_progress=False)
    with torch.no_grad():
        theirs = model(torch.tensor([IDS])).logits[0].numpy()
    assert rel(ours.logits(IDS), theirs) <= 2e-5


def test_weights_are_read_through_links_as_the_transformers_cache_lays_them_out(
    converted_models, tmp_path
):
    # snapshots/REV/model.safetensors -> ../../blobs/HASH, as huggingface_hub does
    folder = export(converted_models, "hf", tmp_path / "hf")
    blobs = tmp_path / "cache" / "blobs"
    snapshot = tmp_path / "cache" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(folder.iterdir())):
        file.rename(blobs / f"blob{i}")
        (snapshot / file.name).symlink_to(f"../../blobs/blob{i}")
    mine = run("generate", "the cat", "--n-tokens", "4", "--model-size", str(snapshot))
    ours = run("generate", "the cat", "--n-tokens", "4", *tiny(converted_models))
    assert mine.returncode == 0, text(mine.stderr)
    assert mine.stdout == ours.stdout


@pytest.mark.parametrize("shard", ["../out/model-1.safetensors", "/tmp/model-1.safetensors"])
def test_a_shard_index_naming_files_outside_the_folder_is_refused(
    converted_models, tmp_path, shard
):
    folder = export(converted_models, "hf", tmp_path / "hf")
    outside = tmp_path / "out" / "model-1.safetensors"
    outside.parent.mkdir()
    (folder / "model.safetensors").rename(outside)
    index = {"weight_map": {"transformer.wte.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    r = run("generate", "the cat", "--model-size", str(folder))
    one_line_error(r, 1, "model.safetensors.index.json", repr(shard), "not a file in")


@pytest.mark.parametrize("sizes", [["--width", "100000", "--heads", "1"], ["--layers", "100000"]])
def test_a_fixture_too_large_is_refused_and_explained(real_dir, tmp_path, sizes):
    r = run("fixture", str(tmp_path / "fx"), "--encoder-dir", str(real_dir), *sizes, timeout=30)
    one_line_error(r, 2, "parameters; a fixture is a small model, at most 200,000,000")
    assert not (tmp_path / "fx").exists()


def test_an_unknown_tensor_in_a_transformers_file_is_named_with_the_file(
    converted_models, tmp_path
):
    folder = export(converted_models, "hf", tmp_path / "hf")
    from picogpt2.weights.formats.safetensors import read_tensors, write_tensors

    tensors = {k: np.array(v) for k, v in read_tensors(folder / "model.safetensors")[0].items()}
    tensors["transformer.h.0.attn.rotary"] = np.zeros(3, np.float32)
    write_tensors(folder / "model.safetensors", tensors, {"format": "pt"})
    r = run("generate", "x", "--model-size", str(folder))
    one_line_error(r, 1, str(folder / "model.safetensors"), "h.0.attn.rotary")


def test_an_llmc_file_without_a_vocabulary_is_refused_before_any_conversion(
    converted_models, tmp_path
):
    path = export(converted_models, "llmc", tmp_path / "m.bin")
    r = run("generate", "x", "--model-size", str(path))
    one_line_error(r, 1, "no encoder.json and vocab.bpe beside it", "--encoder-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_a_shard_that_is_a_pipe_is_refused_without_waiting(converted_models, tmp_path):
    folder = export(converted_models, "hf", tmp_path / "hf")
    (folder / "model.safetensors").rename(folder / "model-1.safetensors")
    os.mkfifo(folder / "model-2.safetensors")
    weight_map = {"transformer.wte.weight": "model-1.safetensors", "transformer.wpe.weight":
                  "model-2.safetensors"}  # fmt: skip
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    r = run("generate", "the cat", "--model-size", str(folder), timeout=60)
    one_line_error(r, 1, "'model-2.safetensors', which is not a file in")
