"""How generating holds the weights in memory (weights/layout.py): every
matrix a product reads contiguous along its longer side, the values and
shapes the checkpoint's; the copies hand the file's pages back; logits,
traces and scores read the weights as loaded, bit for bit as before, and
greedy generation picks the same ids."""

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from picogpt2 import gpt2
from picogpt2.model import load_model
from picogpt2.weights.layout import longer_side_contiguous, release_mapped_pages
from picogpt2.weights.loading import open_model
from picogpt2.weights.params import params_from_tensors


def along_longer_side(w: np.ndarray) -> bool:
    rows, cols = w.shape
    return rows == cols or (w.flags.f_contiguous if rows > cols else w.flags.c_contiguous)


@pytest.mark.parametrize("shape", [(600, 7), (7, 600), (5, 5), (257, 256), (1, 9)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_a_matrix_comes_back_along_its_longer_side_with_its_values(shape, order):
    w = np.asarray(np.random.default_rng(0).standard_normal(shape), np.float32, order=order)
    out = longer_side_contiguous(w)
    np.testing.assert_array_equal(out, w)
    assert out.shape == w.shape and out.dtype == w.dtype and along_longer_side(out)
    if along_longer_side(w):
        assert out is w  # nothing copied


def stored_params(models: Path, model) -> dict:
    """The tiny model's weights as its file stores them."""
    return params_from_tensors(open_model("tiny", models).tensors, model.hparams)


def test_generating_holds_wte_and_mlp_c_proj_column_major(converted_models):
    model = load_model("tiny", converted_models, show_progress=False)
    stored = stored_params(converted_models, model)
    model.generate([1, 2], 2)
    p = model.decoding_params
    assert p["wte"].flags.f_contiguous  # [n_vocab, n_embd]: the head reads wte.T
    for block, original in zip(p["blocks"], stored["blocks"], strict=True):
        assert block["mlp"]["c_proj"]["w"].flags.f_contiguous  # [4*n_embd, n_embd]
        assert block["mlp"]["c_fc"]["w"].flags.c_contiguous  # [n_embd, 4*n_embd], as stored
        assert block["attn"]["c_attn"]["w"].flags.c_contiguous
        for part in ("attn", "mlp"):
            for name, linear in block[part].items():
                np.testing.assert_array_equal(linear["w"], original[part][name]["w"])
    np.testing.assert_array_equal(p["wte"], stored["wte"])
    assert p["wpe"] is model.params["wpe"]  # read by rows, as loaded
    # What logits, trace and scoring read stays as loaded: memory-mapped, row-major.
    base = model.params["wte"]
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap) and model.params["wte"].flags.c_contiguous


def test_logits_are_as_loaded_and_greedy_ids_as_with_the_checkpoints_layout(converted_models):
    model = load_model("tiny", converted_models, show_progress=False)
    stored = stored_params(converted_models, model)
    ids = [3, 17, 5, 42, 9]
    model.generate(ids, 3)  # the decoder's copies made: logits still read the weights as loaded
    expected = gpt2.gpt2(np.array([ids]), **stored, n_head=model.hparams.n_head)[0]
    np.testing.assert_array_equal(model.logits(ids), expected)
    greedy = list(ids)
    for _ in range(30):
        row = gpt2.gpt2(np.array([greedy]), **stored, n_head=model.hparams.n_head)[0, -1]
        greedy.append(int(np.argmax(row)))
    assert model.generate(ids, 30, ignore_eot=True) == greedy[len(ids) :]


def test_the_first_generation_counts_the_copies_it_will_make(converted_models):
    from dataclasses import replace

    from picogpt2.model import GPT2
    from picogpt2.util.errors import InputError
    from picogpt2.util.memory import generation_bytes

    model = load_model("tiny", converted_models, show_progress=False)
    h = model.hparams
    copies = (h.n_vocab * h.n_embd + h.n_layer * 4 * h.n_embd * h.n_embd) * 4  # wte, mlp/c_proj
    assert model.setup_bytes() == copies
    # Room for the caches and logits, not for the copies as well:
    room = generation_bytes(h, 2, 5, 3, 4) + copies // 2
    cramped = GPT2(h, model.encoder, model.params, replace(model.backend, available=lambda: room),
                   "float32", model.model_dir)  # fmt: skip
    with pytest.raises(InputError, match="3 samples of 5 tokens would need about"):
        cramped.generate_many([1, 2], 5, 3)
    assert "decoding_params" not in cramped.__dict__  # refused before copying
    model.generate([1, 2], 1)  # the copies made: a generation needs only its own memory now
    assert model.setup_bytes() == 0
    model.backend = replace(model.backend, available=lambda: room)
    assert len(model.generate_many([1, 2], 5, 3)) == 3


def mapped_kib(path: Path) -> int:
    """This process's resident KiB of its mappings of ``path`` (smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0]:  # a mapping's header
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(mmap.mmap, "madvise"),
    reason="/proc/self/smaps and madvise are Linux's",
)
def test_released_pages_leave_the_process_and_the_values_stay(tmp_path):
    path = tmp_path / "weights.bin"
    values = np.arange(3 << 20, dtype=np.float32)  # 12 MiB
    values.tofile(path)
    mapped = np.memmap(path, np.float32, mode="r", offset=4096)
    before = int(np.add.reduce(mapped, dtype=np.float64))  # every page read in
    assert mapped_kib(path) > 11 << 10
    release_mapped_pages(mapped)
    assert mapped_kib(path) < 64  # the edge pages at most
    assert int(np.add.reduce(mapped, dtype=np.float64)) == before  # read from the file again
    np.testing.assert_array_equal(mapped, values[1024:])


def test_an_array_in_memory_is_never_released():
    values = np.arange(1 << 20, dtype=np.float32)
    kept = values.copy()
    release_mapped_pages(values)
    release_mapped_pages(values.reshape(1024, 1024)[:, ::2])  # not one range of bytes either
    np.testing.assert_array_equal(values, kept)
