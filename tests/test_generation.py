"""Generation as terminal users expect it: several samples decoded as one
batch, stopping at <|endoftext|> and at stop strings, a repetition penalty,
texts longer than the context, and an interactive prompt."""

import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from mirror import ROOT, one_line_error, run, text
from tiny import make_tiny_model, tiny

from picogpt2 import gpt2
from picogpt2.generation import Continuation, keep, repeat, window
from picogpt2.model import load_model
from picogpt2.sampling import SplitMix64, penalize, sample

PROMPT = [83, 257, 220, 66, 64, 83, 220, 259, 258]


SAMPLING = [
    {},
    {"top_k": 20, "temperature": 0.9},
    {"top_p": 0.9},
    {"top_k": 30, "repetition_penalty": 1.3},
    {"repetition_penalty": 1.5},
    {"temperature": 3.0},  # samples reach <|endoftext|> and stop at different steps
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_layer=2, n_head=4, n_embd=32, n_ctx=64, scale=0.3)
    make_tiny_model(root / "short", n_layer=2, n_head=2, n_embd=16, n_ctx=16, scale=0.3)
    return root


@pytest.fixture(scope="module")
def model(models):
    return load_model("tiny", models, show_progress=False)


@pytest.fixture(scope="module")
def model64(models):
    return load_model("short", models, dtype="float64", show_progress=False)


# -- several samples --------------------------------------------------------


@pytest.mark.parametrize("settings", SAMPLING)
def test_sample_j_of_a_batch_is_the_single_generation_with_seed_plus_j(model, settings):
    batch = model.generate_many(PROMPT, 24, 5, seed=40, **settings)
    singles = [model.generate(PROMPT, 24, seed=40 + j, **settings) for j in range(5)]
    assert batch == singles


def test_samples_stop_on_their_own(model):
    batch = model.generate_many(PROMPT, 60, 8, seed=3, temperature=3.0)
    eot = model.encoder.eot_token
    stopped = [s for s in batch if s[-1] == eot]
    assert stopped and len(stopped) < 8  # some stopped early, the others went on
    assert all(eot not in s[:-1] for s in batch)
    assert {len(s) for s in batch} - {60} == {len(s) for s in stopped}


def test_batched_forward_equals_each_row_alone(model):
    rows = np.array([PROMPT, PROMPT[::-1], [5] * len(PROMPT)])
    batched = gpt2.gpt2(rows, **model.params, n_head=4)
    for row, logits in zip(rows, batched, strict=True):
        alone = gpt2.gpt2(row[None], **model.params, n_head=4)[0]
        assert np.max(np.abs(logits - alone)) <= 2e-5 * np.max(np.abs(alone))


def test_kv_cache_repeat_and_keep(model):
    cache = model.new_cache(1, 20)
    model.forward(np.array([PROMPT]), cache)
    many = [repeat(layer, 3) for layer in cache]
    assert many[0].k.shape[0] == 3 and many[0].length == len(PROMPT)
    for row in range(3):
        np.testing.assert_array_equal(many[0].k[row, :, :9], cache[0].k[0, :, :9])
    many[0].k[1] += 1  # tell the rows apart
    many[0].v[1] += 1
    kept_k, kept_v = many[0].k[[2, 1]].copy(), many[0].v[[2, 1]].copy()
    keep(many[0], [2, 1])
    np.testing.assert_array_equal(many[0].k, kept_k)
    np.testing.assert_array_equal(many[0].v, kept_v)


# -- stopping ---------------------------------------------------------------


def first_eot_seed(model, n_tokens):
    eot = model.encoder.eot_token
    for seed in range(300):
        ids = model.generate(PROMPT, n_tokens, seed=seed, temperature=3.0, ignore_eot=True)
        if eot in ids[:-1]:
            return seed, ids
    pytest.fail("no seed reaches <|endoftext|>")


def test_generation_stops_at_endoftext_unless_ignored(model):
    seed, full = first_eot_seed(model, 80)
    cut = full.index(model.encoder.eot_token) + 1
    assert model.generate(PROMPT, 80, seed=seed, temperature=3.0) == full[:cut]
    assert model.complete("", 0) == [""]
    assert len(full) == 80


def test_stop_string_split_across_tokens(model):
    full = model.generate(PROMPT, 60, top_k=50, seed=11, ignore_eot=True)
    pieces = [model.encoder.decode([i]) for i in full]
    for i in range(5, len(full) - 1):
        stop = pieces[i][-1:] + pieces[i + 1][:1]
        printable = stop.isprintable() and stop.isascii() and len(stop) == 2
        if printable and stop not in "".join(pieces[: i + 1]):
            break
    else:
        pytest.fail("no printable two-token boundary")
    got = model.generate(PROMPT, 60, top_k=50, seed=11, ignore_eot=True, stop=[stop])
    assert got == full[: i + 2]  # the token that completes the stop string is the last
    prompt = model.encoder.decode(PROMPT)
    [completion] = model.complete(prompt, 60, top_k=50, seed=11, ignore_eot=True, stop=[stop])
    assert completion == "".join(pieces[: i + 1])[:-1]  # the text ends before it


def test_continuation_holds_back_what_may_start_a_stop_string():
    from picogpt2.encoder import Encoder

    encoder = Encoder({b"a": 0, b"\n": 1, b"b": 2, b"\xc3": 3, b"\xa9": 4, b"<|endoftext|>": 5}, [])
    text = Continuation(encoder, ["\n\n"])
    assert text.feed([0, 1]) == "a"  # "\n" might begin "\n\n"
    assert text.feed([2]) == "\nb"  # it did not
    assert text.feed([3]) == ""  # half a UTF-8 character
    assert text.feed([4]) == "\xe9"
    assert text.feed([1, 1, 0]) == "" and text.stopped
    assert text.feed([0]) == "" and text.flush() == ""
    text = Continuation(encoder, ["\n\n"])
    assert text.feed([0, 1]) == "a" and text.flush() == "\n"


# -- repetition penalty -----------------------------------------------------


def test_penalty_rule():
    z = np.array([2.0, -2.0, 0.0, 1.0])
    seen = np.array([True, True, True, False])
    np.testing.assert_array_equal(penalize(z, seen, 2.0), [1.0, -4.0, 0.0, 1.0])
    logits = np.array([1.0, 0.9], np.float32)
    assert sample(logits, SplitMix64(0)) == 0
    seen = np.array([True, False])
    assert sample(logits, SplitMix64(0), repetition_penalty=1.5, seen=seen) == 1  # greedy too


def test_penalty_counts_the_prompt_and_the_continuation(model):
    plain = model.generate(PROMPT, 30, ignore_eot=True)
    penalized = model.generate(PROMPT, 30, ignore_eot=True, repetition_penalty=5.0)
    assert plain != penalized
    # A strong penalty makes repeats rare: greedy decoding walks to new tokens.
    assert len(set(penalized)) > len(set(plain))
    assert model.generate(PROMPT, 30, ignore_eot=True, repetition_penalty=1.0) == plain


# -- longer than the context ------------------------------------------------


def reference(model, prompt, n_tokens, seed, **settings):
    """Every step from scratch, with the window rule: the context is
    sequence[start:], and once it would exceed n_ctx, start moves so that
    the last n_ctx // 2 tokens remain."""
    n_ctx = model.hparams.n_ctx
    sequence, start, rng, out = list(prompt), 0, SplitMix64(seed), []
    for _ in range(n_tokens):
        seen = np.zeros(model.hparams.n_vocab, bool)
        seen[sequence] = True
        token = sample(model.logits(sequence[start:])[-1], rng, seen=seen, **settings)
        out.append(token)
        sequence.append(token)
        if len(sequence) - start > n_ctx:
            start = len(sequence) - n_ctx // 2
    return out


@pytest.mark.parametrize("settings", [{}, {"top_k": 10, "temperature": 1.5}])
def test_sliding_window_equals_recomputing_every_step(model64, settings):
    prompt = PROMPT[:7]
    got = model64.generate(prompt, 45, seed=2, ignore_eot=True, **settings)  # 16 positions
    assert got == reference(model64, prompt, 45, seed=2, **settings)


def test_sliding_window_in_a_batch(model64):
    batch = model64.generate_many(PROMPT[:12], 30, 3, seed=9, top_k=10, ignore_eot=True)
    assert batch == [reference(model64, PROMPT[:12], 30, seed=9 + j, top_k=10) for j in range(3)]


def test_window_keeps_the_last_half():
    assert window(list(range(16)), 16) == list(range(8, 16))


def test_a_full_prompt_still_generates(model64):
    prompt = (PROMPT * 2)[:16]
    assert model64.generate(prompt, 3, ignore_eot=True) == reference(model64, prompt, 3, seed=0)


# -- the command --------------------------------------------------------------


def test_command_prints_each_sample_under_a_header(models):
    r = run("generate", "the cat", *tiny(models, "--n-samples", "3", "--top-k", "20",
            "--seed", "7", "--n-tokens", "12"))  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    out = text(r.stdout)
    for j in range(3):
        single = run("generate", "the cat", *tiny(models, "--top-k", "20", "--seed",
                     str(7 + j), "--n-tokens", "12"))  # fmt: skip
        assert f"======== SAMPLE {j + 1} ========\n" + text(single.stdout) in out
    assert "3 samples, " in text(r.stderr) and "tokens/s" in text(r.stderr)


def test_command_one_sample_is_unchanged_and_quiet_is_silent(models):
    r = run("generate", "the cat", *tiny(models, "--n-tokens", "5", "--quiet"))
    assert r.returncode == 0 and r.stderr == b""
    assert text(r.stdout).startswith("the cat") and "SAMPLE" not in text(r.stdout)


def test_command_stops_before_a_stop_string(models, model):
    full = run("generate", "the cat", *tiny(models, "--n-tokens", "40", "--top-k", "50",
               "--seed", "3", "--ignore-eot"))  # fmt: skip
    continuation = text(full.stdout)[len("the cat") : -1]
    stop = next(c for c in continuation[5:] if c.isascii() and c.isprintable() and c != "\\")
    r = run("generate", "the cat", *tiny(models, "--n-tokens", "40", "--top-k", "50",
            "--seed", "3", "--ignore-eot", "--stop", stop))  # fmt: skip
    assert text(r.stdout) == "the cat" + continuation[: continuation.index(stop)] + "\n"


def test_command_does_not_print_the_final_endoftext(models, model):
    ids = model.encoder.encode("the cat")
    for seed in range(300):
        ids_out = model.generate(ids, 80, seed=seed, temperature=3.0)
        if ids_out[-1] == model.encoder.eot_token:
            break
    else:
        pytest.fail("no seed in 300 ends a sample at <|endoftext|>")
    r = run("generate", "the cat", *tiny(models, "--n-tokens", "80", "--temperature", "3",
            "--seed", str(seed)))  # fmt: skip
    expected = "the cat" + model.encoder.decode(ids_out[:-1]) + "\n"
    assert text(r.stdout) == expected and "<|endoftext|>" not in text(r.stdout)
    r = run("generate", "the cat", *tiny(models, "--n-tokens", "80", "--temperature", "3",
            "--seed", str(seed), "--ignore-eot"))  # fmt: skip
    assert "<|endoftext|>" in text(r.stdout)


def test_command_goes_past_the_context(models):
    r = run("generate", "the cat", *tiny(models, "--n-tokens", "150", "--ignore-eot"))
    assert r.returncode == 0 and "150 tokens in" in text(r.stderr)


def test_interactive_continues_each_line_and_survives_bad_ones(models):
    lines = b"the cat\n" + b"x " * 70 + b"\n" + b"caf\xe9\n" + b"\nthe hat\n"
    r = run("generate", "--interactive", *tiny(models, "--n-tokens", "3"), stdin=lines)
    assert r.returncode == 0, text(r.stderr)
    out, err = text(r.stdout).splitlines(), text(r.stderr)
    assert out[0].startswith("the cat") and out[-1].startswith("the hat") and len(out) == 3
    assert re.search(r"the prompt is \d+ tokens, more than the context of 64", err)
    assert "the prompt is not UTF-8 text (byte 3 is 0xe9)" in err
    assert "Traceback" not in err


def interactive_process(models, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "picogpt2.generate", "--interactive", *tiny(models, *extra)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


class Collect:
    """Everything a stream yields, read by a thread; ``wait_for`` a text."""

    def __init__(self, stream):
        self.data = b""
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        while chunk := stream.read1(4096):
            self.data += chunk

    def wait_for(self, needle: bytes, count: int = 1, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while self.data.count(needle) < count:
            assert time.monotonic() < end, self.data[-200:]
            time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interactive_ctrl_c_stops_a_generation_then_the_loop_goes_on(models):
    p = interactive_process(models, "--n-tokens", "1000000", "--ignore-eot")
    out, err = Collect(p.stdout), Collect(p.stderr)
    for n, prompt in enumerate((b"the cat", b"the hat"), start=1):
        p.stdin.write(prompt + b"\n")
        p.stdin.flush()
        out.wait_for(prompt)  # generating: the prompt is echoed first
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        err.wait_for(b"interrupted", count=n)
    p.stdin.close()
    assert p.wait(timeout=60) == 0, err.data
    assert err.data.count(b"interrupted") == 2 and b"Traceback" not in err.data


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_interactive_ctrl_c_at_the_prompt_exits_cleanly(models):
    p = interactive_process(models, "--n-tokens", "2")
    p.stdin.write(b"the cat\n")
    p.stdin.flush()
    p.stdout.readline()  # the first continuation is done: it waits for a line
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "Traceback" not in text(err)


def test_interactive_with_a_prompt_argument_is_exit_2(models):
    one_line_error(run("generate", "x", "--interactive", *tiny(models)), 2, "--interactive")


# -- the library's checks -------------------------------------------------------


def test_the_library_refuses_a_generation_that_cannot_fit(converted_models):
    from picogpt2.model import load_model
    from picogpt2.util.errors import InputError

    converted_model = load_model("tiny", converted_models, show_progress=False)
    with pytest.raises(InputError, match="10000000000 samples of 5 tokens would need about"):
        converted_model.generate_many([1, 2, 3], 5, 10**10)


def test_a_stop_string_given_alone_is_one_stop_string(converted_model):
    many = converted_model.generate([5, 17, 99], 30, top_k=50, seed=3, ignore_eot=True)
    text_ = converted_model.encoder.decode(many)
    stop = text_[10:12]
    alone = converted_model.complete("", 30, top_k=50, seed=3, ignore_eot=True, stop=stop)
    listed = converted_model.complete("", 30, top_k=50, seed=3, ignore_eot=True, stop=[stop])
    assert alone == listed


def test_numpy_integers_are_integers_everywhere(model):
    # #28: np.int64 was refused as a seed while accepted for n_tokens.
    as_python = model.generate([5, 17, 99], 4, top_k=5, seed=3)
    assert (
        model.generate([5, 17, 99], np.int64(4), top_k=np.int64(5), seed=np.int64(3)) == as_python
    )
    assert model.generate_many([5, 17], 3, np.int32(2), top_k=5, seed=np.uint64(2**63)) == (
        model.generate_many([5, 17], 3, 2, top_k=5, seed=2**63)
    )
