"""The one way in: a model is opened once. A second load_model of a
converted model opens no file twice, whatever its format (an audit hook
counts every open, in a fresh interpreter)."""

import json
import subprocess
import sys

import pytest
from mirror import ROOT, export, one_line_error, run
from tiny import (
    converted,
    copy_model,
    make_tiny_model,
    rewrite_header,
    without_checkpoint,
)

from picogpt2.weights.formats.safetensors import WEIGHTS_FILE

COUNT_OPENS = """
import collections, json, os, sys
from pathlib import Path
import picogpt2
path, models = sys.argv[1], sys.argv[2] or None
picogpt2.load_model(path, models, show_progress=False)  # converts, once
opens, counting = collections.Counter(), [True]
sys.addaudithook(lambda event, args: event == "open" and counting[0]
                 and isinstance(args[0], (str, os.PathLike))
                 and opens.update([str(Path(args[0]).resolve())]))
picogpt2.load_model(path, models, show_progress=False)
counting[0] = False
print(json.dumps(opens))
"""


def opens_of_a_second_load(path, models_dir=""):
    out = subprocess.run([sys.executable, "-c", COUNT_OPENS, str(path), str(models_dir)],
                         capture_output=True, text=True, cwd=ROOT, check=True)  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])


def test_a_converted_model_opens_each_file_once_in_every_format(tmp_path):
    folder = make_tiny_model(tmp_path / "openai")
    for fmt, out in (("hf", "hf"), ("llmc", "llmc/model.bin"), ("safetensors", "st")):
        r = subprocess.run([sys.executable, "-m", "picogpt2.export", str(folder), "--to", fmt,
                            str(tmp_path / out)], capture_output=True, cwd=ROOT)  # fmt: skip
        assert r.returncode == 0, r.stderr
    (tmp_path / "llmc" / "encoder.json").write_bytes((folder / "encoder.json").read_bytes())
    (tmp_path / "llmc" / "vocab.bpe").write_bytes((folder / "vocab.bpe").read_bytes())
    expected = {
        "openai": {"hparams.json", "checkpoint", "model.ckpt.index", "model.safetensors"},
        "hf": {"config.json", "model.safetensors", "vocab.json", "merges.txt"},
        "llmc/model.bin": {"model.bin", "model.bin.picogpt2.safetensors"},
        "st": {"hparams.json", "model.safetensors"},
    }
    for name, files in expected.items():
        opens = opens_of_a_second_load(tmp_path / name)
        assert all(n == 1 for n in opens.values()), (name, opens)
        where = str(tmp_path / name.split("/")[0])
        read = {p.rsplit("/", 1)[1] for p in opens if p.startswith(where)}
        vocabulary = {"vocab.json", "merges.txt"} if name == "hf" else {"encoder.json", "vocab.bpe"}
        assert read == files | vocabulary, (name, read)


def test_a_released_size_opens_each_file_once(tmp_path):
    # A release as the downloader leaves it: converted, its marker beside it.
    folder = make_tiny_model(tmp_path / "124M")
    converted(folder)
    (folder / "download.json").write_text(json.dumps({"keep_original": True}) + "\n")
    opens = opens_of_a_second_load("124M", tmp_path)
    assert all(n == 1 for n in opens.values()), opens
    assert str((folder / "download.json").resolve()) in opens


def copy_with(converted_models, tmp_path, file, change):
    """The tiny model (our safetensors layout, or a transformers folder) with
    ``change`` applied to its ``hparams.json`` or ``config.json``."""
    folder = tmp_path / "big"
    if file == "config.json":
        export(converted_models, "hf", folder)
    else:
        export(converted_models, "safetensors", folder)
    values = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**values, **change}))
    return folder


@pytest.mark.parametrize("file", ["hparams.json", "config.json"])
def test_sizes_no_file_could_hold_are_refused_before_anything_is_allocated(
    converted_models, tmp_path, file
):
    folder = copy_with(converted_models, tmp_path, file, {"n_layer": 10**12})
    r = run("generate", "the cat", "--model-size", str(folder), timeout=30)
    one_line_error(r, 1, "n_layer 1000000000000", "1,000,000,000,000 blocks, in")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: rewrite_header(p, lambda h: h["model/wte"].update(dtype="F33")), "'F33'"),
        (lambda p: rewrite_header(p, lambda h: h["model/wpe"].update(shape=[64, 15])), "wpe"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "header describes"),
        (lambda p: p.write_bytes(b""), "too short for its header"),
    ],
)
def test_damaged_safetensors_is_named_with_the_fix(converted_models, tmp_path, damage, reason):
    folder = without_checkpoint(copy_model(converted_models, tmp_path))
    damage(folder / WEIGHTS_FILE)
    r = run("generate", "hi", "--model-size", "copy", "--models-dir", str(tmp_path))
    one_line_error(r, 1, str(folder / WEIGHTS_FILE), "is damaged", reason, "restore it")
    assert r.stdout == b""


@pytest.mark.parametrize(
    "change, words",
    [
        ({"n_head": 3}, ["n_head 3 does not divide n_embd 16"]),
        ({"n_ctx": 128}, ["model/wpe is [64, 16], where they need [128, 16]"]),
        ({"n_layer": 1}, ["model/h1/", "is left over"]),
        ({"n_layer": 3}, ["model/h2/", "is missing"]),
        ({"n_vocab": 100}, ["model/wte is [264, 16], where they need [100, 16]"]),
    ],
)
def test_hparams_that_disagree_with_the_weights(converted_models, tmp_path, change, words):
    folder = copy_model(converted_models, tmp_path)
    hparams = json.loads((folder / "hparams.json").read_text())
    (folder / "hparams.json").write_text(json.dumps({**hparams, **change}))
    r = run("generate", "hi", "--n-tokens", "2", "--model-size", "copy",
            "--models-dir", str(tmp_path))  # fmt: skip
    one_line_error(r, 1, *words)
    assert r.stdout == b""  # found at load, before any output
