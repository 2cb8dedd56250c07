"""The parameter schema: every tensor of a GPT-2, once.

For given hyperparameters, ``schema`` lists each tensor with its name in
OpenAI's checkpoint (``model/h3/attn/c_attn/w``), its shape there
([1, n_embd, 3*n_embd]: linear weights are [1, in, out], as OpenAI stored
them) and its place in the tree the forward pass reads (``blocks[3]["attn"]
["c_attn"]["w"]``, [n_embd, 3*n_embd]). Every other spelling is derived
from it: transformers' names (``formats/transformers.py``), llm.c's layout
(``formats/llmc.py``), the fixture's draw order and the test helpers.

    model/wte                [n_vocab, n_embd]     token embeddings; the output head too
    model/wpe                [n_ctx, n_embd]       position embeddings
    model/ln_f/{g,b}         [n_embd]              the final layer norm
    model/h{i}/ln_1/{g,b}    [n_embd]              block i: layer norm before attention
    model/h{i}/ln_2/{g,b}    [n_embd]              layer norm before the MLP
    model/h{i}/attn/c_attn/{w,b}  [1, n_embd, 3*n_embd], [3*n_embd]   q, k, v in one
    model/h{i}/attn/c_proj/{w,b}  [1, n_embd, n_embd], [n_embd]       attention output
    model/h{i}/mlp/c_fc/{w,b}     [1, n_embd, 4*n_embd], [4*n_embd]   MLP expansion
    model/h{i}/mlp/c_proj/{w,b}   [1, 4*n_embd, n_embd], [n_embd]     MLP projection
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picogpt2.gpt2 import Params
from picogpt2.hparams import FIELDS, HParams
from picogpt2.util.errors import PicoGPT2Error, WeightsError
from picogpt2.util.textio import parse_json

HPARAMS_FILE = "hparams.json"


class HParamsError(PicoGPT2Error, ValueError):
    """``hparams.json`` is missing, unreadable or not GPT-2 hyperparameters."""


@dataclass(frozen=True)
class Tensor:
    """One parameter. ``module`` is its path below the model or its block
    (``"attn/c_attn"``), ``leaf`` what it is there: ``w`` or ``b`` of a
    linear layer, ``g`` or ``b`` of a layer norm, or ``""`` for an
    embedding; ``layer`` is its block, None outside the blocks."""

    module: str
    leaf: str
    layer: int | None
    shape: tuple[int, ...]  # as stored in OpenAI's checkpoint

    @property
    def name(self) -> str:
        """Its name in OpenAI's checkpoint: ``model/h3/attn/c_attn/w``."""
        block = "" if self.layer is None else f"h{self.layer}/"
        return f"model/{block}{self.module}" + (f"/{self.leaf}" if self.leaf else "")

    @property
    def tree_shape(self) -> tuple[int, ...]:
        """Its shape in the tree: a linear weight without OpenAI's leading 1."""
        return self.shape[1:] if self.leaf == "w" else self.shape


def block_schema(h: HParams, layer: int) -> list[Tensor]:
    """Block ``layer``'s tensors, in the checkpoint's order."""
    e = h.n_embd
    linears = [("attn/c_attn", e, 3 * e), ("attn/c_proj", e, e),
               ("mlp/c_fc", e, 4 * e), ("mlp/c_proj", 4 * e, e)]  # fmt: skip
    tensors = [Tensor(norm, leaf, layer, (e,)) for norm in ("ln_1", "ln_2") for leaf in "gb"]
    for module, n_in, n_out in linears:
        tensors += [Tensor(module, "w", layer, (1, n_in, n_out)),
                    Tensor(module, "b", layer, (n_out,))]  # fmt: skip
    return tensors


def schema(h: HParams) -> list[Tensor]:
    """Every tensor of a GPT-2 with these hyperparameters: the embeddings,
    the final layer norm, then each block's (the fixture draws its weights
    in this order)."""
    e = h.n_embd
    tensors = [Tensor("wte", "", None, (h.n_vocab, e)), Tensor("wpe", "", None, (h.n_ctx, e)),
               Tensor("ln_f", "g", None, (e,)), Tensor("ln_f", "b", None, (e,))]  # fmt: skip
    for i in range(h.n_layer):
        tensors += block_schema(h, i)
    return tensors


def tensor_shapes(h: HParams) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape, for every tensor of ``schema``."""
    return {t.name: t.shape for t in schema(h)}


def parameter_count(h: HParams) -> int:
    """How many numbers ``schema(h)`` holds, in closed form (nothing built)."""
    e = h.n_embd
    per_block = 12 * e * e + 13 * e  # c_attn, attn c_proj, c_fc, mlp c_proj, two norms
    return (h.n_vocab + h.n_ctx) * e + 2 * e + h.n_layer * per_block


def mismatch(hparams: HParams, where: Path) -> str:
    sizes = ", ".join(f"{k} {v}" for k, v in hparams.as_dict().items())
    return f"the hyperparameters of {where} ({sizes}) do not match its weights"


def check_layer_count(hparams: HParams, n_tensors: int, where: Path) -> None:
    """Sizes no file could hold (an ``n_layer`` of 10**12) are refused
    before the schema is listed: a block is 16 tensors."""
    if hparams.n_layer > n_tensors:
        what = f"{hparams.n_layer:,} blocks, in {n_tensors} tensors"
        raise WeightsError(f"{mismatch(hparams, where)}: {what}")


# A tensor's shape and dtype (NumPy's name: "float32", "bfloat16", "int64"),
# as a file's header says.
Shapes = dict[str, tuple[tuple[int, ...], str]]


def check_shapes(shapes: Shapes, hparams: HParams, where: Path) -> None:
    """The weights are exactly the tensors the hyperparameters describe: no
    block missing or left over, every shape as its sizes say, floats."""
    check_layer_count(hparams, len(shapes), where)
    expected = tensor_shapes(hparams)
    missing = [name for name in expected if name not in shapes]
    extra = sorted(shapes.keys() - expected.keys())
    problem = f"{missing[0]} is missing" if missing else f"{extra[0]} is left over" if extra else ""
    for name, shape in expected.items():
        if problem:
            break
        actual, dtype = shapes[name]
        if actual != shape:
            problem = f"{name} is {list(actual)}, where they need {list(shape)}"
        elif not dtype.startswith(("float", "bfloat")):
            problem = f"{name} holds {dtype}, not floats"
    if problem:
        raise WeightsError(f"{mismatch(hparams, where)}: {problem}")


def check_tensors(tensors: dict[str, np.ndarray], hparams: HParams, where: Path) -> None:
    """``check_shapes`` of arrays."""
    shapes = {name: (tuple(a.shape), a.dtype.name) for name, a in tensors.items()}
    check_shapes(shapes, hparams, where)


def params_from_tensors(tensors: dict[str, np.ndarray], hparams: HParams) -> Params:
    """The checkpoint's flat names -> the tree the model reads, e.g.
    ``model/h3/attn/c_attn/w`` [1, n_embd, 3*n_embd] -> ``blocks[3]["attn"]
    ["c_attn"]["w"]`` [n_embd, 3*n_embd] (a view: nothing is copied)."""
    params: Params = {"blocks": [{} for _ in range(hparams.n_layer)]}
    for t in schema(hparams):
        node = params if t.layer is None else params["blocks"][t.layer]
        *modules, last = t.module.split("/") + ([t.leaf] if t.leaf else [])
        for module in modules:
            node = node.setdefault(module, {})
        node[last] = tensors[t.name].reshape(t.tree_shape)
    return params


def map_params(params: Params, fn: Callable[[np.ndarray], np.ndarray]) -> Params:
    """Apply ``fn`` to every array of the tree."""
    if isinstance(params, dict):
        return {k: map_params(v, fn) for k, v in params.items()}
    if isinstance(params, list):
        return [map_params(v, fn) for v in params]
    return fn(params)


def parse_hparams(values: object, source: str) -> HParams:
    """``HParams`` from a parsed ``hparams.json``; ``source`` names it in errors.
    Every field must be a positive integer and ``n_head`` must divide ``n_embd``."""
    if not isinstance(values, dict):
        raise HParamsError(f"{source}: expected a JSON object with {', '.join(FIELDS)}")
    missing = [k for k in FIELDS if k not in values]
    if missing:
        raise HParamsError(f"{source}: missing {', '.join(missing)}")
    for key in FIELDS:
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HParamsError(f"{source}: {key} must be a positive integer, got {value!r}")
    hparams = HParams(**{k: values[k] for k in FIELDS})
    if hparams.n_embd % hparams.n_head:
        raise HParamsError(
            f"{source}: n_head {hparams.n_head} does not divide n_embd {hparams.n_embd}"
        )
    return hparams


def read_hparams(model_dir: str | Path) -> HParams:
    """The hyperparameters in ``model_dir/hparams.json``."""
    path = Path(model_dir) / HPARAMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HParamsError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HParamsError(f"{path}: cannot read: {e}") from None
    try:
        values = parse_json(text)
    except ValueError as e:
        raise HParamsError(f"{path}: not valid JSON ({e})") from None
    return parse_hparams(values, str(path))


def write_hparams(model_dir: Path, hparams: HParams) -> None:
    """``model_dir/hparams.json``, as OpenAI wrote it."""
    (model_dir / HPARAMS_FILE).write_text(json.dumps(hparams.as_dict()) + "\n", encoding="utf-8")


DIGEST_SAMPLES = 64  # values of each tensor a digest reads, evenly spaced


def weights_digest(
    params: Params, to_numpy: Callable[[np.ndarray], np.ndarray] = np.asarray
) -> str:
    """What identifies a model's weights by their values, cheaply: SHA-256
    over every tensor's place in the tree, its shape, and ``DIGEST_SAMPLES``
    of its values, evenly spaced, as float64. The same weights give the same
    digest on any machine, in any format or dtype they were stored in,
    whatever their files' names and times; other weights (a fine-tune,
    another size) differ in nearly every value, so in the digest too.
    ``to_numpy`` brings a sample back from the backend."""
    digest = hashlib.sha256()

    def visit(node: object, place: str) -> None:
        if isinstance(node, dict):
            for key in sorted(node):
                visit(node[key], f"{place}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                visit(child, f"{place}/{i}")
        else:
            flat = node.reshape(-1)
            sample = to_numpy(flat[:: max(1, flat.size // DIGEST_SAMPLES)][:DIGEST_SAMPLES])
            digest.update(f"{place}:{list(node.shape)}:".encode())
            digest.update(np.asarray(sample, np.float64).tobytes())

    visit(params, "")
    return digest.hexdigest()
