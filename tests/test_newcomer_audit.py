"""The second newcomer audit (#20): nothing outside the folder, nothing
unbounded, the paths and files people have, one line with the right exit
status. Each finding is run as the README runs the command, a subprocess."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from mirror import one_line_error, run, text
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
    from picogpt2.errors import InputError
    from picogpt2.model import load_model

    model = load_model("tiny", models, show_progress=False)
    with pytest.raises(InputError, match="10000000000 samples of 5 tokens would need about"):
        model.generate_many([1, 2, 3], 5, 10**10)


@pytest.mark.parametrize("sizes", [["--width", "100000", "--heads", "1"], ["--layers", "100000"]])
def test_a_fixture_too_large_is_refused_and_explained(real_dir, tmp_path, sizes):
    r = run("fixture", str(tmp_path / "fx"), "--encoder-dir", str(real_dir), *sizes, timeout=30)
    one_line_error(r, 2, "parameters; a fixture is a small model, at most 200,000,000")
    assert not (tmp_path / "fx").exists()
