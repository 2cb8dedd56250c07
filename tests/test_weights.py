"""OpenAI's checkpoint converted once into model.safetensors (formats.openai
through formats.cache), and the safetensors file itself."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from tiny import converted, is_converted, make_tiny_model, tiny_tensors

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
def tiny(tmp_path):
    return make_tiny_model(tmp_path / "tiny")


def hparams(folder):
    return json.loads((folder / "hparams.json").read_text())


def tensors_of(folder):
    return converted(folder)


def test_conversion_keeps_names_shapes_and_values(tiny):
    expected = tiny_tensors(hparams(tiny))
    tensors = tensors_of(tiny)
    assert tensors.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(tensors[name], array)
        assert tensors[name].dtype == np.float32
    assert (tiny / "model.ckpt.data-00000-of-00001").exists()  # the user's files are kept


def test_loaded_weights_are_memory_mapped_read_only_and_aligned(tiny):
    tensors = tensors_of(tiny)
    wte = tensors["model/wte"]
    base = wte
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)
    assert Path(base.filename).resolve() == (tiny / WEIGHTS_FILE).resolve()
    assert not wte.flags.writeable
    assert all(t.ctypes.data % 64 == 0 for t in tensors.values() if t.size)


def test_conversion_is_done_once(tiny):
    tensors_of(tiny)
    stamp = (tiny / WEIGHTS_FILE).stat().st_mtime_ns
    assert is_converted(tiny)
    tensors_of(tiny)
    assert (tiny / WEIGHTS_FILE).stat().st_mtime_ns == stamp


def test_stale_conversion_is_redone(tiny):
    tensors_of(tiny)
    new = tiny_tensors(hparams(tiny), seed=7)
    write_tf_checkpoint(tiny / "model.ckpt", new)  # a fine-tune written over it
    assert not is_converted(tiny)
    np.testing.assert_array_equal(tensors_of(tiny)["model/wte"], new["model/wte"])


def test_a_conversion_by_an_older_picogpt2_is_still_used(tiny):
    tensors = {k: np.array(v) for k, v in tensors_of(tiny).items()}
    _, metadata = read_tensors(tiny / WEIGHTS_FILE)
    old = {k: v for k, v in metadata.items() if k != cache.FINGERPRINT_KEY}
    old[cache.LEGACY_FINGERPRINT_KEY] = metadata[cache.FINGERPRINT_KEY]
    write_tensors(tiny / WEIGHTS_FILE, tensors, old)
    (tiny / "model.ckpt.data-00000-of-00001").unlink()  # as a download leaves it
    assert is_converted(tiny)
    np.testing.assert_array_equal(tensors_of(tiny)["model/wpe"], tensors["model/wpe"])


def test_a_truncated_conversion_is_reported_as_damaged_never_replaced(tiny):
    # The writer renames only a complete file, so a short one was damaged
    # after it was written: say so, with the way to mend it.
    tensors_of(tiny)
    path = tiny / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for check in (is_converted, tensors_of):
        with pytest.raises(DamagedWeightsError, match=f"{path} is damaged: .* header describes"):
            check(tiny)
    with pytest.raises(DamagedWeightsError, match="converts the checkpoint beside it again"):
        tensors_of(tiny)
    assert path.read_bytes() == data[: len(data) // 2]  # left for the user to see


def test_a_file_picogpt2_did_not_write_is_never_replaced(tiny):
    theirs = {"x": np.ones(3, np.float32)}
    write_tensors(tiny / WEIGHTS_FILE, theirs, {"format": "pt"})
    with pytest.raises(WeightsError, match="not a conversion picogpt2 made, so it is not replaced"):
        tensors_of(tiny)
    assert read_tensors(tiny / WEIGHTS_FILE)[0].keys() == {"x"}


def test_interrupted_conversion_leaves_no_file_that_loads(tiny, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(openai, "read_tf_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tensors_of(tiny)
    assert not (tiny / WEIGHTS_FILE).exists() and not is_converted(tiny)
    assert sorted(p.name for p in tiny.iterdir() if p.name.endswith(".tmp")) == []


def test_conversion_records_each_tensors_crc32c_and_verify_checks_it(tiny):
    tensors = tensors_of(tiny)
    assert verify(tiny / WEIGHTS_FILE) == len(tensors)
    _, metadata = read_tensors(tiny / WEIGHTS_FILE)
    crcs = json.loads(metadata["crc32c"])
    assert int(crcs["model/wte"], 16) == crc32c(tensors["model/wte"].tobytes())


def test_leftover_temporary_file_is_ignored(tiny):
    (tiny / (WEIGHTS_FILE + ".tmp")).write_bytes(b"partial")
    assert not is_converted(tiny)
    assert tensors_of(tiny)["model/wpe"].shape == (64, 16)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / WEIGHTS_FILE
    with pytest.raises(KeyError):  # bool has no safetensors dtype name here
        write_tensors(path, {"ok": np.ones(3, np.float32), "bad": np.ones(2, bool)}, {})
    assert os.listdir(tmp_path) == []


def test_safetensors_is_readable_by_the_safetensors_package(tiny):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    ours = tensors_of(tiny)
    theirs = safetensors_numpy.load_file(str(tiny / WEIGHTS_FILE))
    assert theirs.keys() == ours.keys()
    for name in ours:
        np.testing.assert_array_equal(theirs[name], ours[name])
