"""What every command shares, run as a user runs it: one line and the right
exit status for bad input, a closed stdout or stderr, its own name in its
usage."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mirror import ROOT, one_line_error, run, text
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
