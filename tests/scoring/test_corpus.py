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
    """The records of an output file, after its first line (the header)."""
    header, *rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert header["picogpt2"] == "score --corpus records"
    return rows


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
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 21):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the command and its workers, at once
    p.wait()
    partial = out.read_text().count("\n") - 1  # the first line is the header
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


# -- what --out may be: records picogpt2 wrote, for these settings, one run at a time


@pytest.mark.parametrize(
    "content",
    [
        b'{"stride": 512, "workers": 2}',  # settings.json, as json.dump writes it
        b'{"id": 1, "text": "a b"}\n{"id": 2, "text": "c d"}',  # another corpus
        b"",  # empty: taken as new
    ],
    ids=["settings", "corpus", "empty"],
)
def test_only_a_records_file_picogpt2_wrote_is_gone_on_with(models, tmp_path, content):
    corpus = write_corpus(tmp_path / "in.jsonl", ["the cat sat", "the dog ran"])
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    r = run("score", "--corpus", str(corpus), "--out", str(out), *tiny(models))
    if not content:
        assert r.returncode == 0 and len(records(out)) == 2, text(r.stderr)
        return
    one_line_error(r, 2, f"--out {out} is not a records file picogpt2 wrote", "left as it is")
    assert out.read_bytes() == content  # not truncated, not appended to


def test_records_of_other_settings_are_not_gone_on_with(models, tmp_path):
    corpus = write_corpus(tmp_path / "in.jsonl", ["the cat sat on the mat", "the dog ran"])
    out = tmp_path / "out.jsonl"
    assert run("score", "--corpus", str(corpus), "--out", str(out), "--stride", "8",
               *tiny(models)).returncode == 0  # fmt: skip
    before = out.read_bytes()
    r = run("score", "--corpus", str(corpus), "--out", str(out), *tiny(models))
    one_line_error(r, 2, "holds records of other settings", "stride 8 (this run: 32)")
    assert out.read_bytes() == before
    again = run("score", "--corpus", str(corpus), "--out", str(out), "--stride", "8",
                *tiny(models))  # fmt: skip
    assert again.returncode == 0 and "0 documents" in text(again.stderr), text(again.stderr)


def test_a_second_run_on_the_same_out_is_refused_and_says_who_holds_it(models, tmp_path):
    corpus = big_corpus(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "picogpt2.score", "--corpus", str(corpus), "--out", str(out),
           *tiny(models)]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.02)
    second = run("score", "--corpus", str(corpus), "--out", str(out), *tiny(models))
    assert first.wait(timeout=120) == 0, text(first.stderr.read())
    one_line_error(second, 1, f"--out {out} is being written by another run")
    if sys.platform.startswith("linux"):
        assert f"(process {first.pid})" in text(second.stderr)
    assert len(by_id(out)) == 200  # every id once: the second wrote nothing
    third = run("score", "--corpus", str(corpus), "--out", str(out), *tiny(models))
    assert third.returncode == 0 and "200 already in" in text(third.stderr), text(third.stderr)


def test_an_out_that_is_not_a_regular_file_is_refused_without_waiting(models, tmp_path):
    corpus = write_corpus(tmp_path / "in.jsonl", ["the cat sat"])
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    r = run("score", "--corpus", str(corpus), "--out", str(fifo), *tiny(models), timeout=60)
    one_line_error(r, 2, f"--out {fifo} is not a regular file")


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
    (tmp_path / "workers").mkdir()  # the workers' own folder, not the command's
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
            cwd=tmp_path / "workers",
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


def test_a_relative_path_means_the_commands_folder_on_every_dask_worker(tmp_path, dask_cluster):
    # #28: each worker resolved ./mymodel in its own folder, and scored with
    # the model it found there, without a word.
    address, _ = dask_cluster
    here = tmp_path / "here"
    make_tiny_model(here / "mymodel", n_ctx=64, seed=1)  # the model the user means
    make_tiny_model(tmp_path / "workers" / "mymodel", n_ctx=64, seed=2)  # another, same name
    corpus = write_corpus(here / "in.jsonl", TEXTS)
    r = run("score", "--corpus", "in.jsonl", "--out", "dask.jsonl", "--scheduler", address,
            "--model-size", "./mymodel", cwd=here)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    local = run("score", "--corpus", str(corpus), "--out", "local.jsonl",
                "--model-size", "./mymodel", cwd=here)  # fmt: skip
    assert local.returncode == 0, text(local.stderr)
    same(by_id(here / "dask.jsonl"), by_id(here / "local.jsonl"), 1e-6)


def test_a_worker_that_finds_other_weights_refuses_to_score(models, tmp_path):
    from picogpt2.model import load_model
    from picogpt2.scoring.corpus import Document, Spec, score_chunk
    from picogpt2.util.errors import PicoGPT2Error
    from picogpt2.weights.locations import resolve
    from picogpt2.weights.params import weights_digest

    model = load_model("tiny", models, show_progress=False)
    ref = resolve("tiny", models)
    ours = Spec(ref, weights_digest(model.params))
    assert score_chunk(ours, [Document(1, "a", "the cat sat")])[0]["id"] == "a"
    other = make_tiny_model(tmp_path / "other", n_ctx=64, seed=5)
    theirs = Spec(resolve(other), ours.weights)  # the command loaded ours
    with pytest.raises(PicoGPT2Error, match="found other weights at .* than the command loaded"):
        score_chunk(theirs, [Document(1, "a", "the cat sat")])


def test_the_weights_digest_is_the_values_not_the_files(models, tmp_path):
    from picogpt2.model import load_model
    from picogpt2.weights.params import weights_digest

    digest = weights_digest(load_model("tiny", models, show_progress=False).params)
    assert run("export", "tiny", "--models-dir", str(models), "--to", "llmc",
               str(tmp_path / "m.bin")).returncode == 0  # fmt: skip
    (tmp_path / "encoder.json").write_bytes((models / "tiny" / "encoder.json").read_bytes())
    (tmp_path / "vocab.bpe").write_bytes((models / "tiny" / "vocab.bpe").read_bytes())
    as_llmc = load_model(str(tmp_path / "m.bin"), dtype="float64", show_progress=False)
    assert weights_digest(as_llmc.params) == digest  # another format, another dtype
    other = make_tiny_model(tmp_path / "other", n_ctx=64, seed=9)
    assert weights_digest(load_model(str(other), show_progress=False).params) != digest


def test_a_text_with_a_lone_surrogate_is_scored_and_the_run_goes_on(models, tmp_path):
    # #28: valid JSON, "\ud800" in a text raised UnicodeEncodeError in scoring:
    # no record for that chunk, and every rerun stopped at the same document.
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": 1, "text": "the cat \\ud800 sat"}\n{"id": 2, "text": "the dog"}\n')
    out = tmp_path / "out.jsonl"
    r = run("score", "--corpus", str(corpus), "--out", str(out), *tiny(models))
    assert r.returncode == 0, text(r.stderr)
    got = by_id(out)
    assert set(got) == {"1", "2"} and "nll" in got["1"] and "nll" in got["2"]
    assert got["1"]["bytes"] == len("the cat \ufffd sat".encode())  # as it is tokenized


# -- #28: --scheduler: one line within seconds, whatever is given ------------------


@pytest.mark.parametrize(
    "address, words",
    [
        ("foo", "--scheduler 'foo' is not a scheduler's address"),
        ("", "--scheduler is empty"),
        ("http://127.0.0.1:8787/status", "the dashboard's http:// address is not"),
        ("tcp://127.0.0.1", "no port"),
    ],
)
def test_a_scheduler_address_that_is_none_is_exit_2(models, tmp_path, address, words):
    corpus = write_corpus(tmp_path / "in.jsonl", ["the cat sat"])
    out = tmp_path / "out.jsonl"
    r = run("score", "--corpus", str(corpus), "--out", str(out), "--scheduler", address,
            *tiny(models), timeout=60)  # fmt: skip
    one_line_error(r, 2, words)
    assert not out.exists()


def test_a_port_that_accepts_and_never_answers_is_one_line_within_seconds(models, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never says a word: a dashboard's port
    address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    corpus = write_corpus(tmp_path / "in.jsonl", ["the cat sat"])
    start = time.monotonic()
    r = run("score", "--corpus", str(corpus), "--out", str(tmp_path / "out.jsonl"),
            "--scheduler", address, *tiny(models), timeout=90)  # fmt: skip
    silent.close()
    one_line_error(r, 1, address, "does not answer as a Dask scheduler")
    assert time.monotonic() - start < 40
    assert not (tmp_path / "out.jsonl").exists()  # no records file without a cluster


def test_a_scheduler_that_is_not_there_is_one_line(models, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    corpus = write_corpus(tmp_path / "in.jsonl", ["the cat sat"])
    r = run("score", "--corpus", str(corpus), "--out", str(tmp_path / "out.jsonl"),
            "--scheduler", address, *tiny(models), timeout=90)  # fmt: skip
    one_line_error(r, 1, f"cannot reach the Dask scheduler at {address}")
