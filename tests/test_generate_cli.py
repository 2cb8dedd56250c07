"""The generate command as a user runs it, in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import make_tiny_model

from picogpt2.model import load_model
from picogpt2.util.backend import BackendError, get_backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_ctx=32)
    return root


def run(*args, stdin=None, module=True):
    cmd = [sys.executable, "-m", "picogpt2.generate"] if module else [
        sys.executable, str(ROOT / "picogpt2" / "generate.py"),
    ]  # fmt: skip
    env = {**os.environ, "PICOGPT2_BASE_URL": "http://127.0.0.1:9"}  # never the network
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=60, cwd=ROOT)  # fmt: skip


def tiny_args(models):
    return ["--model-size", "tiny", "--models-dir", str(models)]


def test_generates_after_the_prompt(models):
    r = run("the cat", "--n-tokens", "5", *tiny_args(models))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the cat") and len(r.stdout) > len("the cat\n")
    assert "loading" in r.stderr


def test_greedy_is_deterministic_and_seed_reproduces(models):
    a = run("the", "--n-tokens", "6", *tiny_args(models)).stdout
    assert a == run("the", "--n-tokens", "6", *tiny_args(models)).stdout
    s1 = run("the", "--n-tokens", "6", "--top-k", "50", "--seed", "5", *tiny_args(models)).stdout
    s2 = run("the", "--n-tokens", "6", "--top-k", "50", "--seed", "5", *tiny_args(models)).stdout
    assert s1 == s2


def test_runs_as_a_file(models):
    r = run("the", "--n-tokens", "2", *tiny_args(models), module=False)
    assert r.returncode == 0, r.stderr


def test_prompt_from_stdin(models):
    r = run("--n-tokens", "3", *tiny_args(models), stdin="from stdin")
    assert r.returncode == 0 and r.stdout.startswith("from stdin")


def test_empty_prompt_starts_from_endoftext(models):
    r = run("", "--n-tokens", "3", "--ignore-eot", *tiny_args(models))
    assert r.returncode == 0, r.stderr
    model = load_model("tiny", models, show_progress=False)
    expected = model.encoder.decode(model.generate([model.encoder.eot_token], 3, ignore_eot=True))
    assert r.stdout == expected + "\n"
    assert model.complete("", 3, ignore_eot=True) == [expected]  # the library: one rule


def test_zero_tokens_prints_the_prompt(models):
    r = run("hello", "--n-tokens", "0", *tiny_args(models))
    assert r.returncode == 0 and r.stdout == "hello\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-tokens", "-1"], "n-tokens must be >= 0"),
        (["--top-k", "0"], "top-k must be >= 1"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--model-size", "2B"], "unknown model size '2B'"),
        (["--n-samples", "0"], "n-samples must be >= 1"),
        (["--n-samples", "x"], "argument --n-samples: invalid int value"),
        (["--repetition-penalty", "0"], "repetition penalty must be in [1e-30, 1e+30]"),
        (["--repetition-penalty", "-1"], "repetition penalty must be in [1e-30, 1e+30]"),
        (["--repetition-penalty", "nan"], "repetition penalty must be in [1e-30, 1e+30]"),
        (["--repetition-penalty", "inf"], "repetition penalty must be in [1e-30, 1e+30]"),
        (["--repetition-penalty", "x"], "argument --repetition-penalty: invalid float value"),
        (["--stop", ""], "stop strings must be non-empty"),
        (["--interactive"], "--interactive reads prompts from stdin"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_work(args, message, tmp_path):
    r = run("x", "--models-dir", str(tmp_path), *args)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or written


def test_prompt_longer_than_context(models):
    r = run("x " * 40, "--n-tokens", "5", *tiny_args(models))
    assert r.returncode == 2 and "the prompt is 80 tokens, more than the context of 32" in r.stderr
    assert "Traceback" not in r.stderr


def test_unusable_cupy_is_a_clear_error(models):
    try:
        get_backend("cupy")
        pytest.skip("CuPy runs on a GPU here")
    except BackendError as e:
        expected = str(e)  # no CuPy ("needs CuPy"), or CuPy without a usable GPU
    r = run("x", "--backend", "cupy", "--n-tokens", "5", *tiny_args(models))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].endswith(f"error: {expected}")


def test_unreachable_download_is_one_line(tmp_path):
    r = run("x", "--models-dir", str(tmp_path / "m"))  # PICOGPT2_BASE_URL: port 9, refused
    err = r.stderr.splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert err[-1].startswith("python -m picogpt2.generate: error: cannot reach 127.0.0.1:9")
    assert "--base-url" in err[-1] and err[0].startswith("downloading the vocabulary of")
    assert len(err) == 2  # what it was fetching, and why it could not
    assert not (tmp_path / "m").exists()


def test_help_documents_every_flag():
    r = run("--help")
    for flag in ("--n-tokens", "--model-size", "--models-dir", "--top-k", "--top-p",
                 "--temperature", "--seed", "--backend", "--n-samples", "--stop",
                 "--ignore-eot", "--repetition-penalty", "--interactive", "--quiet"):  # fmt: skip
        assert flag in r.stdout


def test_id_outside_the_vocabulary_is_one_line(tmp_path):
    # wte has rows for 2,000 ids but encoder.json names only the tiny vocabulary's.
    make_tiny_model(tmp_path / "padded", n_ctx=32, n_vocab=2000, seed=3)
    r = run("the cat", "--n-tokens", "20", "--model-size", "padded", "--models-dir", str(tmp_path))
    assert r.returncode == 1 and r.stdout.startswith("the cat") and r.stdout.endswith("\n")
    assert "generate: error: token id " in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr
