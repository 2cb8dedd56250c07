"""What the README states about the files is what the code does: its table
of every tensor in every format is rendered here from the code's own
mappings (the schema, transformers' names, llm.c's layout) and must match
the README's line for line."""

from pathlib import Path

from picogpt2.hparams import HParams
from picogpt2.weights.formats import llmc
from picogpt2.weights.formats.transformers import hf_name
from picogpt2.weights.params import block_schema, schema

README = Path(__file__).resolve().parents[1] / "README.md"
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
        lines.append(
            f"| {WHAT[t.module]} | `{name}` {dims(t.shape)} | "
            f"`{tree_path(t.module, t.leaf, t.layer)}` {dims(t.tree_shape)} | "
            f"`{theirs}` {dims(t.tree_shape)} | {where[t.name]} |"
        )
    return lines


def test_the_readmes_tensor_table_is_the_codes():
    readme = README.read_text(encoding="utf-8").splitlines()
    table = rows()
    assert all(row in readme for row in table), "\n".join(r for r in table if r not in readme)
    start = readme.index(table[0])
    assert readme[start : start + len(table)] == table  # in this order, nothing between


if __name__ == "__main__":  # print the table, to paste into the README
    print("\n".join(rows()))
