"""The second newcomer audit (#20): nothing outside the folder, nothing
unbounded, the paths and files people have, one line with the right exit
status. Each finding is run as the README runs the command, a subprocess."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from mirror import full_disk, one_line_error, run, text
from tiny import converted_tiny_models, make_tiny_model, tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return converted_tiny_models(tmp_path_factory.mktemp("models"))


def export(models, fmt, out):
    r = run("export", "tiny", "--models-dir", str(models), "--to", fmt, str(out))
    assert r.returncode == 0, text(r.stderr)
    return out


def poison(path: Path, offset: int) -> None:
    """A NaN written over the float32 at byte ``offset`` of ``path``."""
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))


def safetensors_offset(path: Path, name: str) -> int:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return 8 + n + json.loads(data[8 : 8 + n])[name]["data_offsets"][0]


# -- 1. --verify on every format, never advising to delete a user's file ------


def test_verify_a_transformers_folder_checks_what_can_be_checked(models, tmp_path):
    folder = export(models, "hf", tmp_path / "hf")
    r = run("download", str(folder), "--verify")
    err = text(r.stderr)
    assert r.returncode == 0, err
    assert "all 28 tensors readable, named and shaped" in err and "every value finite" in err
    assert "no checksum is recorded" in err and "delete" not in err


def test_nan_in_a_transformers_folder_leads_to_a_verify_that_names_it(models, tmp_path):
    folder = export(models, "hf", tmp_path / "hf")
    weights = folder / "model.safetensors"
    poison(weights, safetensors_offset(weights, "transformer.ln_f.weight"))
    r = run("generate", "the cat", "--model-size", str(folder))
    line = one_line_error(r, 1, "not finite", "--verify")
    suggested = line.split("check them with ")[1].split()
    assert suggested[:3] == ["python", "-m", "picogpt2.download"]
    again = run("download", *suggested[3:])
    one_line_error(again, 1, "model/ln_f/g", "not finite")
    assert "delete" not in text(again.stderr)


def test_verify_an_llmc_file_checks_that_file(models, tmp_path):
    path = export(models, "llmc", tmp_path / "m.bin")
    r = run("download", str(path), "--verify")
    assert r.returncode == 0 and "(llmc): all 28 tensors readable" in text(r.stderr), text(r.stderr)
    assert not (tmp_path / "m.bin.picogpt2.safetensors").exists()  # verifying writes nothing
    poison(path, path.stat().st_size - 4)  # the last float: ln_f's bias
    one_line_error(run("download", str(path), "--verify"), 1, "model/ln_f/b", "not finite")


def test_verify_of_a_conversion_checks_its_crcs(models):
    r = run("download", "tiny", "--models-dir", str(models), "--verify")
    assert r.returncode == 0 and "all 28 tensors match their CRC-32C" in text(r.stderr)


# -- 2. links: never written through, still read through --------------------


def test_a_conversion_never_writes_through_a_link_out_of_the_folder(tmp_path):
    folder = make_tiny_model(tmp_path / "models" / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"someone's file")
    (folder / "model.safetensors.tmp").symlink_to(os.path.relpath(elsewhere, folder))
    r = run("generate", "the cat", "--n-tokens", "2", *tiny(tmp_path / "models"))
    assert r.returncode == 0, text(r.stderr)
    assert elsewhere.read_bytes() == b"someone's file"
    assert not (folder / "model.safetensors").is_symlink()
    assert not (folder / "model.safetensors.tmp").exists()


def test_weights_are_read_through_links_as_the_transformers_cache_lays_them_out(models, tmp_path):
    # snapshots/REV/model.safetensors -> ../../blobs/HASH, as huggingface_hub does
    folder = export(models, "hf", tmp_path / "hf")
    blobs = tmp_path / "cache" / "blobs"
    snapshot = tmp_path / "cache" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(folder.iterdir())):
        file.rename(blobs / f"blob{i}")
        (snapshot / file.name).symlink_to(f"../../blobs/blob{i}")
    mine = run("generate", "the cat", "--n-tokens", "4", "--model-size", str(snapshot))
    ours = run("generate", "the cat", "--n-tokens", "4", *tiny(models))
    assert mine.returncode == 0, text(mine.stderr)
    assert mine.stdout == ours.stdout


# -- 3. shard names are plain file names in the folder -------------------------


@pytest.mark.parametrize("shard", ["../out/model-1.safetensors", "/tmp/model-1.safetensors"])
def test_a_shard_index_naming_files_outside_the_folder_is_refused(models, tmp_path, shard):
    folder = export(models, "hf", tmp_path / "hf")
    outside = tmp_path / "out" / "model-1.safetensors"
    outside.parent.mkdir()
    (folder / "model.safetensors").rename(outside)
    index = {"weight_map": {"transformer.wte.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    r = run("generate", "the cat", "--model-size", str(folder))
    one_line_error(r, 1, "model.safetensors.index.json", repr(shard), "not a file in")


# -- 4-6. nothing unbounded --------------------------------------------------


def copy_with(models, tmp_path, file, change):
    """The tiny model (our safetensors layout, or a transformers folder) with
    ``change`` applied to its ``hparams.json`` or ``config.json``."""
    folder = tmp_path / "big"
    if file == "config.json":
        export(models, "hf", folder)
    else:
        export(models, "safetensors", folder)
    values = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**values, **change}))
    return folder


@pytest.mark.parametrize("file", ["hparams.json", "config.json"])
def test_sizes_no_file_could_hold_are_refused_before_anything_is_allocated(models, tmp_path, file):
    folder = copy_with(models, tmp_path, file, {"n_layer": 10**12})
    r = run("generate", "the cat", "--model-size", str(folder), timeout=30)
    one_line_error(r, 1, "n_layer 1000000000000", "1,000,000,000,000 blocks, in")


def test_too_many_samples_are_refused_before_anything_is_downloaded(tmp_path):
    r = run("generate", "Hi", "--n-samples", "100000", "--models-dir", str(tmp_path), timeout=30)
    one_line_error(r, 2, "100000 samples of 40 tokens would need about", "GB of memory")
    assert list(tmp_path.iterdir()) == []


def test_the_library_refuses_a_generation_that_cannot_fit(models):
    from picogpt2.model import load_model
    from picogpt2.util.errors import InputError

    model = load_model("tiny", models, show_progress=False)
    with pytest.raises(InputError, match="10000000000 samples of 5 tokens would need about"):
        model.generate_many([1, 2, 3], 5, 10**10)


@pytest.mark.parametrize("sizes", [["--width", "100000", "--heads", "1"], ["--layers", "100000"]])
def test_a_fixture_too_large_is_refused_and_explained(real_dir, tmp_path, sizes):
    r = run("fixture", str(tmp_path / "fx"), "--encoder-dir", str(real_dir), *sizes, timeout=30)
    one_line_error(r, 2, "parameters; a fixture is a small model, at most 200,000,000")
    assert not (tmp_path / "fx").exists()


# -- 7. paths relative to the current folder ---------------------------------


def test_the_readmes_own_export_then_generate_pair_works_from_any_folder(models, tmp_path):
    work = tmp_path / "work"
    (work / "dir").mkdir(parents=True)
    r = run("export", "tiny", "--models-dir", str(models), "--to", "llmc", "gpt2_tiny.bin",
            cwd=work)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    export(models, "safetensors", work / "dir" / "x")
    expected = run("generate", "the cat", "--n-tokens", "4", *tiny(models)).stdout
    vocab = ["--encoder-dir", str(models / "tiny")]
    for name, extra in [("gpt2_tiny.bin", vocab), ("./gpt2_tiny.bin", vocab), ("dir/x", [])]:
        r = run("generate", "the cat", "--n-tokens", "4", "--model-size", name, *extra,
                "--models-dir", str(models), cwd=work)  # fmt: skip
        assert r.returncode == 0, (name, text(r.stderr))
        assert r.stdout == expected
        where = (work / name).resolve()
        assert f"loading GPT-2 from {where} (the path given)" in text(r.stderr)
    r = run("generate", "the cat", "--n-tokens", "4", *tiny(models), cwd=work)
    assert f"loading GPT-2 tiny from the models folder {models}" in text(r.stderr)


def test_a_path_that_does_not_exist_is_not_looked_for_in_the_models_folder(models, tmp_path):
    r = run("generate", "x", "--model-size", "./tiny", "--models-dir", str(models), cwd=tmp_path)
    one_line_error(r, 2, "unknown model size './tiny'")


# -- 8. transformers 5 folders: tokenizer.json only ------------------------------


def tokenizer_json(encoder: dict, merges: list[tuple[str, str]], **rules) -> dict:
    """A fast tokenizer's file, as transformers 5 saves GPT-2's."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}  # fmt: skip
    eot = {"id": encoder["<|endoftext|>"], "content": "<|endoftext|>", "special": True}
    return {
        "version": "1.0",
        "added_tokens": [eot],
        "normalizer": None,
        "pre_tokenizer": {**byte_level, **rules},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": encoder,
            "merges": [list(m) for m in merges],
        },  # fmt: skip
    }


def transformers5_folder(models, tmp_path, **rules):
    folder = export(models, "hf", tmp_path / "hf5")
    encoder = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:]]
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(encoder, merges, **rules)))
    return folder


def test_a_folder_saved_by_transformers_5_loads_from_its_tokenizer_json(models, tmp_path):
    folder = transformers5_folder(models, tmp_path)
    r = run("generate", "the cat", "--n-tokens", "4", "--model-size", str(folder))
    assert r.returncode == 0, text(r.stderr)
    assert r.stdout == run("generate", "the cat", "--n-tokens", "4", *tiny(models)).stdout
    ours = run("tokens", "the cat ate", *tiny(models)).stdout
    assert run("tokens", "the cat ate", "--vocab-dir", str(folder)).stdout == ours
    out = tmp_path / "back"
    r = run("export", str(folder), "--to", "openai", str(out))
    assert r.returncode == 0, text(r.stderr)
    assert json.loads((out / "encoder.json").read_text()) == json.loads(
        (models / "tiny" / "encoder.json").read_text()
    )
    assert (out / "vocab.bpe").read_text().split() == (models / "tiny" / "vocab.bpe").read_text(
    ).split()  # fmt: skip


def test_a_tokenizer_json_that_is_not_gpt2s_is_refused_by_name(models, tmp_path):
    folder = transformers5_folder(models, tmp_path, add_prefix_space=True)
    r = run("generate", "the cat", "--model-size", str(folder))
    one_line_error(r, 1, "tokenizer.json", "add_prefix_space", "not GPT-2's byte-level BPE")


def test_a_folder_without_a_vocabulary_names_every_file_looked_for(models, tmp_path):
    folder = export(models, "hf", tmp_path / "hf")
    (folder / "vocab.json").unlink()
    r = run("generate", "the cat", "--model-size", str(folder))
    line = one_line_error(r, 1, "--encoder-dir")
    for name in ("encoder.json", "vocab.bpe", "vocab.json", "merges.txt", "tokenizer.json"):
        assert name in line


# -- 9. damaged vocabularies are named, never used -----------------------------


def damaged(models, tmp_path, file, change):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (folder / name).write_bytes((models / "tiny" / name).read_bytes())
    path = folder / file
    path.write_text(change(path.read_text()))
    return folder


@pytest.mark.parametrize(
    "file, change, words",
    [
        ("vocab.bpe", lambda t: "", ["encoder.json", "come from no merge in", "(0 merges)"]),
        ("encoder.json", lambda t: t.replace('"!": 0', '"!": -5'), ["ids must be 0 to"]),
        ("encoder.json", lambda t: t.replace('"!": 0', '"!": 1'), ["id 1 given twice"]),
        ("vocab.bpe", lambda t: t + "\u0120 t\n", ["ranked twice"]),
    ],
)
def test_a_damaged_vocabulary_is_refused_naming_the_file(models, tmp_path, file, change, words):
    folder = damaged(models, tmp_path, file, change)
    r = run("tokens", "the cat", "--vocab-dir", str(folder))
    one_line_error(r, 1, *words)


# -- 10. offline: the way round for each command ----------------------------


@pytest.mark.parametrize("command, fix", [("tokens", "--vocab-dir"), ("fixture", "--encoder-dir")])
def test_offline_errors_name_an_option_the_command_has(tmp_path, command, fix):
    args = ["hello"] if command == "tokens" else [str(tmp_path / "fx")]
    r = run(command, *args, "--models-dir", str(tmp_path / "m"))
    line = one_line_error(r, 1, "cannot reach", fix)
    assert "download's --base-url" in line and not (tmp_path / "m").exists()


# -- 11. no NumPy warnings ------------------------------------------------------


def test_a_tiny_temperature_is_greedy_without_warnings(models):
    r = run("generate", "the cat", "--n-tokens", "5", "--temperature", "1e-320", "--seed", "1",
            *tiny(models))  # fmt: skip
    greedy = run("generate", "the cat", "--n-tokens", "5", *tiny(models))
    assert r.returncode == 0 and r.stdout == greedy.stdout
    assert "Warning" not in text(r.stderr), text(r.stderr)


def test_a_penalty_that_would_overflow_the_logits_is_refused(models):
    r = run("generate", "the cat", "--repetition-penalty", "1e-320", *tiny(models))
    one_line_error(r, 2, "repetition penalty must be in [1e-30, 1e+30]")


def test_a_candidate_holding_inf_is_not_ok_without_warnings(models, tmp_path):
    ref = tmp_path / "ref.npz"
    assert run("dump", "--ids", "1,2,3", "--out", str(ref), *tiny(models)).returncode == 0
    data = dict(np.load(ref))
    data["logits"][1, 5] = np.inf
    data["hidden"][1, 0, 0] = -np.inf
    np.savez(tmp_path / "mine.npz", **data)
    r = run("compare", str(ref), str(tmp_path / "mine.npz"))
    assert r.returncode == 1 and "Warning" not in text(r.stderr), text(r.stderr)
    assert "not finite, so no log-softmax" in text(r.stdout)
    assert "first over tolerance: hidden[1]" in text(r.stdout)


# -- 12. bad input is exit 2 everywhere -----------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["tokens", "--decode", "264"], ["token id 264 is not in the vocabulary"]),
        (["tokens", "--decode", "[-1]"], ["token id -1 is not in the vocabulary"]),
        (["dump", "--ids", "1,,2", "--out", "x.npz"], ["--ids", "'1,,2'"]),
        (["dump", "--ids", "1,2", "--out", "/nonexistent/dir/x.npz"], ["/nonexistent/dir does"]),
        (["tokens", "--show-work", "--jsonl", "x"], ["--show-work", "--jsonl"]),
        (["tokens", "--decode", "--special", "1"], ["--special is for encoding"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, tmp_path, args, words):
    r = run(*args, *tiny(models), cwd=tmp_path)
    one_line_error(r, 2, *words)
    assert list(tmp_path.iterdir()) == []


def test_a_dump_never_replaces_a_file(models, tmp_path):
    out = tmp_path / "ref.npz"
    out.write_bytes(b"mine")
    r = run("dump", "--ids", "1,2", "--out", str(out), *tiny(models))
    one_line_error(r, 2, "exists: name a new file or folder")
    assert out.read_bytes() == b"mine"


# -- 13. the library validates what it is given ---------------------------------


@pytest.fixture(scope="module")
def model(models):
    from picogpt2.model import load_model

    return load_model("tiny", models, show_progress=False)


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
def test_the_library_refuses_bad_arguments_with_its_own_error(model, call, words):
    from picogpt2.util.errors import InputError

    with pytest.raises(InputError, match=words):
        call(model)


def test_a_stop_string_given_alone_is_one_stop_string(model):
    many = model.generate([5, 17, 99], 30, top_k=50, seed=3, ignore_eot=True)
    text_ = model.encoder.decode(many)
    stop = text_[10:12]
    alone = model.complete("", 30, top_k=50, seed=3, ignore_eot=True, stop=stop)
    listed = model.complete("", 30, top_k=50, seed=3, ignore_eot=True, stop=[stop])
    assert alone == listed


# -- 14. the small things -------------------------------------------------------


def test_scored_tokens_are_counted_alike_on_stderr_and_in_json(models, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat and then the cat ran " * 6)
    r = run("score", str(path), "--stride", "64", "--json", *tiny(models))
    assert r.returncode == 0, text(r.stderr)
    scored = json.loads(r.stdout)["scored_tokens"]
    assert f"scored  {scored} tokens in" in text(r.stderr)


def test_one_is_singular(models):
    r = run("generate", "the cat", "--n-tokens", "1", *tiny(models))
    assert "1 token in" in text(r.stderr)
    r = run("tokens", "--show-work", "a", *tiny(models))
    assert text(r.stdout).startswith("1 piece from the pre-tokenizer")


def test_stop_escapes_a_backslash():
    from picogpt2.generate import unescape

    assert unescape(r"a\nb\tc\\nd") == "a\nb\tc\\nd"


def test_an_unknown_tensor_in_a_transformers_file_is_named_with_the_file(models, tmp_path):
    folder = export(models, "hf", tmp_path / "hf")
    from picogpt2.weights.formats.safetensors import read_tensors, write_tensors

    tensors = {k: np.array(v) for k, v in read_tensors(folder / "model.safetensors")[0].items()}
    tensors["transformer.h.0.attn.rotary"] = np.zeros(3, np.float32)
    write_tensors(folder / "model.safetensors", tensors, {"format": "pt"})
    r = run("generate", "x", "--model-size", str(folder))
    one_line_error(r, 1, str(folder / "model.safetensors"), "h.0.attn.rotary")


def test_an_llmc_file_without_a_vocabulary_is_refused_before_any_conversion(models, tmp_path):
    path = export(models, "llmc", tmp_path / "m.bin")
    r = run("generate", "x", "--model-size", str(path))
    one_line_error(r, 1, "no encoder.json and vocab.bpe beside it", "--encoder-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_an_npy_folder_on_a_full_disk_names_the_file(models, tmp_path):
    out = tmp_path / "ref"
    r = run("dump", "--ids", "1,2", "--detail", "--out", str(out), *tiny(models),
            preexec_fn=full_disk(1500))  # fmt: skip
    one_line_error(r, 1, str(out), ".npy", "File too large")
    assert list(tmp_path.iterdir()) == []


def test_a_trace_and_a_score_that_cannot_fit_are_refused(model):
    from dataclasses import replace

    from picogpt2.model import GPT2
    from picogpt2.scoring.perplexity import score
    from picogpt2.util.errors import InputError

    small = replace(model.backend, available=lambda: 10_000)  # bytes
    cramped = GPT2(model.hparams, model.encoder, model.params, small, "float32", model.model_dir)
    with pytest.raises(InputError, match="a trace of 20 tokens would need about"):
        cramped.trace(list(range(20)), detail=True)
    with pytest.raises(InputError, match="scoring windows of 20 tokens would need about"):
        score(cramped, model.encoder.decode(list(range(21, 41))))
    assert model.trace(list(range(20)), detail=True)["attn"].shape == (2, 2, 20, 20)
