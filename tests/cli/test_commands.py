"""What every command shares, run as a user runs it: one line and the right
exit status for bad input, a closed stdout or stderr, its own name in its
usage."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from mirror import ROOT, export, one_line_error, run, text
from tiny import tiny


@pytest.mark.parametrize(
    "args, words",
    [
        (["tokens", "--decode", "264"], ["token id 264 is not in the vocabulary"]),
        (["tokens", "--decode", "[-1]"], ["token id -1 is not in the vocabulary"]),
        (["dump", "--ids", "1,,2", "--out", "x.npz"], ["--ids", "'1,,2'"]),
        (["dump", "--ids", "1,2", "--out", "/nonexistent/dir/x.npz"], ["/nonexistent/dir does"]),
        (["tokens", "--show-work", "--jsonl", "x"], ["--show-work", "--jsonl"]),
        (["tokens", "--decode", "--special", "1"], ["--special is for encoding"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(converted_models, tmp_path, args, words):
    r = run(*args, *tiny(converted_models), cwd=tmp_path)
    one_line_error(r, 2, *words)
    assert list(tmp_path.iterdir()) == []


def test_one_is_singular(converted_models):
    r = run("generate", "the cat", "--n-tokens", "1", *tiny(converted_models))
    assert "1 token in" in text(r.stderr)
    r = run("tokens", "--show-work", "a", *tiny(converted_models))
    assert text(r.stdout).startswith("1 piece from the pre-tokenizer")


def closed(fd: int):
    return lambda: os.close(fd)


def test_stdout_closed_is_one_line(converted_models):
    r = subprocess.run(
        [sys.executable, "-m", "picogpt2.generate", "hi", *tiny(converted_models)],
        stderr=subprocess.PIPE,
        preexec_fn=closed(1),
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 1
    assert text(r.stderr).endswith("error: standard output is closed: there is nowhere to "
                                   "write the text\n")  # fmt: skip


def test_stderr_closed_keeps_status_off_stdout(converted_models):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "picogpt2.generate",
            "hi",
            *tiny(converted_models, "--n-tokens", "3"),
        ],
        stdout=subprocess.PIPE,
        preexec_fn=closed(2),
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0
    assert r.stdout.startswith(b"hi") and b"loading" not in r.stdout


def test_console_script_names_itself_in_usage(tmp_path):
    script = Path(sys.executable).parent / "picogpt2"
    if not script.exists():
        pytest.skip("the console script is not installed")
    r = subprocess.run([str(script), "--n-tokens", "x"], capture_output=True, timeout=60)
    assert r.returncode == 2 and text(r.stderr).startswith("picogpt2: error:")
    usage = subprocess.run([str(script), "--help"], capture_output=True, timeout=60)
    assert text(usage.stdout).startswith("usage: picogpt2 ")


# -- #28: JSON nested a thousand deep, wherever picogpt2 reads JSON -----------------

DEEP = "[" * 1000 + "]" * 1000


def with_file(converted_models, tmp_path, fmt, name, content):
    """The tiny model as ``fmt`` in a new folder, its ``name`` replaced."""
    folder = export(converted_models, fmt, tmp_path / "m")
    (folder / name).write_text(content)
    return folder


@pytest.mark.parametrize(
    "fmt, name, status, words",
    [
        ("safetensors", "hparams.json", 1, "hparams.json: not valid JSON (nested too deeply)"),
        ("hf", "config.json", 1, "config.json: not a readable transformers config"),
        ("hf", "vocab.json", 1, "vocab.json: not valid JSON"),
        ("hf", "model.safetensors.index.json", 1, "not a readable shard index"),
    ],
)
def test_deep_json_in_a_models_files_is_one_line(converted_models, tmp_path, fmt, name, status,
                                                 words):  # fmt: skip
    folder = with_file(converted_models, tmp_path, fmt, name, DEEP)
    r = run("generate", "the cat", "--model-size", str(folder), timeout=60)
    one_line_error(r, status, words)


def deep_safetensors(path):
    header = DEEP.encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_deep_json_in_a_safetensors_header_is_one_line(converted_models, tmp_path):
    ref = tmp_path / "ref.npz"
    assert run("dump", "--ids", "1,2", "--out", str(ref), *tiny(converted_models)).returncode == 0
    cand = deep_safetensors(tmp_path / "mine.safetensors")
    one_line_error(run("compare", str(ref), str(cand)), 2, "its header is not valid JSON")
    folder = export(converted_models, "safetensors", tmp_path / "m")
    deep_safetensors(folder / "model.safetensors")
    one_line_error(run("download", str(folder), "--verify"), 1, "header is not valid JSON")


def test_deep_json_to_decode_is_one_line(converted_models):
    r = run("tokens", "--decode", DEEP, *tiny(converted_models))
    one_line_error(r, 2, "--decode: expected token ids")


def test_a_deep_corpus_line_is_an_error_record_and_the_run_goes_on(converted_models, tmp_path):
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(DEEP + "\n" + json.dumps({"id": 1, "text": "the cat sat"}) + "\n")
    out = tmp_path / "out.jsonl"
    r = run("score", "--corpus", str(corpus), "--out", str(out), *tiny(converted_models))
    assert r.returncode == 0, text(r.stderr)
    _, deep, scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert deep["line"] == 1 and "nested too deeply" in deep["error"]
    assert scored["id"] == 1 and "nll" in scored
