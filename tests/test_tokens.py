"""The tokens command: text to ids and back, every merge shown, the
vocabulary of any model folder."""

import json
import random

import pytest
from mirror import one_line_error, run, text
from tiny import make_tiny_model

from picogpt2.encoder import load_encoder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # Small embeddings make every operation's effect visible at float32.
    make_tiny_model(root / "tiny", n_layer=3, n_head=4, n_embd=32, n_ctx=32, scale=0.05)
    return root


def tokens(*extra, stdin=None):
    return run("tokens", *extra, stdin=stdin)


def test_tokens_encode_decode_and_lines(real_dir, real_encoder):
    vocab = ["--vocab-dir", str(real_dir)]
    assert json.loads(tokens("Hello my name is", *vocab).stdout) == [15496, 616, 1438, 318]
    r = tokens("--jsonl", *vocab, stdin="Hello\nmy name\n")
    assert [json.loads(line) for line in text(r.stdout).splitlines()] == [[15496], [1820, 1438]]
    assert text(tokens("--decode", "15496, 616", *vocab).stdout) == "Hello my\n"
    assert tokens("--decode", "--bytes", "[12520]", *vocab).stdout == b" \xf0\x9f"
    assert json.loads(tokens("x<|endoftext|>", *vocab).stdout) == real_encoder.encode(
        "x<|endoftext|>"
    )
    assert json.loads(tokens("--special", "x<|endoftext|>", *vocab).stdout) == [87, 50256]


def test_tokens_show_work_applies_merges_in_rank_order(real_dir, real_encoder):
    r = tokens("--show-work", "Hello  wörld", "--vocab-dir", str(real_dir))
    out = text(r.stdout)
    assert r.returncode == 0 and "3 pieces" in out and "byte-level  ĠwÃ¶rld" in out
    hello = out.split("piece 2")[0]
    ranks = [int(line.split("rank")[1].split(":")[0]) for line in hello.splitlines()
             if "merge rank" in line]  # fmt: skip
    assert ranks == sorted(ranks) and "H + ello -> Hello" in hello
    assert out.splitlines()[-1] == f"ids {json.dumps(real_encoder.encode('Hello  wörld'))}"


def test_tokens_of_a_tiny_model_folder(models):
    expected = load_encoder(models / "tiny").encode("the cat")
    r = tokens("the cat", "--model-size", "tiny", "--models-dir", str(models))
    assert json.loads(r.stdout) == expected


def test_tokens_of_a_folder_with_transformers_file_names(models, tmp_path):
    # vocab.json + merges.txt: once refused for lacking encoder.json.
    import shutil

    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copyfile(models / "tiny" / "encoder.json", folder / "vocab.json")
    shutil.copyfile(models / "tiny" / "vocab.bpe", folder / "merges.txt")
    expected = load_encoder(models / "tiny").encode("the cat")
    r = tokens("the cat", "--model-size", "hf", "--models-dir", str(tmp_path))
    assert r.returncode == 0 and json.loads(r.stdout) == expected, text(r.stderr)


@pytest.mark.parametrize(
    "extra, status, words",
    [
        (["--bytes", "x"], 2, "--bytes goes with --decode"),
        (["--decode", "1,x"], 2, "expected token ids"),
        (["--decode", "[1.5]"], 2, "expected token ids"),
        (["--decode", "999999"], 2, "token id 999999 is not in the vocabulary"),
        (["--model-size", "nope", "x"], 2, "no encoder.json and vocab.bpe in it"),
    ],
)
def test_tokens_bad_input(models, extra, status, words):
    r = (
        tokens(*extra, "--models-dir", str(models))
        if "--model-size" in extra
        else tokens(*extra, "--model-size", "tiny", "--models-dir", str(models))
    )
    one_line_error(r, status, words)


def test_a_piece_of_200000_letters_is_no_unbounded_work(tmp_path, real_dir, tiktoken_gpt2):
    # #28: BPE was quadratic in a piece's length: 20,000 letters took 51 s,
    # so 200,000 would take hours; a base64 blob or a DNA string is one piece.
    rng = random.Random(5)
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(200_000))
    (tmp_path / "blob.txt").write_text(blob)
    r = run("tokens", "--file", str(tmp_path / "blob.txt"), "--vocab-dir", str(real_dir),
            timeout=60)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    assert json.loads(r.stdout) == tiktoken_gpt2.encode_ordinary(blob)
