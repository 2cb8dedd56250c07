"""What the README and docs/ say is what the code does: the table of every
tensor in every format (docs/formats.md) is rendered here from the code's
own mappings (the schema, transformers' names, llm.c's layout), and the
table of every key a dump holds (docs/oracle.md) from the operation table
(activations.py), each matching the docs line for line; and every command
and Python example the docs show runs as written, against a tiny model
standing in for GPT-2 124M."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mirror import run, text
from tiny import (
    converted,
    make_tiny_model,
)

from picogpt2.activations import ATTN_DEFAULT, BLOCK, KEYS, LAST
from picogpt2.hparams import HParams
from picogpt2.weights.formats import gguf, llmc
from picogpt2.weights.formats.transformers import hf_name
from picogpt2.weights.params import block_schema, schema

DOCS = Path(__file__).resolve().parents[1] / "docs"


# Sizes that cannot be mistaken for one another, and their names.
H = HParams(n_vocab=50257, n_ctx=1024, n_embd=1000, n_head=10, n_layer=7)


PADDED = 50304


SYMBOLS = {50257: "n_vocab", PADDED: "Vp", 1024: "n_ctx", 1000: "n_embd", 3000: "3·n_embd",
           4000: "4·n_embd", 7: "n_layer"}  # fmt: skip


WHAT = {"wte": "token embeddings, and the output head", "wpe": "position embeddings",
        "ln_f": "final layer norm", "ln_1": "block i: layer norm before attention",
        "attn/c_attn": "q, k, v in one projection", "attn/c_proj": "attention's output projection",
        "ln_2": "layer norm before the MLP", "mlp/c_fc": "the MLP's expansion",
        "mlp/c_proj": "the MLP's projection"}  # fmt: skip


def dims(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(SYMBOLS.get(d, str(d)) for d in shape) + "]"


def tree_path(module: str, leaf: str, layer: int | None) -> str:
    """The tensor's place in the tree: ``blocks[i]["attn"]["c_attn"]["w"]``."""
    keys = [*module.split("/"), *([leaf] if leaf else [])]
    head, rest = ("blocks[i]", keys) if layer is not None else (keys[0], keys[1:])
    return head + "".join(f'["{k}"]' for k in rest)


def rows() -> list[str]:
    """One row per kind of tensor, block 0 standing for block i."""
    where = {}
    for position, (held, shape) in enumerate(llmc.layout(H, PADDED), start=1):
        where[held[0].name] = f"{position}: {dims(shape)}"
    lines = []
    for t in [x for x in schema(H) if x.layer is None] + block_schema(H, 0):
        name = t.name.replace("/h0/", "/h{i}/")
        theirs = hf_name(t).replace(".h.0.", ".h.{i}.")
        llama = gguf.gguf_name(t).replace("blk.0.", "blk.{i}.")
        lines.append(
            f"| {WHAT[t.module]} | `{name}` {dims(t.shape)} | "
            f"`{tree_path(t.module, t.leaf, t.layer)}` {dims(t.tree_shape)} | "
            f"`{theirs}` {dims(t.tree_shape)} | {where[t.name]} | "
            f"`{llama}` {dims(gguf.gguf_shape(t))} |"
        )
    return lines


def inputs(op, shift: int) -> str:
    """What ``op`` takes, as keys, for the key at layer i - ``shift``."""
    named = []
    for name, at in op.inputs:
        if at is None:
            named.append(f"`{name}`")
        elif at == LAST:
            named.append(f"`{name}[n_layer]`")
        else:
            named.append(f"`{name}[i{at + shift:+d}]`".replace("+0", ""))
    return ", ".join(named) or "`ids`"


def key_rows() -> list[str]:
    """One row per key a dump holds, from the operation table."""
    lines = ["| key | shape | in a dump | made by | from | rounding bound | llm.c | also |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for key in KEYS.values():
        dumped = ("always" if key not in BLOCK else "`--attn`, `--detail`"
                  if key.name == ATTN_DEFAULT else "`--detail`")  # fmt: skip
        ops = (
            [("", key.made_by)]
            if key.first is None
            else [("[0]", key.first), ("[i+1]", key.made_by)]
        )
        made = "; ".join(f"{at} {op.what}".strip() for at, op in ops if op) or "the input"
        source = "; ".join(f"{at} {inputs(op, 1 if at == '[i+1]' else 0)}".strip()
                           for at, op in ops if op) or "the input"  # fmt: skip
        alone = "; ".join(f"{at} {op.rounding}".strip() for at, op in ops if op)
        llmc_name = f"`{key.llmc}`" if key.llmc else ""
        lines.append(f"| `{key.name}` | {key.shape} | {dumped} | {made} | {source} | {alone} | "
                     f"{llmc_name} | {key.note} |")  # fmt: skip
    return lines


def bound_rows() -> list[str]:
    """The sums' part of each rounding bound at 124M's shapes, in float32,
    from oracle/rounding.py's constants."""
    from picogpt2.hparams import SIZES
    from picogpt2.oracle.rounding import LAMBDA, unit_roundoff

    h, u = SIZES["124M"], unit_roundoff("float32")
    sums = [
        ("`ln_1`, `ln_2`, `ln_f`: the mean, the variance", "n_embd", h.n_embd),
        ("`q`, `k`, `v`, `attn_out`, `mlp_pre`: x w + b", "n_embd + 1", h.n_embd + 1),
        ("`mlp_out`: x w + b", "4 n_embd + 1", 4 * h.n_embd + 1),
        ("`logits`: ln_f wte^T", "n_embd", h.n_embd),
        ("`attn_scores`: q k^T", "head_dim", h.n_embd // h.n_head),
        ("`attn`: the denominator; `attn_heads`: attn v", "i + 1, up to n_ctx", h.n_ctx),
    ]
    lines = ["| operation: its sum | n | n at 124M | worst, n − 1 | λ √(n − 1) | bound / (u S) "
             "| bound / S, float32 |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for what, n_words, n in sums:
        worst, chance = n - 1, LAMBDA * math.sqrt(n - 1)
        lines.append(f"| {what} | {n_words} | {n} | {worst} | {chance:.0f} | "
                     f"{min(worst, chance):.0f} | {min(worst, chance) * u:.1e} |")  # fmt: skip
    return lines


def test_the_bound_table_is_the_codes():
    assert_in_order(DOCS / "oracle.md", bound_rows())


def assert_in_order(doc: Path, table: list[str]) -> None:
    text = doc.read_text(encoding="utf-8").splitlines()
    assert all(row in text for row in table), "\n".join(r for r in table if r not in text)
    start = text.index(table[0])
    assert text[start : start + len(table)] == table  # in this order, nothing between


def test_the_tensor_table_is_the_codes():
    assert_in_order(DOCS / "formats.md", rows())


def test_the_key_table_is_the_operation_tables():
    assert_in_order(DOCS / "oracle.md", key_rows())


DOCUMENTS = [DOCS.parent / "README.md", *sorted(DOCS.glob("*.md"))]


# What the docs show but this test does not run, and why: each is run
# elsewhere, or needs what a test cannot have. Matched as substrings.
NOT_RUN = {
    "convert_hf_to_gguf.py": "llama.cpp's converter: tests/weights/test_gguf_oracle.py runs it",
    "save_tensors": "a llama.cpp build: tests/weights/test_gguf_oracle.py compiles and runs it",
    "gpt2-q8_0.gguf": "llama.cpp's converter's file: tests/weights/test_gguf_oracle.py runs the "
    "same chain on the gguf package's Q8_0 files",
    "python -m pytest -q": "the test suite itself (.ci/run runs it)",
    "-m calibration": "the calibration matrix, some ten minutes: run by hand (docs/oracle.md)",
    "dask scheduler": "a cluster of machines: tests/scoring/test_corpus.py runs one on loopback",
    "dask worker": "a cluster of machines: tests/scoring/test_corpus.py runs one on loopback",
    "--scheduler tcp://HOST:8786": "a cluster of machines: tests/scoring/test_corpus.py runs one",
    "--backend cupy": "an NVIDIA GPU: tests/util/test_cupy.py runs where there is one",
    '".[gpu]"': "CuPy and CUDA's libraries, over 1 GB: tests/util/test_cupy.py runs where they are",
}


# Console scripts, as the module each runs.
SCRIPTS = {"picogpt2": "generate", **{f"picogpt2-{n}": n for n in (
    "download", "dump", "score", "compare", "tokens", "export", "fixture")}}  # fmt: skip


def shown(doc: Path) -> list[tuple[str, str]]:
    """(kind, text) of what ``doc`` shows to run, in order: "sh" for each
    shell command of a ```sh block (continuation lines joined, comments
    dropped) or after "$ " in an output block, "python" for each block."""
    out, fence, body = [], None, []
    for line in doc.read_text(encoding="utf-8").splitlines():
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            out += _commands(fence, body)
            fence = None
        elif fence is not None:
            body.append(line)
    return out


def _commands(fence: str, body: list[str]) -> list[tuple[str, str]]:
    if fence == "python":
        return [("python", "\n".join(body))]
    if fence != "sh":
        return [("sh", line[2:]) for line in body if line.startswith("$ ")]
    commands: list[str] = []
    for line in body:
        line = re.sub(r"\s{2,}#.*$", "", line)
        if commands and (line.startswith(" ") or commands[-1].endswith("\\")):
            commands[-1] = commands[-1].removesuffix("\\").rstrip() + " " + line.strip()
        elif line.strip():
            commands.append(line.strip())
    return [("sh", c) for c in commands]


def runnable(command: str) -> str | None:
    """The command to run for one the docs show (None: not run), with a
    console script as ``python -m`` and an install before ``&&`` left out."""
    if "[--" in command or any(skip in command for skip in NOT_RUN):
        return None
    if "pip install" in command:
        _, _, command = command.partition("&& ")
        if not command:
            return None
    first, _, rest = command.partition(" ")
    if first in SCRIPTS:
        command = f"python -m picogpt2.{SCRIPTS[first]} {rest}"
    return command.replace("python ", f"{sys.executable} ", 1) if command.startswith(
        "python ") else command.replace("| python ", f"| {sys.executable} ")  # fmt: skip


@pytest.fixture(scope="module")
def sandbox(real_dir, tmp_path_factory):
    """A folder to run the docs' commands in: GPT-2 "124M" in its models
    folder (a tiny model with the real vocabulary, so the docs' ids mean
    what they say), a transformers folder at ~/models/gpt2-finetune, an
    llm.c file, a candidate's dump, and the inputs the commands name."""
    root = tmp_path_factory.mktemp("docs")
    model = make_tiny_model(root / "weights" / "124M", n_vocab=50257, n_ctx=128, n_embd=16)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(real_dir / name, model / name)
    converted(model)
    for fmt, out in (("hf", root / "home" / "models" / "gpt2-finetune"),
                     ("llmc", root / "gpt2_124M.bin")):  # fmt: skip
        r = run("export", str(model), "--to", fmt, str(out))
        assert r.returncode == 0, text(r.stderr)
    r = run("dump", "--text", "Hello my name is", "--detail", "--out", str(root / "mine.npz"),
            "--model-size", str(model))  # yours: a candidate to compare  # fmt: skip
    assert r.returncode == 0, text(r.stderr)
    (root / "corpus.txt").write_text("Hello world\nGPT-2 in NumPy\n")
    (root / "book.txt").write_text("It was the best of times, it was the worst of times. " * 20)
    docs = [{"id": i, "text": f"Document {i}: the quick brown fox."} for i in range(5)]
    (root / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_every_command_the_docs_show_runs_as_written(doc, sandbox, tmp_path):
    here = tmp_path / "here"
    shutil.copytree(sandbox, here)
    env = {**os.environ, "PICOGPT2_MODELS_DIR": str(here / "weights"), "HOME": str(here / "home"),
           "PICOGPT2_BASE_URL": "http://127.0.0.1:9/never-fetched"}  # fmt: skip
    for kind, what in shown(doc):
        if kind == "python":
            args = [sys.executable, "-c", what]
        else:
            command = runnable(what)
            if command is None:
                continue
            args = ["bash", "-c", command]
        r = subprocess.run(args, cwd=here, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=120)  # fmt: skip
        err = text(r.stderr)
        # compare's exit status 1 is its verdict (the docs' example has a bug in it).
        allowed = (0, 1) if "picogpt2.compare" in what else (0,)
        assert r.returncode in allowed and "Traceback" not in err, f"{doc.name}: {what}\n{err}"


def test_every_command_the_docs_show_is_run_or_said_why_not():
    shown_commands = [c for doc in DOCUMENTS for kind, c in shown(doc) if kind == "sh"]
    not_run = [c for c in shown_commands if runnable(c) is None]
    synopses = [c for c in not_run if "[--" in c]
    assert all(any(skip in c for skip in NOT_RUN) for c in not_run if c not in synopses)
    assert len(shown_commands) - len(not_run) >= 30  # the docs' examples, run above
    assert all(any(skip in c for c in shown_commands) for skip in NOT_RUN)  # no stale reason


def anchors(doc: Path) -> set[str]:
    """The anchors of a Markdown file's headings, as GitHub makes them."""
    titles = re.findall(r"^#+ (.+)$", doc.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", t.lower()).replace(" ", "-") for t in titles}


def test_every_file_the_docs_name_exists():
    root = DOCS.parent
    for doc in DOCUMENTS:
        for path in re.findall(
            r"\b((?:picogpt2|tests|benchmarks)/[\w/]+\.(?:py|c|md))", doc.read_text()
        ):
            assert (root / path).exists(), f"{doc.name}: {path}"


def test_every_link_between_the_docs_lands():
    for doc in DOCUMENTS + [DOCS.parent / "weights" / "README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), f"{doc.name}: {target}"
            assert not anchor or anchor in anchors(linked), f"{doc.name}: {target}"


if __name__ == "__main__":  # print the tables, to paste into the docs
    print("\n".join(rows()), "\n\n" + "\n".join(key_rows()))
