"""The downloader against a loopback HTTP server that this test starts, with
faults injected: transfers cut halfway, 404s, HTML bodies, flipped bytes,
5xx, a wrong model, a checkpoint pointing elsewhere, two runs at once. The
command is run as the README runs it, in a subprocess."""

import json
import shutil
import subprocess
import sys
import time

import pytest
from mirror import ROOT, Mirror, catalogue_env, full_disk, one_line_error, run, text
from tiny import (
    converted,
    copy_model,
    is_converted,
    make_tiny_model,
    without_checkpoint,
)

from picogpt2.hparams import SIZES
from picogpt2.util.errors import InputError
from picogpt2.weights import fetch
from picogpt2.weights.fetch import DownloadError
from picogpt2.weights.formats.safetensors import WEIGHTS_FILE
from picogpt2.weights.params import parse_hparams
from picogpt2.weights.releases import MARKER_FILE, SHARD_FILE, SMALL_FILES, download_model


def load_weights(folder):
    return converted(folder)


FILES = [*SMALL_FILES, SHARD_FILE]


@pytest.fixture
def served(tmp_path):
    """A mirror serving a tiny model as 124M, and that model's hparams."""
    source = make_tiny_model(tmp_path / "mirror" / "124M", n_ctx=32, n_embd=64, n_head=4)
    hparams = json.loads((source / "hparams.json").read_text())
    m = Mirror(tmp_path / "mirror")
    yield m, hparams
    m.close()


@pytest.fixture
def mirror(served, monkeypatch):
    m, hparams = served
    monkeypatch.setitem(SIZES, "124M", parse_hparams(hparams, "tiny"))
    return m


@pytest.fixture
def env(served, tmp_path):
    """Subprocess environment in which the mirror's tiny model is 124M."""
    return catalogue_env(tmp_path, "124M", served[1])


def fetch_model(mirror, tmp_path, **kwargs):
    return download_model("124M", tmp_path / "models", base_url=mirror.url,
                          backoff=0.01, **kwargs)  # fmt: skip


def test_download_verifies_and_converts(mirror, tmp_path):
    model_dir = fetch_model(mirror, tmp_path)
    assert is_converted(model_dir)
    assert not (model_dir / SHARD_FILE).exists()  # removed after verification
    assert not list(model_dir.glob("*.part"))
    source = mirror.root / "124M"
    assert (model_dir / "encoder.json").read_bytes() == (source / "encoder.json").read_bytes()
    assert load_weights(model_dir)["model/wte"].shape == (264, 64)
    before = len(mirror.requests)
    fetch_model(mirror, tmp_path)  # a second run fetches nothing
    assert len(mirror.requests) == before


def test_keep_original(mirror, tmp_path):
    model_dir = fetch_model(mirror, tmp_path, keep_original=True)
    assert (model_dir / SHARD_FILE).read_bytes() == (mirror.root / "124M" / SHARD_FILE).read_bytes()


def test_cut_transfer_is_resumed_with_range(mirror, tmp_path):
    mirror.faults[SHARD_FILE] = ["cut"]
    model_dir = fetch_model(mirror, tmp_path)
    shard_requests = [r for name, r in mirror.requests if name == SHARD_FILE]
    assert shard_requests[0] is None and shard_requests[1].startswith("bytes=")
    assert int(shard_requests[1].split("=")[1].rstrip("-")) > 0
    assert is_converted(model_dir)


def test_server_errors_are_retried(mirror, tmp_path):
    mirror.faults["encoder.json"] = ["500", "500"]
    assert is_converted(fetch_model(mirror, tmp_path))


def test_persistent_server_errors_give_up(mirror, tmp_path):
    mirror.faults["vocab.bpe"] = ["500"] * 10
    with pytest.raises(DownloadError, match="giving up"):
        fetch_model(mirror, tmp_path, retries=2)


def test_404_is_refused_and_saves_nothing(mirror, tmp_path):
    mirror.faults["vocab.bpe"] = ["404"]
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_model(mirror, tmp_path)
    model_dir = tmp_path / "models" / "124M"
    assert not (model_dir / "vocab.bpe").exists()
    assert not (model_dir / "vocab.bpe.part").exists()


def test_html_body_is_never_saved(mirror, tmp_path):
    mirror.faults[SHARD_FILE] = ["html"]
    with pytest.raises(DownloadError, match="HTML/XML page"):
        fetch_model(mirror, tmp_path)
    model_dir = tmp_path / "models" / "124M"
    assert not (model_dir / SHARD_FILE).exists()
    assert not is_converted(model_dir)


def test_flipped_byte_is_detected_and_refetched(mirror, tmp_path):
    mirror.faults[SHARD_FILE] = ["flip"]
    model_dir = fetch_model(mirror, tmp_path)
    assert mirror.names().count(SHARD_FILE) == 2
    assert is_converted(model_dir)


def test_wrong_model_on_mirror_is_caught_early(mirror, tmp_path, monkeypatch):
    monkeypatch.setitem(SIZES, "124M", SIZES["1558M"])
    with pytest.raises(DownloadError, match="is not GPT-2 124M"):
        fetch_model(mirror, tmp_path)
    assert SHARD_FILE not in mirror.names()


def test_no_disk_space_is_refused_up_front(mirror, tmp_path, monkeypatch):
    class Usage:
        free = 10

    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(DownloadError, match="not enough disk space"):
        fetch_model(mirror, tmp_path)


def test_unknown_size_lists_valid_ones(tmp_path):
    with pytest.raises(InputError, match="124M, 355M, 774M, 1558M"):
        download_model("2B", tmp_path)


def test_environment_variable_names_the_mirror(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("PICOGPT2_BASE_URL", mirror.url)
    model_dir = download_model("124M", tmp_path)
    assert is_converted(model_dir)


def test_name_resolution_failure_is_not_retried(tmp_path, monkeypatch):
    # A name that does not resolve fails at once with one short line; the
    # resolver is replaced, so this never waits on a real DNS server.
    import socket

    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    slept = []
    monkeypatch.setattr(fetch.time, "sleep", slept.append)
    with pytest.raises(DownloadError) as info:
        download_model("124M", tmp_path / "m", base_url="http://mirror.invalid/gpt-2")
    message = str(info.value)
    assert "cannot reach mirror.invalid" in message and "--base-url" in message
    assert len(message) < 200 and slept == []
    assert not (tmp_path / "m").exists()  # the folders it made are gone


# -- the command, as the README runs it -------------------------------------


def test_command_downloads_and_says_where(served, env, tmp_path):
    m, _ = served
    models = tmp_path / "cli"
    r = run("download", "124M", "--models-dir", str(models), "--base-url", m.url, env=env)
    assert r.returncode == 0, text(r.stderr)
    assert is_converted(models / "124M")
    err = text(r.stderr)
    assert f"into {models / '124M'}" in err and "ready in" in err


def test_command_unreachable_host_is_one_line_and_leaves_nothing(tmp_path):
    # The reproduction: this printed a traceback (the class caught
    # was not the class raised when run as __main__), after 31 s of retries.
    models = tmp_path / "m"
    start = time.monotonic()
    r = run("download", "124M", "--models-dir", str(models), "--base-url",
            "http://127.0.0.1:9/none")  # fmt: skip
    line = one_line_error(r, 1, "cannot reach 127.0.0.1:9", "--base-url")
    lines = text(r.stderr).splitlines()  # where it was going, and why it could not
    assert len(lines) == 2 and lines[0].startswith("downloading GPT-2 124M") and len(line) < 250
    assert time.monotonic() - start < 20  # refused connections are not retried
    assert not models.exists()


def test_command_404_is_one_line(served, env, tmp_path):
    m, _ = served
    m.faults["hparams.json"] = ["404"]
    r = run("download", "124M", "--models-dir", str(tmp_path / "m"), "--base-url", m.url, env=env)
    one_line_error(r, 1, "HTTP 404")
    assert len(text(r.stderr).splitlines()) == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["2B"], ["unknown model size '2B'", "124M"]),
        (["124M", "--base-url", ""], ["--base-url must be an http"]),
        (["124M", "--base-url", "ftp://x/y"], ["--base-url must be an http"]),
        (["124M", "--retries", "-1"], ["--retries must be >= 0"]),
        (["124M", "--retries", "x"], ["invalid int value"]),
    ],
)
def test_command_bad_input_is_exit_2_before_any_work(tmp_path, args, words):
    r = run("download", *args, "--models-dir", str(tmp_path / "m"))
    one_line_error(r, 2, *words)
    assert len(text(r.stderr).splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_progress_in_a_log_is_one_summary_line_per_file(served, env, tmp_path):
    m, _ = served
    r = run("download", "124M", "--models-dir", str(tmp_path / "m"), "--base-url", m.url, env=env)
    err = text(r.stderr)
    assert r.returncode == 0 and "\r" not in err
    for name in FILES:
        assert sum(line.startswith(f"{name} ") for line in err.splitlines()) == 1, (name, err)


def test_checkpoint_naming_a_prefix_elsewhere_never_touches_it(served, env, tmp_path):
    # The mirror's `checkpoint` names the absolute prefix of another local
    # copy. Before, the conversion read that copy and deleted its shard.
    m, _ = served
    other = make_tiny_model(tmp_path / "other", n_ctx=32, n_embd=64, n_head=4, seed=9)
    (m.root / "124M" / "checkpoint").write_text(
        f'model_checkpoint_path: "{other / "model.ckpt"}"\n'
    )
    models = tmp_path / "models"
    r = run("download", "124M", "--models-dir", str(models), "--base-url", m.url, env=env)
    assert r.returncode == 0, text(r.stderr)
    assert (other / SHARD_FILE).exists()  # the other copy is untouched
    ours = load_weights(models / "124M")["model/wte"]
    served_shard = load_weights(m.root / "124M")["model/wte"]
    assert (ours == served_shard).all()  # converted from what was downloaded


def test_wrong_hparams_from_a_mirror_does_not_stick(served, env, tmp_path):
    m, hparams = served
    m.faults["hparams.json"] = ["body:" + json.dumps({**hparams, "n_layer": 48})]
    models = tmp_path / "models"
    args = ["download", "124M", "--models-dir", str(models), "--base-url", m.url]
    one_line_error(run(*args, env=env), 1, "is not GPT-2 124M", "removed")
    r = run(*args, env=env)  # the mirror now serves the right file
    assert r.returncode == 0, text(r.stderr)
    assert is_converted(models / "124M")


def test_two_first_runs_at_once_both_succeed(served, env, tmp_path):
    m, _ = served
    m.delay = 0.002  # slow enough for the runs to overlap
    models = tmp_path / "models"
    cmd = [sys.executable, "-m", "picogpt2.download", "124M", "--models-dir", str(models),
           "--base-url", m.url]  # fmt: skip
    runs = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in runs]
    errs = [text(err) for _, err in outputs]
    assert [p.returncode for p in runs] == [0, 0], errs
    assert any("waiting for another process" in err for err in errs), errs
    assert is_converted(models / "124M") and not list((models / "124M").glob("*.part"))
    assert m.names().count(SHARD_FILE) == 1  # the second found the work done


def test_interrupted_conversion_is_finished_and_the_shard_removed(served, env, tmp_path):
    # Ctrl-C during the first conversion left the shard, the marker and a
    # partial .tmp. The next run used to convert silently and keep the
    # shard (2x the disk) for good.
    m, _ = served
    models = tmp_path / "models"
    model_dir = models / "124M"
    shutil.copytree(m.root / "124M", model_dir)
    (model_dir / MARKER_FILE).write_text('{"keep_original": false}\n')
    (model_dir / (WEIGHTS_FILE + ".tmp")).write_bytes(b"partial")
    r = run("generate", "hello", "--n-tokens", "2", "--models-dir", str(models), env=env)
    assert r.returncode == 0, text(r.stderr)
    assert "converting" in text(r.stderr)
    assert is_converted(model_dir) and not (model_dir / SHARD_FILE).exists()
    assert m.requests == []  # nothing to download


def test_users_own_checkpoint_is_converted_and_kept(served, env, tmp_path):
    # A folder the downloader did not make: its files are the user's.
    m, _ = served
    models = tmp_path / "models"
    shutil.copytree(m.root / "124M", models / "124M")
    r = run("generate", "hello", "--n-tokens", "2", "--models-dir", str(models), env=env)
    assert r.returncode == 0, text(r.stderr)
    assert (models / "124M" / SHARD_FILE).exists()


def test_disk_full_names_the_file(served, env, tmp_path):
    m, _ = served
    models = tmp_path / "models"
    r = run("download", "124M", "--models-dir", str(models), "--base-url", m.url, env=env,
            preexec_fn=full_disk(2000))  # fmt: skip
    # hparams.json fits; encoder.json does not
    one_line_error(r, 1, str(models / "124M" / "encoder.json.part"), "File too large")
    assert not (models / "124M" / "encoder.json").exists()


def test_verify_finds_a_flipped_byte_in_the_converted_file(mirror, tmp_path):
    model_dir = fetch_model(mirror, tmp_path)
    args = ["download", "124M", "--models-dir", str(model_dir.parent), "--verify"]
    r = run(*args)
    assert r.returncode == 0 and "match their CRC-32C" in text(r.stderr), text(r.stderr)
    path = model_dir / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes; the header still matches
    path.write_bytes(bytes(data))
    one_line_error(run(*args), 1, str(path), "damaged", "fail their CRC-32C")


def test_verify_of_a_missing_model_is_exit_2(tmp_path):
    r = run("download", "124M", "--models-dir", str(tmp_path), "--verify")
    one_line_error(r, 2, "no model there to verify")


@pytest.mark.parametrize("command, fix", [("tokens", "--vocab-dir"), ("fixture", "--encoder-dir")])
def test_offline_errors_name_an_option_the_command_has(tmp_path, command, fix):
    args = ["hello"] if command == "tokens" else [str(tmp_path / "fx")]
    r = run(command, *args, "--models-dir", str(tmp_path / "m"))
    line = one_line_error(r, 1, "cannot reach", fix)
    assert "download's --base-url" in line and not (tmp_path / "m").exists()


def test_damaged_released_model_is_not_downloaded_again_silently(converted_models, tmp_path):
    folder = without_checkpoint(copy_model(converted_models, tmp_path, "124M"))
    (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:1000])
    env = catalogue_env(tmp_path, "124M", json.loads((folder / "hparams.json").read_text()))
    r = run("generate", "hi", "--n-tokens", "2", "--models-dir", str(tmp_path), env=env)
    one_line_error(r, 1, "is damaged", "delete it, and picogpt2 downloads GPT-2 124M again")


@pytest.mark.parametrize("name", ["hparams.json", "encoder.json", SHARD_FILE])
def test_a_body_that_never_ends_stops_at_what_the_file_can_be(served, env, tmp_path, name):
    # #28: the .part of a 73-byte file grew until the disk was full.
    m, _ = served
    m.faults[name] = ["endless"] * 10
    models = tmp_path / "models"
    r = run("download", "124M", "--models-dir", str(models), "--base-url", m.url,
            "--retries", "1", env=env, timeout=120)  # fmt: skip
    one_line_error(r, 1, name, "more than")
    parts = list(models.rglob("*.part")) if models.exists() else []
    assert all(p.stat().st_size <= 16 << 20 for p in parts)
