"""GGUF in and out (llama.cpp's files): our writer's files read back
exactly, every block type dequantized as ggml's loops do, quantized files
loaded, and hostile headers refused in one line. The ``gguf`` package and
llama.cpp itself judge the same files in test_gguf_oracle.py."""

import struct

import numpy as np
import pytest
from gguf_blocks import random_blocks, slow_block
from mirror import export, one_line_error, run, text
from tiny import make_tiny_model

from picogpt2.model import load_model
from picogpt2.util.errors import FormatError
from picogpt2.weights import gguf_file
from picogpt2.weights.formats import gguf
from picogpt2.weights.ggml_types import BY_NAME, dequantize
from picogpt2.weights.gguf_file import open_gguf, write_gguf
from picogpt2.weights.loading import open_model
from picogpt2.weights.params import schema
from picogpt2.weights.vocabulary import EncoderFileError, read_vocabulary

IDS = [5, 17, 99, 3, 42, 8, 120, 7]
BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # n_embd 256: whole blocks of every type, K types included.
    make_tiny_model(root / "tiny", n_layer=2, n_head=4, n_embd=256, n_ctx=32, scale=0.05)
    return root


@pytest.fixture(scope="module")
def ours(models):
    return load_model("tiny", models, show_progress=False)


@pytest.fixture(scope="module")
def f32(models, tmp_path_factory):
    return export(models, "gguf", tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def tensors_of(model_dir):
    return open_model(model_dir).weights()


# -- out and back -----------------------------------------------------------------


def test_an_f32_export_reads_back_bit_exactly_with_its_own_vocabulary(models, ours, f32):
    back = tensors_of(f32)
    original = tensors_of(models / "tiny")
    assert back.keys() == original.keys()
    for name in original:
        assert np.array_equal(back[name], original[name]), name
    assert read_vocabulary(f32) == read_vocabulary(models / "tiny")
    assert np.array_equal(load_model(f32).logits(IDS), ours.logits(IDS))


def test_an_f16_export_holds_float16_matrices_and_float32_vectors(models, tmp_path):
    out = tmp_path / "tiny-f16.gguf"
    r = run("export", "tiny", "--models-dir", str(models), "--to", "gguf", str(out),
            "--outtype", "f16")  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    stored = {name: info.type.name for name, info in open_gguf(out).tensors.items()}
    assert stored["token_embd.weight"] == stored["blk.1.ffn_down.weight"] == "F16"
    assert stored["position_embd.weight"] == stored["blk.0.attn_qkv.bias"] == "F32"
    assert stored["output_norm.weight"] == "F32"
    back, original = tensors_of(out), tensors_of(models / "tiny")
    for name, values in original.items():
        half = values.ndim >= 2 and name != "model/wpe"
        expected = values.astype(np.float16).astype(np.float32) if half else values
        assert np.array_equal(back[name], expected), name


def test_outtype_is_for_gguf_only_and_usage_errors_are_one_line(models, tmp_path):
    r = run("export", "tiny", "--models-dir", str(models), "--to", "hf", str(tmp_path / "x"),
            "--outtype", "f16")  # fmt: skip
    one_line_error(r, 2, "--outtype is for --to gguf only")
    assert not (tmp_path / "x").exists()


def test_generate_and_tokens_run_a_gguf_with_the_vocabulary_inside(models, f32, tmp_path):
    alone = tmp_path / "alone.gguf"  # nothing beside it: the vocabulary must come from the file
    alone.write_bytes(f32.read_bytes())
    r = run("generate", "--model-size", str(alone), "--n-tokens", "6", "the")
    want = run("generate", "--model-size", "tiny", "--models-dir", str(models), "--n-tokens",
               "6", "the")  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    assert r.stdout == want.stdout
    assert f"from {alone} (the path given)" in text(r.stderr)
    tokens = run("tokens", "--model-size", str(alone), "the cat")
    assert tokens.stdout == run("tokens", "--vocab-dir", str(models / "tiny"), "the cat").stdout


def test_a_load_reads_the_gguf_once_for_its_weights_and_its_vocabulary(f32, tmp_path):
    path = tmp_path / "once.gguf"
    path.write_bytes(f32.read_bytes())
    gguf_file._opened.cache_clear()
    load_model(path, show_progress=False)
    assert gguf_file._opened.cache_info().misses == 1  # the vocabulary did not read it again
    path.write_bytes(path.read_bytes())  # rewritten: read afresh
    load_model(path, show_progress=False)
    assert gguf_file._opened.cache_info().misses == 2


def test_a_gguf_without_a_vocabulary_uses_the_folder_beside_or_the_one_given(
    models, ours, tmp_path
):
    tensors = tensors_of(models / "tiny")
    meta = {k: v for k, v in gguf.metadata(ours.hparams, models / "tiny", "f32").items()
            if not k.startswith("tokenizer.")}  # fmt: skip
    path = tmp_path / "bare.gguf"
    write_gguf(path, meta, _stored(ours.hparams, tensors))
    r = run("generate", "--model-size", str(path), "--n-tokens", "2", "the")
    one_line_error(r, 1, "no encoder.json and vocab.bpe beside it", "--encoder-dir")
    r = run("generate", "--model-size", str(path), "--encoder-dir", str(models / "tiny"),
            "--n-tokens", "2", "the")  # fmt: skip
    assert r.returncode == 0, text(r.stderr)


# -- block types ------------------------------------------------------------------


@pytest.mark.parametrize("kind", BLOCK_TYPES)
def test_each_block_type_dequantizes_as_ggmls_loops_do(kind):
    blocks = random_blocks(kind, 40, seed=BLOCK_TYPES.index(kind))
    fast = dequantize(blocks, BY_NAME[kind], (40, BY_NAME[kind].block))
    slow = np.array([slow_block(kind, bytes(b)) for b in blocks], np.float32)
    assert np.array_equal(fast.view(np.uint32), slow.view(np.uint32))


def test_half_and_brain_float_are_exact():
    values = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    half = values.astype("<f2")
    out = dequantize(half.view(np.uint8), BY_NAME["F16"], (64,))
    assert np.array_equal(out, half.astype(np.float32))
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    out = dequantize(bits.view(np.uint8), BY_NAME["BF16"], (64,))
    assert np.array_equal(out.view(np.uint32), values.view(np.uint32) & 0xFFFF0000)


def quantize_q8_0(values: np.ndarray) -> bytes:
    """Q8_0 as ggml's reference quantizer makes it: d = max |x| / 127 in
    float16, q = round(x / d), halves away from zero."""
    blocks = values.astype(np.float32).reshape(-1, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    inverse = np.divide(1, d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inverse
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))).astype(np.int8)
    out = np.concatenate([d.astype("<f2").view(np.uint8), q.view(np.uint8)], axis=1)
    return out.tobytes()


def _stored(hparams, tensors, matrices="F32"):
    """Every tensor as the format lays it out, matrices of type ``matrices``
    (F32 or Q8_0), the rest F32."""
    for t in schema(hparams):
        values = np.asarray(tensors[t.name], np.float32).reshape(t.tree_shape)
        values = np.ascontiguousarray(values.T if t.leaf == "w" else values)
        quantized = matrices == "Q8_0" and values.ndim == 2 and t.module != "wpe"
        kind = BY_NAME["Q8_0" if quantized else "F32"]
        data = quantize_q8_0(values) if quantized else values.astype("<f4").tobytes()
        yield gguf.gguf_name(t), kind, values.shape, lambda data=data: data


def test_a_q8_0_file_runs_on_its_dequantized_weights(models, ours, tmp_path):
    tensors = tensors_of(models / "tiny")
    meta = gguf.metadata(ours.hparams, models / "tiny", "f32")
    path = tmp_path / "q8.gguf"
    write_gguf(path, meta, _stored(ours.hparams, tensors, "Q8_0"))
    back = tensors_of(path)
    wte = tensors["model/wte"]
    assert np.abs(back["model/wte"] - wte).max() <= np.abs(wte).max() / 127  # a step at most
    assert not np.array_equal(back["model/wte"], wte)
    # The same dequantized weights written as F32 give the same logits, bit for bit.
    plain = tmp_path / "plain.gguf"
    write_gguf(plain, meta, _stored(ours.hparams, back))
    assert np.array_equal(load_model(path).logits(IDS), load_model(plain).logits(IDS))


def test_a_tied_head_loads_and_an_untied_one_is_refused(models, ours, tmp_path):
    tensors = tensors_of(models / "tiny")
    meta = gguf.metadata(ours.hparams, models / "tiny", "f32")
    wte = np.ascontiguousarray(tensors["model/wte"], "<f4")
    for name, head, ok in (("tied", wte, True), ("untied", wte * 2, False)):
        path = tmp_path / f"{name}.gguf"
        extra = [("output.weight", BY_NAME["F32"], wte.shape, lambda h=head: h.tobytes())]
        write_gguf(path, meta, [*_stored(ours.hparams, tensors), *extra])
        if ok:
            assert np.array_equal(load_model(path).logits(IDS), ours.logits(IDS))
        else:
            with pytest.raises(FormatError, match="output.weight .F32. differs from token_embd"):
                tensors_of(path)


# -- hostile headers ----------------------------------------------------------------


def tensor_info_at(data: bytes, name: str) -> int:
    """The byte just after ``name`` in the tensor table (its n_dims)."""
    raw = name.encode()
    return data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)


def patched(f32, tmp_path, change) -> bytes:
    data = bytearray(f32.read_bytes())
    change(data)
    path = tmp_path / "hostile.gguf"
    path.write_bytes(bytes(data))
    return path


def _set(data, at, fmt, value):
    data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)


WPE = "position_embd.weight"  # 2 dims: n_dims, ne0, ne1, type, offset follow its name
HOSTILE = {
    "truncated": (lambda d: d.__delitem__(slice(len(d) - 100, None)),
                  "runs past the end of the file"),
    "header cut": (lambda d: d.__delitem__(slice(200, None)), "could hold: truncated"),
    "version 1": (lambda d: _set(d, 4, "<I", 1), "version 1; picogpt2 reads versions 2 and 3"),
    "big-endian": (lambda d: _set(d, 4, ">I", 3), "big-endian"),
    "tensor count": (lambda d: _set(d, 8, "<Q", 1 << 60), "more than the file's"),
    "key count": (lambda d: _set(d, 16, "<Q", 1 << 40), "more than the file's"),
    "key length": (lambda d: _set(d, 24, "<Q", 1 << 62), "more than the file's"),
    "dims": (lambda d: _set(d, tensor_info_at(d, WPE), "<I", 5), "5 dimensions"),
    "type": (lambda d: _set(d, tensor_info_at(d, WPE) + 20, "<I", 10),
             "stored as Q2_K; picogpt2 reads F32"),
    "unknown type": (lambda d: _set(d, tensor_info_at(d, WPE) + 20, "<I", 999),
                     "stored as type 999"),
    "misaligned": (lambda d: _set(d, tensor_info_at(d, WPE) + 24, "<Q", 4),
                   "not a multiple of the alignment 32"),
    "past the end": (lambda d: _set(d, tensor_info_at(d, WPE) + 24, "<Q", 1 << 40),
                     "runs past the end of the file"),
    "overlap": (lambda d: _set(d, tensor_info_at(d, WPE) + 24, "<Q", 0), "overlap"),
    "huge dims": (lambda d: _set(d, tensor_info_at(d, WPE) + 12, "<Q", 1 << 50),
                  "runs past the end of the file"),
    "shape": (lambda d: _set(d, tensor_info_at(d, WPE) + 12, "<Q", 16),
              "position_embd.weight is [16, 256], where the metadata's sizes"),
    "architecture": (lambda d: d.__setitem__(slice(d.index(b"gpt2"), d.index(b"gpt2") + 4),
                                             b"gptj"), "general.architecture is 'gptj'"),
    "tokenizer": (lambda d: d.__setitem__(slice(d.index(b"gpt-2"), d.index(b"gpt-2") + 5),
                                          b"llama"), "tokenizer.ggml.pre is 'llama'"),
}  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_file_is_refused_in_one_line(f32, tmp_path, case):
    change, words = HOSTILE[case]
    path = patched(f32, tmp_path, change)
    with pytest.raises((FormatError, EncoderFileError)) as raised:
        load_model(path, show_progress=False).logits([1])
    assert words in str(raised.value), str(raised.value)
    assert str(path) in str(raised.value)
    assert not gguf.cache_path(path).exists()  # refused before any conversion


@pytest.mark.parametrize("case", ["truncated", "tokenizer"])
def test_a_hostile_file_through_the_command_is_one_line(f32, tmp_path, case):
    path = patched(f32, tmp_path, HOSTILE[case][0])
    r = run("generate", "--model-size", str(path), "--n-tokens", "2", "the")
    one_line_error(r, 1, HOSTILE[case][1])


def test_metadata_that_changes_the_math_is_refused_by_name(models, ours, tmp_path):
    tensors = tensors_of(models / "tiny")
    for key, value, words in (
        ("gpt2.attention.layer_norm_epsilon", ("float32", 1e-6), "layer_norm_epsilon"),
        ("gpt2.feed_forward_length", ("uint32", 3 * 256), "feed_forward_length = 768"),
        ("gpt2.attention.head_count_kv", ("uint32", 1), "head_count_kv = 1"),
    ):
        meta = gguf.metadata(ours.hparams, models / "tiny", "f32") | {key: value}
        path = tmp_path / f"{key}.gguf"
        write_gguf(path, meta, _stored(ours.hparams, tensors))
        with pytest.raises(FormatError, match=words):
            open_model(path)
