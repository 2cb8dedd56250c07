"""Where models are: the models folder whatever the current folder, and
paths relative to it, as the user gave them."""

import os

from mirror import ROOT, export, one_line_error, run, text
from tiny import tiny


def test_the_readmes_own_export_then_generate_pair_works_from_any_folder(
    converted_models, tmp_path
):
    work = tmp_path / "work"
    (work / "dir").mkdir(parents=True)
    r = run("export", "tiny", "--models-dir", str(converted_models), "--to", "llmc",
            "gpt2_tiny.bin", cwd=work)  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    export(converted_models, "safetensors", work / "dir" / "x")
    expected = run("generate", "the cat", "--n-tokens", "4", *tiny(converted_models)).stdout
    vocab = ["--encoder-dir", str(converted_models / "tiny")]
    for name, extra in [("gpt2_tiny.bin", vocab), ("./gpt2_tiny.bin", vocab), ("dir/x", [])]:
        r = run("generate", "the cat", "--n-tokens", "4", "--model-size", name, *extra,
                "--models-dir", str(converted_models), cwd=work)  # fmt: skip
        assert r.returncode == 0, (name, text(r.stderr))
        assert r.stdout == expected
        where = (work / name).resolve()
        assert f"loading GPT-2 from {where} (the path given)" in text(r.stderr)
    r = run("generate", "the cat", "--n-tokens", "4", *tiny(converted_models), cwd=work)
    assert f"loading GPT-2 tiny from the models folder {converted_models}" in text(r.stderr)
    absolute = converted_models / "tiny"  # in the models folder, but named by its whole path
    r = run("generate", "the cat", "--n-tokens", "4", "--model-size", str(absolute),
            "--models-dir", str(converted_models), cwd=work)  # fmt: skip
    assert r.returncode == 0 and r.stdout == expected, text(r.stderr)
    assert f"loading GPT-2 from {absolute.resolve()} (the path given)" in text(r.stderr)


def test_a_path_that_does_not_exist_is_not_looked_for_in_the_models_folder(
    converted_models, tmp_path
):
    r = run(
        "generate",
        "x",
        "--model-size",
        "./tiny",
        "--models-dir",
        str(converted_models),
        cwd=tmp_path,
    )
    one_line_error(r, 2, "unknown model size './tiny'")


def test_default_models_folder_does_not_depend_on_the_working_directory(converted_models, tmp_path):
    env = {**os.environ, "PICOGPT2_MODELS_DIR": str(converted_models)}
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
