"""Whole-or-nothing writes: a temporary file is always a new one, never
written through a link that stands in its place."""

import os
from pathlib import Path

import numpy as np
import pytest
from mirror import one_line_error, run, text
from tiny import tiny


def test_a_temporary_file_that_is_a_link_is_never_written_through(converted_models, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"someone's file")
    out = tmp_path / "ref.npz"
    (tmp_path / "ref.npz.tmp").symlink_to(elsewhere)
    r = run("dump", "--ids", "1,2", "--out", str(out), *tiny(converted_models))
    assert r.returncode == 0, text(r.stderr)
    assert elsewhere.read_bytes() == b"someone's file"
    assert not out.is_symlink() and sorted(np.load(out).files)[:2] == ["hidden", "ids"]


def test_a_users_file_with_a_temporary_looking_name_is_never_touched(converted_models, tmp_path):
    # #28: dump --out mine.npz deleted the user's own mine.npz.tmp.
    (tmp_path / "mine.npz.tmp").write_bytes(b"my notes")
    r = run("dump", "--ids", "1,2", "--out", str(tmp_path / "mine.npz"), *tiny(converted_models))
    assert r.returncode == 0, text(r.stderr)
    assert (tmp_path / "mine.npz.tmp").read_bytes() == b"my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.npz", "mine.npz.tmp"]


def test_a_plot_never_touches_the_users_file_with_a_temporary_looking_name(
    converted_models, tmp_path
):
    ref = tmp_path / "ref.npz"
    assert run("dump", "--ids", "1,2", "--out", str(ref), *tiny(converted_models)).returncode == 0
    (tmp_path / "report.svg.tmp").write_bytes(b"a draft")
    r = run("compare", str(ref), str(ref), "--plot", str(tmp_path / "report.svg"))
    assert r.returncode == 0, text(r.stderr)
    assert (tmp_path / "report.svg.tmp").read_bytes() == b"a draft"
    assert (tmp_path / "report.svg").read_text().startswith("<svg")


@pytest.mark.parametrize("name", ["d.npz", "d.safetensors", "d"])
def test_a_folder_that_cannot_be_written_is_named_by_the_file_asked_for(
    converted_models, tmp_path, name
):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anywhere: /sys refuses even root
        folder = Path("/sys")
    r = run("dump", "--ids", "1,2", "--out", str(folder / name), *tiny(converted_models))
    (tmp_path / "ro").chmod(0o755)
    line = one_line_error(r, 1, f"{folder / name}: ")
    assert f"/.{name}" not in line and ".tmp" not in line
