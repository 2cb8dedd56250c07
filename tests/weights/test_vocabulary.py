"""The vocabulary's files, in every layout people have (OpenAI's,
transformers' pair, transformers 5's tokenizer.json alone), read and
checked: a damaged or foreign one is named, never used."""

import json

import pytest
from mirror import export, one_line_error, run, text
from tiny import copy_model, make_tiny_model, tiny


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


def transformers5_folder(converted_models, tmp_path, **rules):
    folder = export(converted_models, "hf", tmp_path / "hf5")
    encoder = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:]]
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(encoder, merges, **rules)))
    return folder


def test_a_folder_saved_by_transformers_5_loads_from_its_tokenizer_json(converted_models, tmp_path):
    folder = transformers5_folder(converted_models, tmp_path)
    r = run("generate", "the cat", "--n-tokens", "4", "--model-size", str(folder))
    assert r.returncode == 0, text(r.stderr)
    assert r.stdout == run("generate", "the cat", "--n-tokens", "4", *tiny(converted_models)).stdout
    ours = run("tokens", "the cat ate", *tiny(converted_models)).stdout
    assert run("tokens", "the cat ate", "--vocab-dir", str(folder)).stdout == ours
    out = tmp_path / "back"
    r = run("export", str(folder), "--to", "openai", str(out))
    assert r.returncode == 0, text(r.stderr)
    assert json.loads((out / "encoder.json").read_text()) == json.loads(
        (converted_models / "tiny" / "encoder.json").read_text()
    )
    theirs = (converted_models / "tiny" / "vocab.bpe").read_text()
    assert (out / "vocab.bpe").read_text().split() == theirs.split()


def test_a_tokenizer_json_that_is_not_gpt2s_is_refused_by_name(converted_models, tmp_path):
    folder = transformers5_folder(converted_models, tmp_path, add_prefix_space=True)
    r = run("generate", "the cat", "--model-size", str(folder))
    one_line_error(r, 1, "tokenizer.json", "add_prefix_space", "not GPT-2's byte-level BPE")


def test_a_folder_without_a_vocabulary_names_every_file_looked_for(converted_models, tmp_path):
    folder = export(converted_models, "hf", tmp_path / "hf")
    (folder / "vocab.json").unlink()
    r = run("generate", "the cat", "--model-size", str(folder))
    line = one_line_error(r, 1, "--encoder-dir")
    for name in ("encoder.json", "vocab.bpe", "vocab.json", "merges.txt", "tokenizer.json"):
        assert name in line


def damaged(converted_models, tmp_path, file, change):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (folder / name).write_bytes((converted_models / "tiny" / name).read_bytes())
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
def test_a_damaged_vocabulary_is_refused_naming_the_file(
    converted_models, tmp_path, file, change, words
):
    folder = damaged(converted_models, tmp_path, file, change)
    r = run("tokens", "the cat", "--vocab-dir", str(folder))
    one_line_error(r, 1, *words)


def test_a_vocabulary_larger_than_the_model(tmp_path):
    make_tiny_model(tmp_path / "small", n_vocab=200)  # wte has 200 rows; encoder.json 264
    r = run("generate", "hi", "--model-size", "small", "--models-dir", str(tmp_path))
    one_line_error(r, 1, "the vocabulary has 264 tokens, more than the model's n_vocab 200")


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_vocabulary_that_is_not_utf8(converted_models, tmp_path, name):
    folder = copy_model(converted_models, tmp_path)
    (folder / name).write_bytes((folder / name).read_bytes() + b"\xe9\xff")
    r = run("generate", "hi", "--n-tokens", "2", "--model-size", "copy",
            "--models-dir", str(tmp_path))  # fmt: skip
    one_line_error(r, 1, name, "not UTF-8 text")
