"""download --verify: the way to tell damaged weights from a bug, in every
format, never advising to delete a file picogpt2 did not write; NaN in the
weights found and named."""

from mirror import export, one_line_error, run, text
from tiny import poison, safetensors_offset, tiny


def test_verify_a_transformers_folder_checks_what_can_be_checked(converted_models, tmp_path):
    folder = export(converted_models, "hf", tmp_path / "hf")
    r = run("download", str(folder), "--verify")
    err = text(r.stderr)
    assert r.returncode == 0, err
    assert "all 28 tensors readable, named and shaped" in err and "every value finite" in err
    assert "no checksum is recorded" in err and "delete" not in err


def test_nan_in_a_transformers_folder_leads_to_a_verify_that_names_it(converted_models, tmp_path):
    folder = export(converted_models, "hf", tmp_path / "hf")
    weights = folder / "model.safetensors"
    poison(weights, safetensors_offset(weights, "transformer.ln_f.weight"))
    r = run("generate", "the cat", "--model-size", str(folder))
    line = one_line_error(r, 1, "not finite", "--verify")
    suggested = line.split("check them with ")[1].split()
    assert suggested[:3] == ["python", "-m", "picogpt2.download"]
    again = run("download", *suggested[3:])
    one_line_error(again, 1, "model/ln_f/g", "not finite")
    assert "delete" not in text(again.stderr)


def test_verify_an_llmc_file_checks_that_file(converted_models, tmp_path):
    path = export(converted_models, "llmc", tmp_path / "m.bin")
    r = run("download", str(path), "--verify")
    assert r.returncode == 0 and "(llmc): all 28 tensors readable" in text(r.stderr), text(r.stderr)
    assert not (tmp_path / "m.bin.picogpt2.safetensors").exists()  # verifying writes nothing
    poison(path, path.stat().st_size - 4)  # the last float: ln_f's bias
    one_line_error(run("download", str(path), "--verify"), 1, "model/ln_f/b", "not finite")


def test_verify_of_a_conversion_checks_its_crcs(converted_models):
    r = run("download", "tiny", "--models-dir", str(converted_models), "--verify")
    assert r.returncode == 0 and "all 28 tensors match their CRC-32C" in text(r.stderr)


def test_nan_weights_stop_generation_with_a_pointer_to_verify(nan_model):
    r = run("generate", "Hi", *tiny(nan_model))
    one_line_error(r, 1, "not finite", "damaged", "--verify")
    assert text(r.stdout) in ("", "Hi\n")  # nothing generated from garbage


def test_verify_names_the_tensor_with_the_nan(nan_model):
    r = run("download", "tiny", "--models-dir", str(nan_model), "--verify")
    one_line_error(r, 1, "model/ln_f/g", "fail their CRC-32C")
