"""score --corpus as the README runs it: the figures of score --json for each
document, the same with any number of workers, nothing lost and nothing
twice when a run is killed and started again, or a Dask worker dies."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from mirror import ROOT, one_line_error, run, text
from tiny import make_tiny_model

TEXTS = [
    "the cat sat on the mat",
    "hello there, the dog ran off",
    "in the beginning " * 20,
    "on and on and on the river ran " * 9,
    "the river " * 50,  # past n_ctx (64): scored with the sliding window, not batched
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_ctx=64)
    return root


def tiny(models):
    return ["--model-size", "tiny", "--models-dir", str(models)]


def write_corpus(path, texts, ids=None):
    ids = ids if ids is not None else list(range(len(texts)))
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, t in zip(ids, texts, strict=True):
            f.write(json.dumps({"id": doc_id, "text": t}) + "\n")
    return path


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(path):
    rows = records(path)
    ids = [r.get("id", ("line", r.get("line"))) for r in rows]
    assert len(ids) == len(set(map(str, ids))), "a document written twice"
    return {str(r.get("id")): r for r in rows}


def same(a, b, rel):
    assert a.keys() == b.keys()
    for key in a:
        for name, value in a[key].items():
            other = b[key][name]
            if isinstance(value, float):
                assert abs(value - other) <= rel * abs(other), (key, name, value, other)
            else:
                assert value == other, (key, name)


def big_corpus(path, n=300):
    words = "the cat sat on the mat and then the dog ran in the park again".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(60 + i % 40)) for i in range(n)]
    return write_corpus(path, texts)


def test_each_record_is_what_score_json_gives_that_text(models, tmp_path):
    corpus = write_corpus(tmp_path / "in.jsonl", TEXTS)
    r = run("score", "--corpus", str(corpus), "--out", str(tmp_path / "out.jsonl"), *tiny(models))
    assert r.returncode == 0, text(r.stderr)
    got = by_id(tmp_path / "out.jsonl")
    assert "scored 5 documents" in text(r.stderr).splitlines()[-1]
    for i, t in enumerate(TEXTS):
        (tmp_path / f"{i}.txt").write_text(t, encoding="utf-8")
        alone = run("score", str(tmp_path / f"{i}.txt"), "--json", *tiny(models))
        # Short documents share a forward pass: equal up to float32 rounding.
        same({"x": {"id": i, **json.loads(alone.stdout)}}, {"x": got[str(i)]}, 1e-6)


def test_batches_pad_little_and_stay_within_the_positions_given():
    from picogpt2.scoring.perplexity import batches

    lengths = [5, 60, 3, 30, 31, 64, 2, 7, 33]
    got = batches([[0] * n for n in lengths], 64)
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    for batch in got:
        assert len(batch) * max(lengths[i] for i in batch) <= 64
    assert [lengths[i] for b in got for i in b] == sorted(lengths)


def test_one_and_two_workers_give_the_same_records(models, tmp_path):
    corpus = big_corpus(tmp_path / "in.jsonl", 60)
    outs = {}
    for workers in ("1", "2"):
        outs[workers] = tmp_path / f"out{workers}.jsonl"
        r = run("score", "--corpus", str(corpus), "--out", str(outs[workers]),
                "--workers", workers, *tiny(models))  # fmt: skip
        assert r.returncode == 0, text(r.stderr)
    same(by_id(outs["1"]), by_id(outs["2"]), 1e-9)
    assert len(by_id(outs["2"])) == 60


def test_a_run_killed_and_started_again_writes_every_id_once(models, tmp_path):
    corpus = big_corpus(tmp_path / "in.jsonl")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "picogpt2.score", "--corpus", str(corpus), "--out", str(out),
           "--workers", "2", *tiny(models)]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 20):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the command and its workers, at once
    p.wait()
    partial = out.read_text().count("\n")
    assert 0 < partial < 300, partial
    with open(out, "a") as f:
        f.write('{"id": 299, "tokens": 1')  # as if killed midway through a line
    r = run("score", "--corpus", str(corpus), "--out", str(out), "--workers", "1", *tiny(models))
    assert r.returncode == 0, text(r.stderr)
    assert f"{partial:,} already in" in text(r.stderr)
    clean = tmp_path / "clean.jsonl"
    run("score", "--corpus", str(corpus), "--out", str(clean), *tiny(models))
    same(by_id(out), by_id(clean), 1e-6)  # batched otherwise, once resumed: rounding
    assert len(by_id(out)) == 300


def test_lines_that_cannot_be_scored_get_an_error_record_and_the_run_goes_on(models, tmp_path):
    corpus = tmp_path / "in.jsonl"
    corpus.write_text(
        '{"id": "a", "text": "the cat sat"}\n'
        "not json\n"
        '{"id": "b"}\n'
        '{"text": "no id"}\n'
        '{"id": "c", "text": ""}\n'
        "\n"
        '{"id": 7, "text": "the dog"}\n'
    )
    r = run("score", "--corpus", str(corpus), "--out", str(tmp_path / "out.jsonl"), *tiny(models))
    assert r.returncode == 0, text(r.stderr)
    rows = records(tmp_path / "out.jsonl")
    errors = {str(r.get("id", f"line {r.get('line')}")): r["error"] for r in rows if "error" in r}
    assert set(errors) == {"line 2", "b", "line 4", "c"}
    assert "not a JSON object" in errors["line 2"] and '"text"' in errors["b"]
    assert '"id"' in errors["line 4"] and "0 tokens" in errors["c"]
    assert {r["id"] for r in rows if "error" not in r} == {"a", 7}
    assert "4 errors" in text(r.stderr).splitlines()[-1]


def test_a_repeated_id_is_bad_input_before_any_work(models, tmp_path):
    corpus = write_corpus(tmp_path / "in.jsonl", ["a b", "c d", "e f"], ids=[1, "x", 1])
    r = run("score", "--corpus", str(corpus), "--out", str(tmp_path / "out.jsonl"), *tiny(models))
    one_line_error(r, 2, "the id 1 is on lines 1 and 3", "unique")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("out", "extra", "words"),
    [
        (None, [], "--corpus needs --out"),
        ("in.jsonl", [], "is the corpus itself"),
        (".", [], "is a folder"),
        ("no/such/out.jsonl", [], "does not exist"),
        ("out.jsonl", ["--workers", "0"], "--workers must be >= 1"),
        ("out.jsonl", ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "a cluster's"),
        ("out.jsonl", ["--json"], "not both"),
    ],
)
def test_bad_corpus_arguments_are_one_line_and_exit_2(models, tmp_path, out, extra, words):
    corpus = write_corpus(tmp_path / "in.jsonl", ["a b", "c d"])
    before = corpus.read_bytes()
    where = [] if out is None else ["--out", str(tmp_path / out)]
    r = run("score", "--corpus", str(corpus), *where, *extra, *tiny(models))
    one_line_error(r, 2, words)
    assert corpus.read_bytes() == before and not (tmp_path / "out.jsonl").exists()


# -- Dask: a scheduler and two workers on loopback, one killed mid-run ---------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    pytest.importorskip("distributed")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    logs = open(tmp_path / "dask.log", "w")
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"], stdout=logs, stderr=logs, env=env,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--no-dashboard",
                "--host",
                "127.0.0.1",
            ],
            stdout=logs,
            stderr=logs,
            env=env,
            cwd=ROOT,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for p in [*workers, scheduler]:
            p.kill()
            p.wait()
        logs.close()


def test_a_dask_worker_that_dies_mid_run_loses_nothing(models, tmp_path, dask_cluster):
    address, workers = dask_cluster
    corpus = big_corpus(tmp_path / "in.jsonl", 400)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "picogpt2.score", "--corpus", str(corpus), "--out", str(out),
           "--scheduler", address, *tiny(models)]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 10):
        time.sleep(0.02)
    workers[0].kill()  # SIGKILL: its chunks in flight go to the other worker
    at_kill = out.read_text().count("\n")
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, text(stderr)
    assert 0 < at_kill < 400  # killed mid-run
    local = tmp_path / "local.jsonl"
    run("score", "--corpus", str(corpus), "--out", str(local), *tiny(models))
    same(by_id(out), by_id(local), 1e-9)
    assert len(by_id(out)) == 400
