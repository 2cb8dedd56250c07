"""OpenAI's checkpoint converted once into model.safetensors (formats.openai
through formats.cache), and the safetensors file itself."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mirror import one_line_error, run, text
from tiny import (
    converted,
    copy_model,
    is_converted,
    make_tiny_model,
    tiny,
    tiny_tensors,
)

from picogpt2.util.crc32c import crc32c
from picogpt2.util.errors import WeightsError
from picogpt2.weights.formats import cache, openai
from picogpt2.weights.formats.safetensors import (
    WEIGHTS_FILE,
    DamagedWeightsError,
    read_tensors,
    verify,
    write_tensors,
)
from picogpt2.weights.formats.tf_bundle import write_tf_checkpoint


@pytest.fixture
def tiny_folder(tmp_path):
    return make_tiny_model(tmp_path / "tiny")


def hparams(folder):
    return json.loads((folder / "hparams.json").read_text())


def tensors_of(folder):
    return converted(folder)


def test_conversion_keeps_names_shapes_and_values(tiny_folder):
    expected = tiny_tensors(hparams(tiny_folder))
    tensors = tensors_of(tiny_folder)
    assert tensors.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(tensors[name], array)
        assert tensors[name].dtype == np.float32
    assert (tiny_folder / "model.ckpt.data-00000-of-00001").exists()  # the user's files are kept


def test_loaded_weights_are_memory_mapped_read_only_and_aligned(tiny_folder):
    tensors = tensors_of(tiny_folder)
    wte = tensors["model/wte"]
    base = wte
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    assert Path(base.filename).resolve() == (tiny_folder / WEIGHTS_FILE).resolve()
    assert not wte.flags.writeable
    assert all(t.ctypes.data % 64 == 0 for t in tensors.values() if t.size)


def test_conversion_is_done_once(tiny_folder):
    tensors_of(tiny_folder)
    stamp = (tiny_folder / WEIGHTS_FILE).stat().st_mtime_ns
    assert is_converted(tiny_folder)
    tensors_of(tiny_folder)
    assert (tiny_folder / WEIGHTS_FILE).stat().st_mtime_ns == stamp


def test_stale_conversion_is_redone(tiny_folder):
    tensors_of(tiny_folder)
    new = tiny_tensors(hparams(tiny_folder), seed=7)
    write_tf_checkpoint(tiny_folder / "model.ckpt", new)  # a fine-tune written over it
    assert not is_converted(tiny_folder)
    np.testing.assert_array_equal(tensors_of(tiny_folder)["model/wte"], new["model/wte"])


def test_a_conversion_by_an_older_picogpt2_is_still_used(tiny_folder):
    tensors = {k: np.array(v) for k, v in tensors_of(tiny_folder).items()}
    _, metadata = read_tensors(tiny_folder / WEIGHTS_FILE)
    old = {k: v for k, v in metadata.items() if k != cache.FINGERPRINT_KEY}
    old[cache.LEGACY_FINGERPRINT_KEY] = metadata[cache.FINGERPRINT_KEY]
    write_tensors(tiny_folder / WEIGHTS_FILE, tensors, old)
    (tiny_folder / "model.ckpt.data-00000-of-00001").unlink()  # as a download leaves it
    assert is_converted(tiny_folder)
    np.testing.assert_array_equal(tensors_of(tiny_folder)["model/wpe"], tensors["model/wpe"])


def test_a_truncated_conversion_is_reported_as_damaged_never_replaced(tiny_folder):
    # The writer renames only a complete file, so a short one was damaged
    # after it was written: say so, with the way to mend it.
    tensors_of(tiny_folder)
    path = tiny_folder / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for check in (is_converted, tensors_of):
        with pytest.raises(DamagedWeightsError, match=f"{path} is damaged: .* header describes"):
            check(tiny_folder)
    with pytest.raises(DamagedWeightsError, match="converts the checkpoint beside it again"):
        tensors_of(tiny_folder)
    assert path.read_bytes() == data[: len(data) // 2]  # left for the user to see


def test_a_file_picogpt2_did_not_write_is_never_replaced(tiny_folder):
    theirs = {"x": np.ones(3, np.float32)}
    write_tensors(tiny_folder / WEIGHTS_FILE, theirs, {"format": "pt"})
    with pytest.raises(WeightsError, match="not a conversion picogpt2 made, so it is not replaced"):
        tensors_of(tiny_folder)
    assert read_tensors(tiny_folder / WEIGHTS_FILE)[0].keys() == {"x"}


def test_interrupted_conversion_leaves_no_file_that_loads(tiny_folder, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(openai, "read_tf_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tensors_of(tiny_folder)
    assert not (tiny_folder / WEIGHTS_FILE).exists() and not is_converted(tiny_folder)
    assert sorted(p.name for p in tiny_folder.iterdir() if p.name.endswith(".tmp")) == []


def test_conversion_records_each_tensors_crc32c_and_verify_checks_it(tiny_folder):
    tensors = tensors_of(tiny_folder)
    assert verify(tiny_folder / WEIGHTS_FILE) == len(tensors)
    _, metadata = read_tensors(tiny_folder / WEIGHTS_FILE)
    crcs = json.loads(metadata["crc32c"])
    assert int(crcs["model/wte"], 16) == crc32c(tensors["model/wte"].tobytes())


def test_leftover_temporary_file_is_ignored(tiny_folder):
    (tiny_folder / (WEIGHTS_FILE + ".tmp")).write_bytes(b"partial")
    assert not is_converted(tiny_folder)
    assert tensors_of(tiny_folder)["model/wpe"].shape == (64, 16)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / WEIGHTS_FILE
    with pytest.raises(KeyError):  # bool has no safetensors dtype name here
        write_tensors(path, {"ok": np.ones(3, np.float32), "bad": np.ones(2, bool)}, {})
    assert os.listdir(tmp_path) == []


def test_safetensors_is_readable_by_the_safetensors_package(tiny_folder):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    ours = tensors_of(tiny_folder)
    theirs = safetensors_numpy.load_file(str(tiny_folder / WEIGHTS_FILE))
    assert theirs.keys() == ours.keys()
    for name in ours:
        np.testing.assert_array_equal(theirs[name], ours[name])


def test_a_conversion_never_writes_through_a_link_out_of_the_folder(tmp_path):
    folder = make_tiny_model(tmp_path / "models" / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"someone's file")
    (folder / "model.safetensors.tmp").symlink_to(os.path.relpath(elsewhere, folder))
    r = run("generate", "the cat", "--n-tokens", "2", *tiny(tmp_path / "models"))
    assert r.returncode == 0, text(r.stderr)
    assert elsewhere.read_bytes() == b"someone's file"
    assert not (folder / "model.safetensors").is_symlink()
    # A file picogpt2 did not create is left as it was (#28): used, it is not.
    assert (folder / "model.safetensors.tmp").is_symlink()
    assert not [p for p in folder.iterdir() if p.name.startswith(".model.safetensors.")]


def test_damaged_conversion_beside_its_checkpoint_says_delete(converted_models, tmp_path):
    folder = copy_model(converted_models, tmp_path)
    (folder / WEIGHTS_FILE).write_bytes(b"")
    r = run("generate", "hi", "--model-size", "copy", "--models-dir", str(tmp_path))
    one_line_error(r, 1, "is damaged", "delete it, and picogpt2 converts the checkpoint")


def test_read_only_folder_with_only_a_checkpoint_is_converted_in_memory(tmp_path):
    folder = make_tiny_model(tmp_path / "ro" / "tiny")
    before = sorted(p.name for p in folder.iterdir())
    # Root writes through permission bits, not through the immutable flag.
    lock = ["chattr", "+i", str(folder)] if os.geteuid() == 0 else None
    if lock and subprocess.run(lock, capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i")
    if not lock:
        os.chmod(folder, 0o555)
    try:
        runs = [run("generate", "the cat", "--model-size", "tiny", "--models-dir",
                    str(folder.parent), "--n-tokens", "4") for _ in range(2)]  # fmt: skip
    finally:
        if lock:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)
    for r in runs:
        assert r.returncode == 0, text(r.stderr)
        assert "cannot be written: converting" in text(r.stderr)  # said at every load
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.startswith(b"the cat")
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written there
