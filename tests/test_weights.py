import json
import os

import numpy as np
import pytest
from tiny import make_tiny_model, tiny_tensors

from picogpt2.checkpoint import write_tf_checkpoint
from picogpt2.crc32c import crc32c
from picogpt2.weights import (
    WEIGHTS_FILE,
    DamagedWeightsError,
    WeightsError,
    convert,
    is_converted,
    load_weights,
    read_safetensors,
    verify_weights,
    write_safetensors,
)


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_model(tmp_path / "tiny")


def hparams(folder):
    return json.loads((folder / "hparams.json").read_text())


def test_conversion_keeps_names_shapes_and_values(tiny):
    expected = tiny_tensors(hparams(tiny))
    convert(tiny, keep_original=True)
    tensors = load_weights(tiny)
    assert tensors.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(tensors[name], array)
        assert tensors[name].dtype == np.float32


def test_loaded_weights_are_memory_mapped_and_aligned(tiny):
    convert(tiny)
    tensors = load_weights(tiny)
    wte = tensors["model/wte"]
    assert isinstance(wte.base, np.memmap) or isinstance(wte, np.memmap)
    assert not wte.flags.writeable
    assert all(t.ctypes.data % 64 == 0 for t in tensors.values() if t.size)


def test_shard_removed_after_conversion_unless_kept(tmp_path):
    kept = make_tiny_model(tmp_path / "kept")
    convert(kept, keep_original=True)
    assert (kept / "model.ckpt.data-00000-of-00001").exists()
    removed = make_tiny_model(tmp_path / "removed")
    convert(removed)
    assert not (removed / "model.ckpt.data-00000-of-00001").exists()
    assert is_converted(removed)  # the index stays as the record
    assert load_weights(removed)["model/wte"].shape[1] == 16


def test_conversion_is_idempotent(tiny):
    path = convert(tiny, keep_original=True)
    stamp = path.stat().st_mtime_ns
    convert(tiny, keep_original=True)
    assert path.stat().st_mtime_ns == stamp


def test_stale_conversion_is_redone(tiny):
    convert(tiny, keep_original=True)
    new = tiny_tensors(hparams(tiny), seed=7)
    write_tf_checkpoint(tiny / "model.ckpt", new)  # a fine-tune written over it
    assert not is_converted(tiny)
    np.testing.assert_array_equal(load_weights(tiny)["model/wte"], new["model/wte"])


def test_a_truncated_conversion_is_reported_as_damaged_never_replaced(tiny):
    # The writer renames only a complete file, so a short one was damaged
    # after it was written: say so (the commands add how to mend it).
    convert(tiny, keep_original=True)
    path = tiny / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for check in (is_converted, load_weights):
        with pytest.raises(DamagedWeightsError, match=f"{path} is damaged: .* header describes"):
            check(tiny)
    assert path.read_bytes() == data[: len(data) // 2]  # left for the user to see


def test_interrupted_conversion_leaves_no_file_that_loads(tiny, monkeypatch):
    import picogpt2.weights as weights

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "read_tf_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny, keep_original=True, show_progress=False)
    assert not (tiny / WEIGHTS_FILE).exists() and not is_converted(tiny)


def test_conversion_records_each_tensors_crc32c_and_verify_checks_it(tiny):
    convert(tiny, keep_original=True, show_progress=False)
    assert verify_weights(tiny) == len(load_weights(tiny))
    _, metadata = read_safetensors(tiny / WEIGHTS_FILE)
    crcs = json.loads(metadata["crc32c"])
    wte = load_weights(tiny)["model/wte"]
    assert int(crcs["model/wte"], 16) == crc32c(wte.tobytes())


def test_leftover_temporary_file_is_ignored(tiny):
    (tiny / (WEIGHTS_FILE + ".tmp")).write_bytes(b"partial")
    assert not is_converted(tiny)
    assert load_weights(tiny)["model/wpe"].shape == (64, 16)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / WEIGHTS_FILE
    with pytest.raises(KeyError):  # bool has no safetensors dtype name here
        write_safetensors(path, {"ok": np.ones(3, np.float32), "bad": np.ones(2, bool)}, {})
    assert os.listdir(tmp_path) == []


def test_folder_without_weights_is_clear(tmp_path):
    with pytest.raises(WeightsError, match="no model.safetensors and no TensorFlow checkpoint"):
        load_weights(tmp_path)


def test_safetensors_is_readable_by_the_safetensors_package(tiny):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    convert(tiny, keep_original=True)
    theirs = safetensors_numpy.load_file(str(tiny / WEIGHTS_FILE))
    ours = load_weights(tiny)
    assert theirs.keys() == ours.keys()
    for name in ours:
        np.testing.assert_array_equal(theirs[name], ours[name])
