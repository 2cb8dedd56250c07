"""The downloader against a loopback HTTP server that this test starts, with
faults injected: transfers cut halfway, 404s, HTML bodies, flipped bytes, 5xx."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tiny import make_tiny_model

from picogpt2 import download
from picogpt2.download import SHARD_FILE, SMALL_FILES, DownloadError, download_model
from picogpt2.weights import WEIGHTS_FILE, is_converted, load_weights

FILES = [*SMALL_FILES, SHARD_FILE]


class Mirror:
    """Serves {root}/{size}/{file} with Range support; ``faults`` maps a file
    name to a list of faults, one used per request."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.rsplit("/", 1)[-1]
        self.requests.append((name, h.headers.get("Range")))
        fault = self.faults.get(name, []).pop(0) if self.faults.get(name) else None
        path = self.root / h.path.lstrip("/")
        if fault == "404" or not path.is_file():
            h.send_error(404)
            return
        if fault == "500":
            h.send_error(503)
            return
        data = path.read_bytes()
        if fault == "html":
            body = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if fault == "flip":
            data = bytearray(data)
            data[len(data) // 2] ^= 0x01
            data = bytes(data)
        start = 0
        rng = h.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        body = data[start:]
        if fault == "cut":  # promise everything, send half, hang up
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    source = make_tiny_model(tmp_path / "mirror" / "124M", n_ctx=32, n_embd=64, n_head=4)
    tiny_hparams = json.loads((source / "hparams.json").read_text())
    # The mirror serves a tiny model under the name 124M.
    monkeypatch.setattr(download, "expected_hparams", lambda size: tiny_hparams)
    m = Mirror(tmp_path / "mirror")
    yield m
    m.close()


def fetch_model(mirror, tmp_path, **kwargs):
    return download_model("124M", tmp_path / "models", base_url=mirror.url,
                          show_progress=False, backoff=0.01, **kwargs)  # fmt: skip


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
    assert [name for name, _ in mirror.requests].count(SHARD_FILE) == 2
    assert is_converted(model_dir)


def test_wrong_model_on_mirror_is_caught_early(mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "expected_hparams", lambda size: {"n_layer": 48})
    with pytest.raises(DownloadError, match="is not GPT-2 124M"):
        fetch_model(mirror, tmp_path)
    assert SHARD_FILE not in [name for name, _ in mirror.requests]


def test_no_disk_space_is_refused_up_front(mirror, tmp_path, monkeypatch):
    class Usage:
        free = 10

    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: Usage)
    with pytest.raises(DownloadError, match="not enough disk space"):
        fetch_model(mirror, tmp_path)


def test_unknown_size_lists_valid_ones(tmp_path):
    with pytest.raises(DownloadError, match="124M, 355M, 774M, 1558M"):
        download_model("2B", tmp_path)


def test_command_line(mirror, tmp_path, capsys):
    models = tmp_path / "cli"
    assert download.main(["124M", "--models-dir", str(models), "--base-url", mirror.url]) == 0
    assert is_converted(models / "124M")
    assert "ready in" in capsys.readouterr().err


def test_command_line_error_is_one_line(mirror, tmp_path, capsys):
    mirror.faults["hparams.json"] = ["404"]
    code = download.main(["124M", "--models-dir", str(tmp_path), "--base-url", mirror.url])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "HTTP 404" in err and "Traceback" not in err


def test_command_line_unreachable_host(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    code = download.main(
        ["124M", "--models-dir", str(tmp_path), "--base-url", "http://127.0.0.1:9"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "giving up" in err.splitlines()[-1] and "Traceback" not in err
    assert not list((tmp_path / "124M").glob("*.json"))


def test_command_line_rejects_unknown_size(capsys):
    with pytest.raises(SystemExit) as info:
        download.main(["2B"])
    assert info.value.code == 2
    assert "124M" in capsys.readouterr().err


def test_environment_variable_names_the_mirror(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(download.BASE_URL_ENV, mirror.url)
    model_dir = download_model("124M", tmp_path, show_progress=False)
    assert is_converted(model_dir)


def test_progress_line(mirror, tmp_path, capsys):
    download_model("124M", tmp_path, base_url=mirror.url, show_progress=True)
    err = capsys.readouterr().err
    assert SHARD_FILE in err and "100.0%" in err and "MB/s" in err and WEIGHTS_FILE not in err
