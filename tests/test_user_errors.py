"""Nothing a user does breaks it or loses data: the newcomer audit's
findings, each run as the README runs the command (a subprocess)."""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mirror import ROOT, Mirror, catalogue_env, full_disk, one_line_error, run, text
from tiny import converted_tiny_models, make_tiny_model, tiny

from picogpt2.weights.formats.safetensors import WEIGHTS_FILE
from picogpt2.weights.releases import SHARD_FILE


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return converted_tiny_models(tmp_path_factory.mktemp("models"))


def copy_model(models, tmp_path, name="copy") -> Path:
    folder = tmp_path / name
    shutil.copytree(models / "tiny", folder)
    return folder


def rewrite_header(path: Path, change) -> None:
    """Apply ``change`` to the safetensors header dict, keeping the data."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header)
    text_ = json.dumps(header).encode()
    text_ += b" " * (-(8 + len(text_)) % 8)
    path.write_bytes(struct.pack("<Q", len(text_)) + text_ + data[8 + n :])


# -- damaged or wrong files are named as such (items 6-10) -----------------


def without_checkpoint(folder: Path) -> Path:
    for f in folder.glob("model.ckpt*"):
        f.unlink()
    (folder / "checkpoint").unlink()
    return folder


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: rewrite_header(p, lambda h: h["model/wte"].update(dtype="F33")), "'F33'"),
        (lambda p: rewrite_header(p, lambda h: h["model/wpe"].update(shape=[64, 15])), "wpe"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "header describes"),
        (lambda p: p.write_bytes(b""), "too short for its header"),
    ],
)
def test_damaged_safetensors_is_named_with_the_fix(models, tmp_path, damage, reason):
    folder = without_checkpoint(copy_model(models, tmp_path))
    damage(folder / WEIGHTS_FILE)
    r = run("generate", "hi", "--model-size", "copy", "--models-dir", str(tmp_path))
    one_line_error(r, 1, str(folder / WEIGHTS_FILE), "is damaged", reason, "restore it")
    assert r.stdout == b""


def test_damaged_conversion_beside_its_checkpoint_says_delete(models, tmp_path):
    folder = copy_model(models, tmp_path)
    (folder / WEIGHTS_FILE).write_bytes(b"")
    r = run("generate", "hi", "--model-size", "copy", "--models-dir", str(tmp_path))
    one_line_error(r, 1, "is damaged", "delete it, and picogpt2 converts the checkpoint")


def test_damaged_released_model_is_not_downloaded_again_silently(models, tmp_path):
    folder = without_checkpoint(copy_model(models, tmp_path, "124M"))
    (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:1000])
    env = catalogue_env(tmp_path, "124M", json.loads((folder / "hparams.json").read_text()))
    r = run("generate", "hi", "--n-tokens", "2", "--models-dir", str(tmp_path), env=env)
    one_line_error(r, 1, "is damaged", "delete it, and picogpt2 downloads GPT-2 124M again")


@pytest.fixture(scope="module")
def nan_model(models, tmp_path_factory):
    """The tiny model with a NaN in ln_f/g, its CRC record left as it was."""
    root = tmp_path_factory.mktemp("nan")
    folder = without_checkpoint(copy_model(models, root, "tiny"))
    path = folder / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    begin = json.loads(data[8 : 8 + n])["model/ln_f/g"]["data_offsets"][0]
    data[8 + n + begin : 8 + n + begin + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))
    return root


def test_nan_weights_stop_generation_with_a_pointer_to_verify(nan_model):
    r = run("generate", "Hi", *tiny(nan_model))
    one_line_error(r, 1, "not finite", "damaged", "--verify")
    assert text(r.stdout) in ("", "Hi\n")  # nothing generated from garbage


def test_nan_weights_never_give_invalid_json(nan_model, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat")
    r = run("score", str(path), "--json", *tiny(nan_model))
    one_line_error(r, 1, "not finite")
    assert r.stdout == b""


def test_verify_names_the_tensor_with_the_nan(nan_model):
    r = run("download", "tiny", "--models-dir", str(nan_model), "--verify")
    one_line_error(r, 1, "model/ln_f/g", "fail their CRC-32C")


@pytest.mark.parametrize(
    "change, words",
    [
        ({"n_head": 3}, ["n_head 3 does not divide n_embd 16"]),
        ({"n_ctx": 128}, ["model/wpe is [64, 16], where they need [128, 16]"]),
        ({"n_layer": 1}, ["model/h1/", "is left over"]),
        ({"n_layer": 3}, ["model/h2/", "is missing"]),
        ({"n_vocab": 100}, ["model/wte is [264, 16], where they need [100, 16]"]),
    ],
)
def test_hparams_that_disagree_with_the_weights(models, tmp_path, change, words):
    folder = copy_model(models, tmp_path)
    hparams = json.loads((folder / "hparams.json").read_text())
    (folder / "hparams.json").write_text(json.dumps({**hparams, **change}))
    r = run("generate", "hi", "--n-tokens", "2", "--model-size", "copy",
            "--models-dir", str(tmp_path))  # fmt: skip
    one_line_error(r, 1, *words)
    assert r.stdout == b""  # found at load, before any output


def test_a_vocabulary_larger_than_the_model(tmp_path):
    make_tiny_model(tmp_path / "small", n_vocab=200)  # wte has 200 rows; encoder.json 264
    r = run("generate", "hi", "--model-size", "small", "--models-dir", str(tmp_path))
    one_line_error(r, 1, "the vocabulary has 264 tokens, more than the model's n_vocab 200")


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_vocabulary_that_is_not_utf8(models, tmp_path, name):
    folder = copy_model(models, tmp_path)
    (folder / name).write_bytes((folder / name).read_bytes() + b"\xe9\xff")
    r = run("generate", "hi", "--n-tokens", "2", "--model-size", "copy",
            "--models-dir", str(tmp_path))  # fmt: skip
    one_line_error(r, 1, name, "not UTF-8 text")


# -- text in and out (items 11-13) ----------------------------------------


def test_prompt_argument_that_is_not_utf8(models):
    r = subprocess.run(
        [
            sys.executable.encode(),
            b"-m",
            b"picogpt2.generate",
            b"caf\xe9",
            *[a.encode() for a in tiny(models)],
        ],  # fmt: skip
        capture_output=True,
        cwd=ROOT,
    )
    one_line_error(r, 2, "the prompt is not UTF-8 text (byte 3 is 0xe9)")


def test_stdin_that_is_not_utf8(models):
    r = run("generate", *tiny(models), stdin=b"caf\xe9")
    one_line_error(r, 2, "the prompt on stdin is not UTF-8 text (byte 3 is 0xe9)")


def test_output_a_terminal_cannot_encode_is_replaced(models):
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    r = run("generate", "caf\u00e9 \u4e16\u754c", *tiny(models, "--n-tokens", "8"), env=env)
    assert r.returncode == 0, text(r.stderr)
    assert r.stdout.startswith("caf\xe9 ??".encode("latin-1"))


def test_stdin_loses_exactly_one_trailing_newline(models):
    as_argument = run("generate", "the cat", *tiny(models, "--n-tokens", "6"))
    for piped in ("the cat\n", "the cat\r\n"):
        r = run("generate", *tiny(models, "--n-tokens", "6"), stdin=piped)
        assert r.returncode == 0 and r.stdout == as_argument.stdout, text(r.stderr)
    kept = run("generate", *tiny(models, "--n-tokens", "0"), stdin="the cat\n\n")
    assert kept.stdout == b"the cat\n\n"


def test_waiting_for_a_prompt_on_a_terminal_is_said(models):
    import pty

    controller, terminal = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "picogpt2.generate", *tiny(models, "--n-tokens", "1")],
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


def test_prompt_starting_with_a_dash_after_double_dash(models):
    r = run("generate", *tiny(models, "--n-tokens", "2"), "--", "-hello")
    assert r.returncode == 0 and r.stdout.startswith(b"-hello"), text(r.stderr)


# -- numbers (items 14-15) -------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--top-k", "5"], ["--top-p", "0.9"]])
def test_tiny_temperature_is_greedy(models, extra):
    greedy = run("generate", "the cat", *tiny(models, "--n-tokens", "8"))
    r = run("generate", "the cat", *tiny(models, "--n-tokens", "8"),
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
def test_bad_numbers_are_one_line(models, args, words):
    r = run("generate", "x", "--model-size", "tiny", *args)
    one_line_error(r, 2, *words)
    assert len(text(r.stderr).splitlines()) == 1


def test_dump_id_beyond_64_bits(models, tmp_path):
    r = run("dump", "--ids", "99999999999999999999999", "--out", str(tmp_path / "x.npz"),
            *tiny(models))  # fmt: skip
    one_line_error(r, 2, "token ids must be in [0, 264)")


def test_dump_to_a_full_disk_names_the_file(models, tmp_path):
    out = tmp_path / "ref.npz"
    r = run("dump", "--ids", "1,2", "--out", str(out), *tiny(models), preexec_fn=full_disk(2000))
    one_line_error(r, 1, str(out), "File too large")
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary file


def test_a_temporary_file_that_is_a_link_is_never_written_through(models, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"someone's file")
    out = tmp_path / "ref.npz"
    (tmp_path / "ref.npz.tmp").symlink_to(elsewhere)
    r = run("dump", "--ids", "1,2", "--out", str(out), *tiny(models))
    assert r.returncode == 0, text(r.stderr)
    assert elsewhere.read_bytes() == b"someone's file"
    assert not out.is_symlink() and sorted(np.load(out).files)[:2] == ["hidden", "ids"]


# -- the audit's other findings ------------------------------------------


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


def closed(fd: int):
    return lambda: os.close(fd)


def test_stdout_closed_is_one_line(models):
    r = subprocess.run(
        [sys.executable, "-m", "picogpt2.generate", "hi", *tiny(models)],
        stderr=subprocess.PIPE,
        preexec_fn=closed(1),
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 1
    assert text(r.stderr).endswith("error: standard output is closed: there is nowhere to "
                                   "write the text\n")  # fmt: skip


def test_stderr_closed_keeps_status_off_stdout(models):
    r = subprocess.run(
        [sys.executable, "-m", "picogpt2.generate", "hi", *tiny(models, "--n-tokens", "3")],
        stdout=subprocess.PIPE,
        preexec_fn=closed(2),
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0
    assert r.stdout.startswith(b"hi") and b"loading" not in r.stdout


def test_read_only_folder_with_only_a_checkpoint_is_converted_in_memory(tmp_path):
    folder = make_tiny_model(tmp_path / "ro" / "tiny")
    before = sorted(p.name for p in folder.iterdir())
    # Root writes through permission bits, not through the immutable flag.
    lock = ["chattr", "+i", str(folder)] if os.geteuid() == 0 else None
    if lock and subprocess.run(lock, capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i")
    if not lock:
        os.chmod(folder, 0o555)
    try:
        runs = [run("generate", "the cat", "--model-size", "tiny", "--models-dir",
                    str(folder.parent), "--n-tokens", "4") for _ in range(2)]  # fmt: skip
    finally:
        if lock:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)
    for r in runs:
        assert r.returncode == 0, text(r.stderr)
        assert "cannot be written: converting" in text(r.stderr)  # said at every load
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.startswith(b"the cat")
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written there


def test_default_models_folder_does_not_depend_on_the_working_directory(models, tmp_path):
    env = {**os.environ, "PICOGPT2_MODELS_DIR": str(models)}
    r = run("generate", "hi", "--model-size", "tiny", "--n-tokens", "2", env=env, cwd=tmp_path)
    assert r.returncode == 0, text(r.stderr)
    env.pop("PICOGPT2_MODELS_DIR")
    help_text = text(run("generate", "--help", env=env, cwd=tmp_path).stdout)
    assert str(ROOT / "weights") in " ".join(help_text.split())  # the checkout's, from anywhere


def test_default_models_folder_rules(monkeypatch, tmp_path):
    from picogpt2.weights import locations

    monkeypatch.setenv("PICOGPT2_MODELS_DIR", str(tmp_path / "mine"))
    assert locations.default_models_dir() == tmp_path / "mine"
    monkeypatch.delenv("PICOGPT2_MODELS_DIR")
    assert locations.default_models_dir() == ROOT / "weights"
    monkeypatch.setattr(locations, "CHECKOUT", tmp_path)  # an installed package
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert locations.default_models_dir() == tmp_path / "cache" / "picogpt2"


def test_console_script_names_itself_in_usage(tmp_path):
    script = Path(sys.executable).parent / "picogpt2"
    if not script.exists():
        pytest.skip("the console script is not installed")
    r = subprocess.run([str(script), "--n-tokens", "x"], capture_output=True, timeout=60)
    assert r.returncode == 2 and text(r.stderr).startswith("picogpt2: error:")
    usage = subprocess.run([str(script), "--help"], capture_output=True, timeout=60)
    assert text(usage.stdout).startswith("usage: picogpt2 ")
