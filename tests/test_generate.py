"""The generate command as a user runs it, in a subprocess."""

import json
import os
import subprocess
import sys

import pytest
from mirror import ROOT, Mirror, catalogue_env, one_line_error, run, text
from tiny import make_tiny_model, tiny

from picogpt2.model import load_model
from picogpt2.util.backend import BackendError, get_backend
from picogpt2.weights.releases import SHARD_FILE


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_ctx=32)
    return root


def generate(*args, stdin=None, module=True):
    cmd = [sys.executable, "-m", "picogpt2.generate"] if module else [
        sys.executable, str(ROOT / "picogpt2" / "generate.py"),
    ]  # fmt: skip
    env = {**os.environ, "PICOGPT2_BASE_URL": "http://127.0.0.1:9"}  # never the network
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, env=env,
                          timeout=60, cwd=ROOT)  # fmt: skip


def tiny_args(models):
    return ["--model-size", "tiny", "--models-dir", str(models)]


def test_generates_after_the_prompt(models):
    r = generate("the cat", "--n-tokens", "5", *tiny_args(models))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the cat") and len(r.stdout) > len("the cat\n")
    assert "loading" in r.stderr


def test_greedy_is_deterministic_and_seed_reproduces(models):
    a = generate("the", "--n-tokens", "6", *tiny_args(models)).stdout
    assert a == generate("the", "--n-tokens", "6", *tiny_args(models)).stdout
    s1 = generate(
        "the", "--n-tokens", "6", "--top-k", "50", "--seed", "5", *tiny_args(models)
    ).stdout
    s2 = generate(
        "the", "--n-tokens", "6", "--top-k", "50", "--seed", "5", *tiny_args(models)
    ).stdout
    assert s1 == s2


def test_runs_as_a_file(models):
    r = generate("the", "--n-tokens", "2", *tiny_args(models), module=False)
    assert r.returncode == 0, r.stderr


def test_prompt_from_stdin(models):
    r = generate("--n-tokens", "3", *tiny_args(models), stdin="from stdin")
    assert r.returncode == 0 and r.stdout.startswith("from stdin")


def test_empty_prompt_starts_from_endoftext(models):
    r = generate("", "--n-tokens", "3", "--ignore-eot", *tiny_args(models))
    assert r.returncode == 0, r.stderr
    model = load_model("tiny", models, show_progress=False)
    expected = model.encoder.decode(model.generate([model.encoder.eot_token], 3, ignore_eot=True))
    assert r.stdout == expected + "\n"
    assert model.complete("", 3, ignore_eot=True) == [expected]  # the library: one rule


def test_zero_tokens_prints_the_prompt(models):
    r = generate("hello", "--n-tokens", "0", *tiny_args(models))
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
    r = generate("x", "--models-dir", str(tmp_path), *args)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or written


def test_prompt_longer_than_context(models):
    r = generate("x " * 40, "--n-tokens", "5", *tiny_args(models))
    assert r.returncode == 2 and "the prompt is 80 tokens, more than the context of 32" in r.stderr
    assert "Traceback" not in r.stderr


def test_unusable_cupy_is_a_clear_error(models):
    try:
        get_backend("cupy")
        pytest.skip("CuPy runs on a GPU here")
    except BackendError as e:
        expected = str(e)  # no CuPy ("needs CuPy"), or CuPy without a usable GPU
    r = generate("x", "--backend", "cupy", "--n-tokens", "5", *tiny_args(models))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].endswith(f"error: {expected}")


def test_unreachable_download_is_one_line(tmp_path):
    r = generate("x", "--models-dir", str(tmp_path / "m"))  # PICOGPT2_BASE_URL: port 9, refused
    err = r.stderr.splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert err[-1].startswith("python -m picogpt2.generate: error: cannot reach 127.0.0.1:9")
    assert "--base-url" in err[-1] and err[0].startswith("downloading the vocabulary of")
    assert len(err) == 2  # what it was fetching, and why it could not
    assert not (tmp_path / "m").exists()


def test_help_documents_every_flag():
    r = generate("--help")
    for flag in ("--n-tokens", "--model-size", "--models-dir", "--top-k", "--top-p",
                 "--temperature", "--seed", "--backend", "--n-samples", "--stop",
                 "--ignore-eot", "--repetition-penalty", "--interactive", "--quiet"):  # fmt: skip
        assert flag in r.stdout


def test_id_outside_the_vocabulary_is_one_line(tmp_path):
    # wte has rows for 2,000 ids but encoder.json names only the tiny vocabulary's.
    make_tiny_model(tmp_path / "padded", n_ctx=32, n_vocab=2000, seed=3)
    r = generate(
        "the cat", "--n-tokens", "20", "--model-size", "padded", "--models-dir", str(tmp_path)
    )
    assert r.returncode == 1 and r.stdout.startswith("the cat") and r.stdout.endswith("\n")
    assert "generate: error: token id " in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr


def test_too_many_samples_are_refused_before_anything_is_downloaded(tmp_path):
    r = run("generate", "Hi", "--n-samples", "100000", "--models-dir", str(tmp_path), timeout=30)
    one_line_error(r, 2, "100000 samples of 40 tokens would need about", "GB of memory")
    assert list(tmp_path.iterdir()) == []


def test_a_tiny_temperature_is_greedy_without_warnings(converted_models):
    r = run("generate", "the cat", "--n-tokens", "5", "--temperature", "1e-320", "--seed", "1",
            *tiny(converted_models))  # fmt: skip
    greedy = run("generate", "the cat", "--n-tokens", "5", *tiny(converted_models))
    assert r.returncode == 0 and r.stdout == greedy.stdout
    assert "Warning" not in text(r.stderr), text(r.stderr)


def test_a_penalty_that_would_overflow_the_logits_is_refused(converted_models):
    r = run("generate", "the cat", "--repetition-penalty", "1e-320", *tiny(converted_models))
    one_line_error(r, 2, "repetition penalty must be in [1e-30, 1e+30]")


def test_stop_escapes_a_backslash():
    from picogpt2.generate import unescape

    assert unescape(r"a\nb\tc\\nd") == "a\nb\tc\\nd"


def test_prompt_argument_that_is_not_utf8(converted_models):
    r = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"picogpt2.generate",
            b"caf\xe9",
            *[a.encode() for a in tiny(converted_models)],
        ],  # fmt: skip
        capture_output=True,
        cwd=ROOT,
    )
    one_line_error(r, 2, "the prompt is not UTF-8 text (byte 3 is 0xe9)")


def test_stdin_that_is_not_utf8(converted_models):
    r = run("generate", *tiny(converted_models), stdin=b"caf\xe9")
    one_line_error(r, 2, "the prompt on stdin is not UTF-8 text (byte 3 is 0xe9)")


def test_output_a_terminal_cannot_encode_is_replaced(converted_models):
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    r = run(
        "generate", "caf\u00e9 \u4e16\u754c", *tiny(converted_models, "--n-tokens", "8"), env=env
    )
    assert r.returncode == 0, text(r.stderr)
    assert r.stdout.startswith("caf\xe9 ??".encode("latin-1"))


def test_stdin_loses_exactly_one_trailing_newline(converted_models):
    as_argument = run("generate", "the cat", *tiny(converted_models, "--n-tokens", "6"))
    for piped in ("the cat\n", "the cat\r\n"):
        r = run("generate", *tiny(converted_models, "--n-tokens", "6"), stdin=piped)
        assert r.returncode == 0 and r.stdout == as_argument.stdout, text(r.stderr)
    kept = run("generate", *tiny(converted_models, "--n-tokens", "0"), stdin="the cat\n\n")
    assert kept.stdout == b"the cat\n\n"


def test_waiting_for_a_prompt_on_a_terminal_is_said(converted_models):
    import pty

    controller, terminal = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "picogpt2.generate", *tiny(converted_models, "--n-tokens", "1")],
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    os.close(terminal)
    os.write(controller, b"hello\n\x04")  # a line, then Ctrl-D
    out, err = p.communicate(timeout=60)
    os.close(controller)
    assert p.returncode == 0, text(err)
    assert "reading the prompt from stdin" in text(err) and out.startswith(b"hello")


def test_prompt_starting_with_a_dash_after_double_dash(converted_models):
    r = run("generate", *tiny(converted_models, "--n-tokens", "2"), "--", "-hello")
    assert r.returncode == 0 and r.stdout.startswith(b"-hello"), text(r.stderr)


@pytest.mark.parametrize("extra", [[], ["--top-k", "5"], ["--top-p", "0.9"]])
def test_tiny_temperature_is_greedy(converted_models, extra):
    greedy = run("generate", "the cat", *tiny(converted_models, "--n-tokens", "8"))
    r = run("generate", "the cat", *tiny(converted_models, "--n-tokens", "8"),
            "--temperature", "1e-309", "--seed", "1", *extra)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    assert r.stdout == greedy.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--temperature", "nan"], ["temperature must be >= 0, got nan"]),
        (["--top-p", "nan"], ["top-p must be in (0, 1], got nan"]),
        (["--n-tokens", "x"], ["argument --n-tokens: invalid int value"]),
        (["--models-dir", ""], ["argument --models-dir: is empty"]),
    ],
)
def test_bad_numbers_are_one_line(converted_models, args, words):
    r = run("generate", "x", "--model-size", "tiny", *args)
    one_line_error(r, 2, *words)
    assert len(text(r.stderr).splitlines()) == 1


def test_too_long_a_prompt_is_refused_before_the_large_download(tmp_path):
    served = make_tiny_model(tmp_path / "mirror" / "124M", n_ctx=32)
    mirror = Mirror(tmp_path / "mirror")
    try:
        env = catalogue_env(tmp_path, "124M", json.loads((served / "hparams.json").read_text()))
        env["PICOGPT2_BASE_URL"] = mirror.url
        models = tmp_path / "models"
        r = run("generate", "x " * 40, "--n-tokens", "5", "--models-dir", str(models), env=env)
        one_line_error(r, 2, "more than the context of 32")
        assert SHARD_FILE not in mirror.names()  # only the vocabulary was fetched
    finally:
        mirror.close()
