"""A loopback HTTP mirror of OpenAI's bucket layout, with faults to inject,
and a way to run the commands as the README does (``python -m
picogpt2.X``, a subprocess) while a tiny model stands in for a released size."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Mirror:
    """Serves {root}/{size}/{file} with Range support; ``faults`` maps a file
    name to a list of faults, one used per request. ``delay`` seconds pass
    between chunks of 4 KB (a slow link, for concurrent downloads)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.delay = 0.0
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def names(self) -> list[str]:
        return [name for name, _ in self.requests]

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.rsplit("/", 1)[-1]
        self.requests.append((name, h.headers.get("Range")))
        fault = self.faults.get(name, []).pop(0) if self.faults.get(name) else None
        path = self.root / h.path.lstrip("/")
        if fault in ("404", "500") or not path.is_file():
            h.send_error(503 if fault == "500" else 404)
        elif fault == "endless":  # a body that never ends, without a length
            h.send_response(200)
            h.send_header("Content-Type", "application/octet-stream")
            h.end_headers()
            try:
                for _ in range(1 << 16):  # 4 GB at the most: the client stops first
                    h.wfile.write(b" " * 65536)
            except OSError:
                pass
            h.close_connection = True
        elif fault == "html":
            body = b"<!DOCTYPE html><html><body>Sign in to continue</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        else:
            self.send_file(h, served_bytes(path.read_bytes(), fault), fault)

    def send_file(self, h: BaseHTTPRequestHandler, data: bytes, fault: str | None) -> None:
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
        for i in range(0, len(body), 4096):
            h.wfile.write(body[i : i + 4096])
            if self.delay:
                time.sleep(self.delay)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def served_bytes(data: bytes, fault: str | None) -> bytes:
    """The file's bytes, or other bytes for a "flip" or "body:TEXT" fault."""
    if fault == "flip":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        return bytes(flipped)
    if fault and fault.startswith("body:"):
        return fault[5:].encode()
    return data


def catalogue_env(tmp_path: Path, size: str, hparams: dict) -> dict[str, str]:
    """Environment for a subprocess in which the released ``size`` has
    ``hparams`` (a tiny model), through a ``sitecustomize`` on its path; the
    command line stays exactly the README's. Never the real network."""
    folder = tmp_path / "catalogue"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "from picogpt2.hparams import SIZES\n"
        "from picogpt2.weights.params import parse_hparams\n"
        f"SIZES[{size!r}] = parse_hparams({json.dumps(hparams)}, 'tiny')\n"
    )
    path = os.pathsep.join([str(folder), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path, "PICOGPT2_BASE_URL": "http://127.0.0.1:9"}


def run(
    command: str, *args: str, env: dict | None = None, stdin: str | bytes | None = None, **kw
) -> subprocess.CompletedProcess:
    """``python -m picogpt2.COMMAND ARGS`` as a user runs it; text output."""
    env = env or {**os.environ, "PICOGPT2_BASE_URL": "http://127.0.0.1:9"}  # never the network
    kw.setdefault("cwd", ROOT)
    kw.setdefault("timeout", 120)
    return subprocess.run(
        [sys.executable, "-m", f"picogpt2.{command}", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        env=env,
        **kw,
    )


def full_disk(limit: int):
    """A ``preexec_fn`` under which the command cannot write a file past
    ``limit`` bytes: writes fail with EFBIG ("File too large"), as on a full
    disk they fail with ENOSPC, and neither names the file."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_file_size


def text(stream: bytes) -> str:
    return stream.decode("utf-8", errors="replace")


def one_line_error(r: subprocess.CompletedProcess, status: int, *words: str) -> str:
    """Assert that ``r`` failed with ``status`` and one line on stderr holding
    ``words``; return that line."""
    err = text(r.stderr)
    assert r.returncode == status, (r.returncode, err)
    assert "Traceback" not in err, err
    last = err.splitlines()[-1] if err else ""
    for word in words:
        assert word in last, (word, err)
    return last


def export(models: Path, fmt: str, out: Path) -> Path:
    """The tiny model in ``models`` written as ``fmt`` to ``out``, by the export command."""
    r = run("export", "tiny", "--models-dir", str(models), "--to", fmt, str(out))
    assert r.returncode == 0, text(r.stderr)
    return out
