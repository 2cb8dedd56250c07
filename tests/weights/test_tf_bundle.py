"""TensorFlow checkpoints read and written with NumPy alone (the real 124M
index where ../shared has it; TensorFlow itself where it is installed)."""

import shutil

import numpy as np
import pytest

from picogpt2.util.crc32c import crc32c, mask
from picogpt2.weights.formats.tf_bundle import (
    CheckpointError,
    find_checkpoint_prefix,
    read_tf_checkpoint,
    read_tf_index,
    write_tf_checkpoint,
)


def expected_real_shapes():
    shapes = {"model/wte": (50257, 768), "model/wpe": (1024, 768)}
    shapes["model/ln_f/g"] = shapes["model/ln_f/b"] = (768,)
    for i in range(12):
        p = f"model/h{i}"
        shapes[f"{p}/attn/c_attn/w"], shapes[f"{p}/attn/c_attn/b"] = (1, 768, 2304), (2304,)
        shapes[f"{p}/attn/c_proj/w"], shapes[f"{p}/attn/c_proj/b"] = (1, 768, 768), (768,)
        for norm in ("ln_1", "ln_2"):
            shapes[f"{p}/{norm}/g"] = shapes[f"{p}/{norm}/b"] = (768,)
        shapes[f"{p}/mlp/c_fc/w"], shapes[f"{p}/mlp/c_fc/b"] = (1, 768, 3072), (3072,)
        shapes[f"{p}/mlp/c_proj/w"], shapes[f"{p}/mlp/c_proj/b"] = (1, 3072, 768), (768,)
    return shapes


def test_real_index_names_shapes_dtypes(real_dir):
    n_shards, entries = read_tf_index(real_dir)
    assert n_shards == 1
    assert len(entries) == 148
    assert {name: e.shape for name, e in entries.items()} == expected_real_shapes()
    assert all(e.dtype == np.float32 for e in entries.values())
    assert entries["model/h0/attn/c_attn/b"].offset == 0
    assert entries["model/h0/attn/c_attn/b"].size == 9216
    assert entries["model/h0/attn/c_attn/w"].offset == 9216
    assert entries["model/wte"].offset == 343_369_728
    assert max(e.offset + e.size for e in entries.values()) == 497_759_232


def test_real_crc_of_first_tensor(real_dir):
    _, entries = read_tf_index(real_dir)
    entry = entries["model/h0/attn/c_attn/b"]
    with open(real_dir / "model.ckpt.data-00000-of-00001", "rb") as f:
        data = f.read(entry.size)
    assert mask(crc32c(data)) == entry.crc32c


def test_real_truncated_shard_fails_clearly(real_dir):
    with pytest.raises(CheckpointError, match=r"truncated: model/h0/attn/c_attn/w") as info:
        read_tf_checkpoint(real_dir)
    assert info.value.path.name == "model.ckpt.data-00000-of-00001"


def test_real_prefix_found_through_checkpoint_file(real_dir):
    assert find_checkpoint_prefix(real_dir) == real_dir / "model.ckpt"


def random_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model/wte": rng.standard_normal((10, 4)).astype(np.float32),
        "model/h0/attn/c_attn/w": rng.standard_normal((1, 4, 12)).astype(np.float32),
        "model/h0/attn/c_attn/b": rng.standard_normal(12).astype(np.float32),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "double": rng.standard_normal(5),
        "half": rng.standard_normal(7).astype(np.float16),
        "ints": np.arange(6, dtype=np.int32).reshape(2, 3),
        "longs": np.arange(3, dtype=np.int64) - 5,
    }


@pytest.mark.parametrize("n_shards", [1, 3])
def test_round_trip(tmp_path, n_shards):
    tensors = random_tensors()
    write_tf_checkpoint(tmp_path / "model.ckpt", tensors, n_shards=n_shards)
    assert len(list(tmp_path.glob("model.ckpt.data-*"))) == n_shards
    back = read_tf_checkpoint(tmp_path)
    assert back.keys() == tensors.keys()
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


def test_many_tensors_use_restart_points(tmp_path):
    tensors = {f"model/h{i}/x": np.full(3, i, np.float32) for i in range(100)}
    write_tf_checkpoint(tmp_path / "model.ckpt", tensors)
    back = read_tf_checkpoint(tmp_path / "model.ckpt")
    assert all(np.all(back[f"model/h{i}/x"] == i) for i in range(100))


def test_flipped_byte_is_detected_by_name(tmp_path):
    write_tf_checkpoint(tmp_path / "model.ckpt", random_tensors())
    _, entries = read_tf_index(tmp_path)
    shard = tmp_path / "model.ckpt.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[entries["model/wte"].offset + 5] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC-32C mismatch in model/wte") as info:
        read_tf_checkpoint(tmp_path)
    assert info.value.path == shard
    assert read_tf_checkpoint(tmp_path, verify=False)["model/wte"].shape == (10, 4)


def test_damaged_index_is_refused(tmp_path):
    write_tf_checkpoint(tmp_path / "model.ckpt", random_tensors())
    index = tmp_path / "model.ckpt.index"
    data = bytearray(index.read_bytes())
    data[10] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC-32C mismatch in table block"):
        read_tf_index(tmp_path)
    index.write_bytes(b"not an index at all, just some text that is long enough to have a footer")
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index"):
        read_tf_index(tmp_path)


def test_checkpoint_file_from_another_machine(tmp_path):
    write_tf_checkpoint(tmp_path / "model-1000", {"x": np.ones(2, np.float32)})
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "/home/someone/run/model-1000"\n'
        'all_model_checkpoint_paths: "/home/someone/run/model-1000"\n'
    )
    assert find_checkpoint_prefix(tmp_path) == tmp_path / "model-1000"
    assert read_tf_checkpoint(tmp_path)["x"].tolist() == [1.0, 1.0]


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="no 'checkpoint' file"):
        read_tf_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_tf_checkpoint(tmp_path / "nope")


def test_missing_shard_is_named(tmp_path):
    write_tf_checkpoint(tmp_path / "model.ckpt", random_tensors(), n_shards=2)
    (tmp_path / "model.ckpt.data-00001-of-00002").unlink()
    with pytest.raises(CheckpointError, match=r"data-00001-of-00002: missing shard"):
        read_tf_checkpoint(tmp_path)


def test_unsupported_dtype_is_named(tmp_path):
    write_tf_checkpoint(tmp_path / "model.ckpt", {"a": np.ones(2, np.float32)})
    index = tmp_path / "model.ckpt.index"
    # Rewrite the entry's dtype field (1: DT_FLOAT) as 7 (DT_STRING).
    from picogpt2.weights.formats.tf_bundle import build_table, read_table

    records = read_table(index)
    records = [(k, v.replace(b"\x08\x01", b"\x08\x07", 1) if k else v) for k, v in records]
    index.write_bytes(build_table(records))
    with pytest.raises(CheckpointError, match="a has unsupported TensorFlow dtype 7"):
        read_tf_index(tmp_path)


def test_writer_output_is_read_by_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tensors = random_tensors()
    write_tf_checkpoint(tmp_path / "model.ckpt", tensors, n_shards=2)
    reader = tf.train.load_checkpoint(str(tmp_path))
    shapes = reader.get_variable_to_shape_map()
    assert set(shapes) == set(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(reader.get_tensor(name), array)


def test_tensorflow_output_is_read_by_us(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tensors = random_tensors()
    names = sorted(tensors)
    # SaveV2 is the op behind the V2 Saver that wrote OpenAI's checkpoints.
    tf.raw_ops.SaveV2(
        prefix=str(tmp_path / "model.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    back = read_tf_checkpoint(tmp_path / "model.ckpt")
    assert back.keys() == tensors.keys()
    for name, array in tensors.items():
        np.testing.assert_array_equal(back[name], array)


def test_real_index_matches_tensorflow(real_dir, tmp_path):
    tf = pytest.importorskip("tensorflow")
    # TensorFlow reads the index alone for shapes; the shard need not be whole.
    for name in ("checkpoint", "model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        shutil.copy(real_dir / name, tmp_path / name)
    reader = tf.train.load_checkpoint(str(tmp_path / "model.ckpt"))
    _, entries = read_tf_index(tmp_path)
    assert {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()} == {
        k: e.shape for k, e in entries.items()
    }
