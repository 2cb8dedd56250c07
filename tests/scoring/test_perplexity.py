"""score: a text's log-likelihood with transformers' sliding window, checked
by hand, and the command's output."""

import json
import math

import numpy as np
import pytest
from mirror import one_line_error, run, text
from tiny import tiny

from picogpt2.model import load_model
from picogpt2.scoring import perplexity as scoring


def test_scored_tokens_are_counted_alike_on_stderr_and_in_json(converted_models, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat and then the cat ran " * 6)
    r = run("score", str(path), "--stride", "64", "--json", *tiny(converted_models))
    assert r.returncode == 0, text(r.stderr)
    scored = json.loads(r.stdout)["scored_tokens"]
    assert f"scored  {scored} tokens in" in text(r.stderr)


def by_hand_nll(model, ids):
    """Each token after the first, with all tokens before it as context."""
    logits = model.logits(ids).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.array([log_probs[t - 1, ids[t]] for t in range(1, len(ids))])


def test_score_short_text_by_hand(small_models):
    model = load_model("tiny", small_models)
    ids = [5, 9, 11, 40, 2]
    np.testing.assert_allclose(
        scoring.sliding_window_nll(model, ids, 8), by_hand_nll(model, ids), rtol=1e-12
    )


def test_token_nll_uniform_logits():
    nll = scoring.token_nlls(np.zeros((3, 4), np.float32), np.array([0, 1, 3]))
    np.testing.assert_allclose(nll, [math.log(4)] * 3)


@pytest.mark.parametrize("stride", [1, 5, 8, 15])
def test_sliding_window_scores_each_token_once_with_its_window(small_models, stride):
    model = load_model("tiny", small_models)
    ids = list(np.random.default_rng(0).integers(0, 264, 45))  # ~3x n_ctx
    got = scoring.sliding_window_nll(model, ids, stride)
    assert len(got) == len(ids) - 1
    # Brute force: token t is scored in the first window [b, b + 16) that
    # holds it after its first position, with that window as context.
    expected = []
    for t in range(1, len(ids)):
        begin = next(b for b in range(0, len(ids), stride) if b < t < b + 16)
        window = ids[begin : begin + 16]
        expected.append(by_hand_nll(model, window)[t - begin - 1])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_stride_of_n_ctx_skips_each_window_start_like_transformers(small_models):
    model = load_model("tiny", small_models)
    ids = list(np.random.default_rng(1).integers(0, 264, 40))
    got = scoring.sliding_window_nll(model, ids, 16)
    expected = [
        *by_hand_nll(model, ids[:16]),
        *by_hand_nll(model, ids[16:32]),
        *by_hand_nll(model, ids[32:]),
    ]
    assert len(got) == len(ids) - 3
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_score_command_json(small_models, tmp_path):
    text_ = "the cat in the hat sat on the mat " * 3
    path = tmp_path / "t.txt"
    path.write_text(text_)
    r = run("score", str(path), "--json", "--stride", "8", *tiny(small_models))
    assert r.returncode == 0, text(r.stderr)
    result = json.loads(r.stdout)
    assert {"tokens", "nll", "perplexity", "bits_per_byte"} <= result.keys()
    model = load_model("tiny", small_models)
    ids = model.encoder.encode(text_)
    nll = scoring.sliding_window_nll(model, ids, 8)
    assert result["tokens"] == len(ids)
    assert result["nll"] == pytest.approx(nll.mean())
    assert result["perplexity"] == pytest.approx(math.exp(nll.mean()))
    assert result["bits_per_byte"] == pytest.approx(nll.sum() / math.log(2) / len(text_))


def test_score_command_text_and_progress(small_models, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the cat " * 20)
    r = run("score", str(path), *tiny(small_models))
    assert r.returncode == 0 and "perplexity" in text(r.stdout)
    err = text(r.stderr)  # not a terminal: one summary line, no carriage returns
    assert "\r" not in err and sum(line.startswith("scored") for line in err.splitlines()) == 1


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"   \n", "is empty"), (b"ab\x00cd", "binary"), (b"\xff\xfe", "UTF-8")],
)
def test_score_bad_files(small_models, tmp_path, content, message):
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    r = run("score", str(path), *tiny(small_models))
    one_line_error(r, 2, message)
    assert text(r.stderr).count("\n") == 1


def test_score_missing_file(small_models, tmp_path):
    one_line_error(run("score", str(tmp_path / "nope.txt"), *tiny(small_models)), 2, "cannot read")


def test_nan_weights_never_give_invalid_json(nan_model, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat")
    r = run("score", str(path), "--json", *tiny(nan_model))
    one_line_error(r, 1, "not finite")
    assert r.stdout == b""
