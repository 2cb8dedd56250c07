"""GGUF judged by the implementations that define it: the ``gguf`` package
(ggml's own Python: its dequantization, its writer, its reader), and
llama.cpp itself where it is here: its converter reading our transformers
export, its library loading our GGUF export (the C++ recipe of
docs/llamacpp_save_tensors.cpp, compiled), and llama-cpp-python's logits.

Optional: the ``gguf`` package comes with the oracle extra; llama.cpp is
found through ``LLAMA_CPP_DIR`` (a checkout built with CMake: its
``include/``, ``ggml/include/``, ``build/bin/`` and ``convert_hf_to_gguf.py``;
the converter also needs torch and transformers). Each test skips cleanly
without what it needs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf_blocks import random_blocks
from mirror import ROOT, export, run, text
from tiny import make_tiny_model

from picogpt2.model import load_model
from picogpt2.weights.formats import cache
from picogpt2.weights.ggml_types import BY_NAME, dequantize
from picogpt2.weights.loading import open_model

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.oracle

BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
QUANTIZERS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16"]  # gguf can write these
IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931]
LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", "/nonexistent"))


@pytest.mark.parametrize("kind", BLOCK_TYPES + ["F16", "BF16"])
def test_each_type_dequantizes_bit_identically_to_the_gguf_package(kind):
    t = BY_NAME[kind]
    if t.block > 1:
        data = random_blocks(kind, 3000, seed=7).reshape(-1)
    else:  # every bit pattern, NaN and infinity included
        data = np.arange(1 << 16, dtype="<u2").view(np.uint8)
    n = data.size // t.size * t.block
    ours = dequantize(data, t, (n,))
    theirs = gguf.quants.dequantize(data.reshape(1, -1), gguf.GGMLQuantizationType[kind])
    assert np.array_equal(ours.view(np.uint32), theirs.reshape(-1).view(np.uint32))


@pytest.fixture(scope="module")
def real_models(real_dir, tmp_path_factory):
    """A small GPT-2 with the real vocabulary (llama.cpp's converter checks
    the tokenizer), n_embd 256: whole blocks of every type."""
    root = tmp_path_factory.mktemp("models")
    model = make_tiny_model(root / "tiny", n_vocab=50257, n_layer=2, n_head=4, n_embd=256,
                            n_ctx=64, scale=0.05)  # fmt: skip
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(real_dir / name, model / name)
    return root


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """The same shapes with the tests' small vocabulary: the gguf package's
    quantizers are slow over 50,257 rows."""
    root = tmp_path_factory.mktemp("small")
    make_tiny_model(root / "tiny", n_layer=2, n_head=4, n_embd=256, n_ctx=64, scale=0.05)
    return root


def gguf_package_file(path: Path, source: Path, kind: str) -> None:
    """``source``'s GGUF export rewritten by the gguf package's own writer,
    every matrix quantized to ``kind`` by its own quantizer."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(path, "gpt2")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        types = field.types
        sub = types[1] if types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, types[0], sub_type=sub)
    qtype = gguf.GGMLQuantizationType[kind]
    for tensor in reader.tensors:
        values = np.array(tensor.data, np.float32).reshape([int(d) for d in tensor.shape][::-1])
        if values.ndim == 2 and tensor.name != "position_embd.weight":
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", QUANTIZERS)
def test_a_file_the_gguf_package_writes_loads_as_it_dequantizes_it(small_models, tmp_path, kind):
    f32 = export(small_models, "gguf", tmp_path / "f32.gguf")
    path = tmp_path / f"{kind}.gguf"
    gguf_package_file(path, f32, kind)
    with cache.in_memory():
        ours = open_model(path).weights()
    theirs = {t.name: t for t in gguf.GGUFReader(path).tensors}
    wanted = theirs["blk.1.ffn_down.weight"]
    expected = gguf.quants.dequantize(wanted.data, wanted.tensor_type)
    assert np.array_equal(ours["model/h1/mlp/c_proj/w"][0], expected.T)
    r = run("generate", "--model-size", str(path), "--n-tokens", "4", "the")
    assert r.returncode == 0, text(r.stderr)


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_the_gguf_package_reads_our_export(real_models, tmp_path, outtype):
    path = tmp_path / f"{outtype}.gguf"
    r = run("export", "tiny", "--models-dir", str(real_models), "--to", "gguf", str(path),
            "--outtype", outtype)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "gpt2" and fields["gpt2.block_count"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"]) == 50257
    tensors = {t.name: t for t in reader.tensors}
    ours = open_model(real_models / "tiny").weights()
    c_fc = tensors["blk.0.ffn_up.weight"]
    assert c_fc.tensor_type.name == outtype.upper()
    values = np.asarray(c_fc.data, np.float32).reshape(1024, 256)
    expected = ours["model/h0/mlp/c_fc/w"][0].T
    if outtype == "f16":
        expected = expected.astype(np.float16).astype(np.float32)
    assert np.array_equal(values, expected)


# -- llama.cpp itself ---------------------------------------------------------------


def converter_ready() -> bool:
    needed = ("torch", "transformers")
    return (LLAMA_CPP / "convert_hf_to_gguf.py").is_file() and all(
        subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True).returncode == 0
        for m in needed
    )


@pytest.mark.skipif(not converter_ready(), reason="llama.cpp's converter (LLAMA_CPP_DIR) absent")
@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_llamacpps_converter_makes_what_export_makes(real_models, tmp_path, outtype):
    hf = export(real_models, "hf", tmp_path / "hf")
    theirs = tmp_path / f"theirs-{outtype}.gguf"
    r = subprocess.run([sys.executable, "convert_hf_to_gguf.py", str(hf), "--outtype", outtype,
                        "--outfile", str(theirs)], cwd=LLAMA_CPP, capture_output=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)[-2000:]
    ours = tmp_path / f"ours-{outtype}.gguf"
    r = run("export", "tiny", "--models-dir", str(real_models), "--to", "gguf", str(ours),
            "--outtype", outtype)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    with cache.in_memory():
        a, b = open_model(theirs).weights(), open_model(ours).weights()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def llama_library() -> Path | None:
    lib = LLAMA_CPP / "build" / "bin"
    found = (LLAMA_CPP / "include" / "llama.h").is_file() and any(lib.glob("libllama.*"))
    return lib if found and shutil.which("c++") else None


@pytest.fixture(scope="module")
def save_tensors(tmp_path_factory):
    lib = llama_library()
    if lib is None:
        pytest.skip("llama.cpp's headers and library (LLAMA_CPP_DIR, built with CMake) absent")
    out = tmp_path_factory.mktemp("recipe") / "save_tensors"
    source = ROOT / "docs" / "llamacpp_save_tensors.cpp"
    includes = ["-I", str(LLAMA_CPP / "include"), "-I", str(LLAMA_CPP / "ggml" / "include")]
    libraries = ["-L", str(lib), "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}"]
    r = subprocess.run(["c++", "-std=c++17", "-O2", str(source), "-o", str(out), *includes,
                        *libraries], capture_output=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    return out


def test_llamacpp_runs_our_export_and_compare_reads_its_nodes(real_models, save_tensors, tmp_path):
    model = export(real_models, "gguf", tmp_path / "tiny.gguf")
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    ids = ",".join(map(str, IDS))
    r = subprocess.run([str(save_tensors), str(model), str(nodes), ids], capture_output=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)[-2000:]
    ref = tmp_path / "ref.npz"
    r = run("dump", "--ids", ids, "--dtype", "float64", "--detail", "--out", str(ref),
            "--model-size", str(model))  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    r = run("compare", str(ref), str(nodes), "--model", str(model), timeout=600)
    out = text(r.stdout)
    assert "note: read llama.cpp's nodes" in out, out + text(r.stderr)
    for label in ("ln_1[0]", "q[0]", "attn_scores[1]", "attn[1]", "mlp_pre[0]", "logits"):
        assert f"\n{label} " in out
    # llama.cpp's CPU GELU goes through a float16 table unless built without it (docs/llamacpp.md).
    last = out.splitlines()[-1]
    assert r.returncode == 0 or last.startswith("blamed: mlp_hidden[0], "), out


def test_llama_cpp_python_decodes_our_export_as_we_do(real_models, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = export(real_models, "gguf", tmp_path / "tiny.gguf")
    llm = llama_cpp.Llama(str(model), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(IDS)
    theirs = np.asarray(llm.scores[: len(IDS)], np.float64)
    ours = load_model(model).logits(IDS).astype(np.float64)
    # Their GELU's float16 table moves each value by up to float16's rounding:
    # a few 1e-4 of the logits' scale through two small blocks.
    assert np.argmax(theirs, -1).tolist() == np.argmax(ours, -1).tolist()
    assert np.abs(theirs - ours).max() <= 1e-2 * np.abs(ours).max()
