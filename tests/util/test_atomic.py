"""Whole-or-nothing writes: a temporary file is always a new one, never
written through a link that stands in its place."""

import numpy as np
from mirror import run, text
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
