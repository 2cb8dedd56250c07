"""compare, as the oracle people run: it names the first operation that goes
wrong, tells a near-tie from a bug, and returns a typed report."""

import io
import json
import math
import os
import zipfile

import numpy as np
import pytest
from mirror import one_line_error, run, text
from tiny import DUMP_IDS, read_npz, tiny

from picogpt2 import gpt2
from picogpt2.activations import BLOCK, KEYS
from picogpt2.model import load_model


def test_a_candidate_holding_inf_is_not_ok_without_warnings(converted_models, tmp_path):
    ref = tmp_path / "ref.npz"
    assert run("dump", "--ids", "1,2,3", "--out", str(ref), *tiny(converted_models)).returncode == 0
    data = dict(np.load(ref))
    data["logits"][1, 5] = np.inf
    data["hidden"][1, 0, 0] = -np.inf
    np.savez(tmp_path / "mine.npz", **data)
    r = run("compare", str(ref), str(tmp_path / "mine.npz"))
    assert r.returncode == 1 and "Warning" not in text(r.stderr), text(r.stderr)
    assert "not finite, so no log-softmax" in text(r.stdout)
    assert "first over tolerance: hidden[1]" in text(r.stdout)


def compare(*paths, extra=(), **kw):
    return run("compare", *map(str, paths), *extra, **kw)


def test_float32_candidate_against_float64_reference_is_ok(dumps):
    r = compare(dumps / "float64.npz", dumps / "float32.npz")
    assert r.returncode == 0, text(r.stdout) + text(r.stderr)
    out = text(r.stdout)
    assert "float32 vs float64" in out and "NOT OK" not in out
    assert "OK: every shared key is within tolerance" in out
    assert "argmax: 10/10 positions agree" in out and "all 6 ids identical" in out
    for key in ("ln_1[0]", "mlp_hidden[2]", "hidden[3]", "ln_f", "logits"):
        assert f"\n{key} " in out


def test_json_report(dumps):
    r = compare(dumps / "float64.npz", dumps / "float32.npz", extra=["--json"])
    report = json.loads(r.stdout)
    assert report["ok"] and report["first_wrong"] is None and report["mode"] == "float32 vs float64"
    labels = [c["label"] for c in report["checks"]]
    assert labels.index("hidden[0]") < labels.index("ln_1[0]") < labels.index("q[0]")
    assert labels.index("mlp_out[0]") < labels.index("hidden[1]") < labels.index("ln_1[1]")


def exact_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0))).astype(x.dtype)


def eps_outside(x, g, b, eps=1e-5):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    return g * centred / (np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True)) + eps) + b


@pytest.mark.parametrize(
    "bug, first_wrong",
    [("gelu", "mlp_hidden[0]"), ("layer_norm", "ln_1[0]"), ("k_and_v", "k[0]")],
)
def test_a_buggy_candidate_is_caught_at_its_first_wrong_operation(
    dumps, models, tmp_path, monkeypatch, bug, first_wrong
):
    if bug == "gelu":
        monkeypatch.setattr(gpt2, "gelu", exact_gelu)
    elif bug == "layer_norm":
        monkeypatch.setattr(gpt2, "layer_norm", eps_outside)
    else:
        original = np.split

        def split(array, sections, axis=0):
            q, k, v = original(array, sections, axis=axis)
            return [q, v, k]

        monkeypatch.setattr(gpt2.np, "split", split)
    model = load_model("tiny", models)
    buggy = model.trace([int(i) for i in DUMP_IDS.split(",")], detail=True)
    monkeypatch.undo()
    candidate = tmp_path / "buggy.npz"
    np.savez(candidate, **buggy)
    r = compare(dumps / "float64.npz", candidate)
    assert r.returncode == 1, text(r.stdout) + text(r.stderr)
    last = text(r.stdout).splitlines()[-1]
    assert last.startswith(f"first over tolerance: {first_wrong} "), last
    assert "give the model (--model)" in last and "agrees" not in last
    r = compare(dumps / "float64.npz", candidate, extra=["--model", str(models / "tiny")])
    last = text(r.stdout).splitlines()[-1]
    assert r.returncode == 1 and last.startswith(f"blamed: {first_wrong}, "), last
    assert "(block 0)" in last
    report = json.loads(compare(dumps / "float64.npz", candidate, extra=["--json"]).stdout)
    assert report["first_wrong"]["label"] == first_wrong and "blamed" not in report


def near_tie_pair(dumps, tmp_path, gap_fraction):
    """A reference whose position 4 has its two best logits ``gap_fraction``
    of the largest logit apart, and a candidate that picks the second."""
    ref = read_npz(dumps / "float64.npz")
    logits = ref["logits"]
    row = logits[4]
    first, second = np.argsort(-row)[:2]
    row[second] = row[first] - gap_fraction * np.max(np.abs(logits))
    cand = {k: ref[k].astype(np.float32) if ref[k].dtype.kind == "f" else ref[k] for k in ref}
    cand["logits"] = logits.copy()
    cand["logits"][4, [first, second]] = row[second], row[first]
    for name, arrays in (("ref.npz", ref), ("cand.npz", cand)):
        np.savez(tmp_path / name, **arrays)
    return tmp_path / "ref.npz", tmp_path / "cand.npz"


def test_a_flipped_near_tie_is_labelled_and_passes(dumps, tmp_path):
    r = compare(*near_tie_pair(dumps, tmp_path, 1e-7))
    out = text(r.stdout)
    assert r.returncode == 0, out
    assert "argmax: 9/10 positions agree" in out and "position 4:" in out
    assert out.split("position 4:")[1].splitlines()[0].endswith("near-tie")


def test_a_real_disagreement_fails(dumps, tmp_path):
    r = compare(*near_tie_pair(dumps, tmp_path, 1e-2))
    assert r.returncode == 1
    assert "real disagreement" in text(r.stdout)


def test_candidate_with_a_subset_of_keys_as_a_folder(dumps, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    ref = read_npz(dumps / "float32.npz")
    for key in ("hidden", "logits"):
        np.save(folder / f"{key}.npy", ref[key])
    r = compare(dumps / "float64.npz", folder)
    assert r.returncode == 0, text(r.stdout)
    assert "q[0]" not in text(r.stdout) and "hidden[3]" in text(r.stdout)


def test_a_generation_that_differs_is_explained(dumps, tmp_path):
    ref = read_npz(dumps / "float64.npz")
    cand = {"gen_ids": ref["gen_ids"].copy()}
    cand["gen_ids"][3] = ref["gen_top_ids"][3, 1]
    np.savez(tmp_path / "gen.npz", **cand)
    r = compare(dumps / "float64.npz", tmp_path / "gen.npz")
    assert "the ids first differ at step 3" in text(r.stdout)
    assert r.returncode == (0 if "near-tie" in text(r.stdout) else 1)


def test_nan_in_the_candidate_is_a_wrong_value_and_blamed(dumps, models, tmp_path):
    cand = read_npz(dumps / "float32.npz")
    cand["ln_f"][0, 0] = np.nan  # what a softmax that overflows leaves
    np.savez(tmp_path / "cand.npz", **cand)
    r = compare(dumps / "float64.npz", tmp_path / "cand.npz")
    assert r.returncode == 1 and "\nln_f " in text(r.stdout) and not r.stderr, text(r.stderr)
    r = compare(
        dumps / "float64.npz", tmp_path / "cand.npz", extra=["--model", str(models / "tiny")]
    )
    last = text(r.stdout).splitlines()[-1]
    assert r.returncode == 1 and last.startswith("blamed: ln_f, ") and "not finite" in last, last


@pytest.mark.parametrize(
    "change, words",
    [
        ("missing", "no such file or folder"),
        (
            "shape",
            "hidden[0]: the candidate is [10, 31], the reference [10, 32] (our layout: "
            "[n_layer+1, n, n_embd]",
        ),
        ("ids", "ids: the dumps are of different inputs"),
        ("garbage", "not a dump picogpt2 can read"),
    ],
)
def test_bad_input_is_exit_2(dumps, tmp_path, change, words):
    ref = read_npz(dumps / "float32.npz")
    if change == "shape":
        ref["hidden"] = ref["hidden"][..., :31]
    elif change == "ids":
        ref["ids"] = ref["ids"][::-1].copy()
    path = tmp_path / "cand.npz"
    if change == "garbage":
        path.write_bytes(b"not a zip")
    elif change != "missing":
        np.savez(path, **ref)
    one_line_error(compare(dumps / "float64.npz", path), 2, words)


def test_tolerances_documented_for_every_key():
    assert {"ids", "hidden", "ln_f", "logits"} | {k.name for k in BLOCK} == KEYS.keys()
    from picogpt2.oracle.rounding import BOUNDS

    ops = [op for k in KEYS.values() for op in (k.made_by, k.first) if op is not None]
    assert len(ops) == len(KEYS) and all(op.rounding for op in ops)
    assert BOUNDS.keys() == KEYS.keys() - {"ids"} | {"embeddings"}


def test_compare_is_a_function_with_a_typed_report(dumps):
    from picogpt2.oracle.comparison import Argmax, Check, Report, compare

    ref, cand = dict(np.load(dumps / "float64.npz")), dict(np.load(dumps / "float32.npz"))
    report = compare(ref, cand)
    assert isinstance(report, Report) and report.ok and report.blamed is None
    assert all(isinstance(c, Check) and c.ok for c in report.checks)
    assert isinstance(report.argmax, Argmax) and report.argmax.real_disagreements == 0
    cand["logits"] = cand["logits"].copy()
    cand["logits"][0, 0] += 1e3  # a flipped argmax, far beyond any near-tie
    report = compare(ref, cand)
    assert not report.ok and report.first_wrong.key == "logits"
    assert not report.argmax.disagreements[0].near_tie  # the verdict is data, not words


# -- #28: what a candidate may hold, checked before it is read ----------------------


def saved(tmp_path, arrays, name="mine.npz"):
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize(
    "kind, words",
    [
        ("complex", "hidden: the candidate holds complex64 values"),
        ("bool", "ln_f: the candidate holds bool values"),
        ("string", "logits: the candidate holds <U1 values"),
    ],
)
def test_values_that_are_not_numbers_are_bad_input(dumps, tmp_path, kind, words):
    cand = read_npz(dumps / "float32.npz")
    if kind == "complex":
        cand["hidden"] = cand["hidden"] + 1000j  # judged OK before, a ComplexWarning only
    elif kind == "bool":
        cand["ln_f"] = cand["ln_f"] > 0
    else:
        cand["logits"] = np.full(cand["logits"].shape, "x")
    one_line_error(compare(dumps / "float64.npz", saved(tmp_path, cand)), 2, words)


@pytest.mark.parametrize("above", [-np.inf, np.nan])
def test_what_is_never_judged_is_never_read(dumps, models, tmp_path, above):
    # The masked_fill convention: -inf above the diagonal of the scores.
    cand = read_npz(dumps / "float32.npz")
    scores = cand["attn_scores"].copy()
    scores[..., ~np.tril(np.ones(scores.shape[-2:], bool))] = above
    cand["attn_scores"] = scores
    model = ("--model", "tiny", "--models-dir", str(models))
    r = compare(dumps / "float64.npz", saved(tmp_path, cand), extra=model)
    assert r.returncode == 0, text(r.stdout) + text(r.stderr)
    assert "blamed" not in text(r.stdout) and "OK: every shared key" in text(r.stdout)


def test_a_one_layer_file_of_a_key_that_is_not_per_layer_is_bad_input(dumps, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    cand = read_npz(dumps / "float32.npz")
    np.save(folder / "ids.0.npy", cand["ids"])
    np.save(folder / "ln_f.npy", cand["ln_f"])
    one_line_error(compare(dumps / "float64.npz", folder), 2, "ids.0", "not per layer")


@pytest.mark.parametrize(
    "name, array, words",
    [
        ("hidden", np.float32(1.0), "hidden: the candidate is [], where the reference stacks"),
        ("hidden_states", np.float32(1.0), "hidden_states: the candidate is []"),
        ("hidden", np.zeros(10_000_000, np.float32), "hidden: its header declares [10000000]"),
        ("q", np.zeros((3, 4, 10, 8, 1, 1), np.float32), "q[0]: the candidate is [4, 10, 8, 1, 1]"),
        ("qkv", np.zeros((3, 1, 10, 95), np.float32), "its width 95 is not 3 x 4 heads"),
    ],
)
def test_malformed_arrays_are_named_with_their_shape(dumps, tmp_path, name, array, words):
    r = compare(dumps / "float64.npz", saved(tmp_path, {name: array}), extra=("--json",))
    one_line_error(r, 2, words)


def test_a_compressed_member_is_never_decompressed_beyond_what_the_reference_holds(dumps, tmp_path):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, logits=np.zeros((1 << 28,), np.float32))  # 1 GiB of zeros, 1 MB
    r = compare(dumps / "float64.npz", path, timeout=30)
    one_line_error(r, 2, "logits: its header declares [268435456]", "more than the reference")


def test_a_compressed_member_whose_header_lies_about_its_size_is_refused(dumps, tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**13,)}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 64)
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("logits.npy", member.getvalue())
    one_line_error(compare(dumps / "float64.npz", path, timeout=30), 2, "its header declares")


def test_a_plot_of_a_candidate_whose_name_is_not_utf8(dumps, tmp_path):
    name = os.fsdecode(b"mine-\xff.npz")
    cand = saved(tmp_path, read_npz(dumps / "float32.npz"), name)
    r = compare(dumps / "float64.npz", cand, extra=("--plot", str(tmp_path / "p.svg")))
    assert r.returncode == 0 and "Traceback" not in text(r.stderr), text(r.stderr)
    assert "mine-\ufffd.npz" in (tmp_path / "p.svg").read_text(encoding="utf-8")


@pytest.mark.parametrize("where", ["folder", "file"])
def test_a_pipe_among_the_candidates_files_is_refused_without_waiting(dumps, tmp_path, where):
    folder = tmp_path / "mine"
    folder.mkdir()
    np.save(folder / "hidden.npy", read_npz(dumps / "float32.npz")["hidden"])
    fifo = folder / "ln_f.npy" if where == "folder" else tmp_path / "mine.npz"
    os.mkfifo(fifo)
    target = folder if where == "folder" else fifo
    r = compare(dumps / "float64.npz", target, timeout=30)
    one_line_error(r, 2, f"{fifo}: not a regular file")


def test_every_generated_figure_is_judged_and_every_other_key_accounted_for(dumps, tmp_path):
    cand = read_npz(dumps / "float32.npz")
    r = compare(dumps / "float64.npz", dumps / "float32.npz")
    out = text(r.stdout)
    assert r.returncode == 0 and "not judged" not in out, out
    for key in ("gen_logprob", "gen_top_ids", "gen_top_logprobs", "gen_top_logits", "gen_gap"):
        assert f"\n{key} " in out, key
    cand["gen_logprob"] = cand["gen_logprob"] + 1.0  # what used to pass unseen
    cand["my_probe"] = np.zeros(3)
    np.savez(tmp_path / "cand.npz", **cand)
    r = compare(dumps / "float64.npz", tmp_path / "cand.npz", extra=["--json"])
    report = json.loads(r.stdout)
    assert r.returncode == 1 and not report["ok"], report["conclusion"]
    assert report["first_wrong"]["key"] == "gen_logprob"
    assert report["conclusion"].startswith("NOT OK: the figures first differ at step 0")
    assert report["not_judged"] == ["my_probe: the reference has no my_probe"]
    no_generation = tmp_path / "ref.npz"
    np.savez(no_generation, **{k: v for k, v in read_npz(dumps / "float64.npz").items()
                               if not k.startswith("gen_")})  # fmt: skip
    r = compare(no_generation, dumps / "float32.npz")
    assert r.returncode == 0, text(r.stdout)
    assert "not judged: gen_logprob: the reference has no generation (dump it with --generate N)" \
        in text(r.stdout)  # fmt: skip
