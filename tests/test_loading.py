"""The one way in: a model is opened once. A second load_model of a
converted model opens no file twice, whatever its format (an audit hook
counts every open, in a fresh interpreter)."""

import json
import subprocess
import sys

from mirror import ROOT
from tiny import converted, make_tiny_model

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
