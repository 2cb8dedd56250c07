"""Dump every activation of one forward pass, for people testing their own
GPT-2 layer by layer (and ``compare`` to check theirs against it).

    python -m picogpt2.dump --text "Hello my name is" --out ref.npz
    python -m picogpt2.dump --ids 15496,616,1438,318 --dtype float64 --detail --out ref64.npz
    python -m picogpt2.dump --text "Hello" --generate 20 --out ref.safetensors
    python -m picogpt2.dump --text "Hello" --detail --format npy-dir --out ref/

Keys (``activations.py`` says where in the math each is taken): ids int64
[n]; logits [n, n_vocab]; hidden [n_layer+1, n, n_embd] (the residual
stream: hidden[0] = token + position embeddings, hidden[i] = output of
block i-1, before any final norm); ln_f [n, n_embd]; with --attn, attn
[n_layer, n_head, n, n]; with --detail the inside of every block; with
--generate N the ids chosen and their log-probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: python picogpt2/dump.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2.activations import BLOCK, GENERATION  # noqa: E402
from picogpt2.atomic import atomic_folder, atomic_write  # noqa: E402
from picogpt2.cli import (  # noqa: E402
    Parser,
    add_model_arguments,
    add_sampling_arguments,
    check_model_argument,
    model_options,
    prog_name,
    run_cli,
)
from picogpt2.errors import InputError  # noqa: E402
from picogpt2.generation import Settings  # noqa: E402
from picogpt2.gpt2 import log_softmax  # noqa: E402
from picogpt2.model import DTYPES, GPT2, load_model  # noqa: E402
from picogpt2.status import status  # noqa: E402
from picogpt2.textio import argument_text, parse_ids  # noqa: E402
from picogpt2.weights import write_safetensors  # noqa: E402

FORMATS = ("npz", "safetensors", "npy-dir")
TOP = 5  # the most likely ids recorded per generated token


def output_format(out: Path, given: str | None) -> str:
    """--format, or what --out's name says: .npz, .safetensors, or a folder."""
    if given:
        return given
    if out.suffix in (".npz", ".safetensors"):
        return out.suffix[1:]
    if not out.suffix:
        return "npy-dir"
    raise InputError(f"--out {out}: name a .npz or .safetensors file or a folder, or give --format")


def save(out: Path, arrays: dict[str, np.ndarray], fmt: str, metadata: dict[str, str]) -> None:
    """Write atomically: a half-written dump never takes the final name."""
    if fmt == "safetensors":
        write_safetensors(out, {k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata)
    elif fmt == "npz":
        with atomic_write(out) as f:
            np.savez(f, **arrays)
    else:
        save_folder(out, arrays, metadata)


def save_folder(out: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """KEY.npy for every key, and metadata.json, in a new folder ``out``."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} exists and is not an empty folder: name a new one")
    with atomic_folder(out) as folder:
        for key, array in arrays.items():
            np.save(folder / f"{key}.npy", array, allow_pickle=False)
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")


def generation_record(model: GPT2, ids: list[int], n_tokens: int, sampling: dict) -> dict:
    """Decode ``n_tokens`` ids (past <|endoftext|>: a fixed length), then one
    forward pass over the prompt and them (teacher forcing) gives, per step,
    the chosen id's log-probability, the five most likely ids and the gap
    between the two largest logits: reproducible from the ids alone."""
    n_ctx = model.hparams.n_ctx
    if len(ids) + n_tokens - 1 > n_ctx:
        raise InputError(
            f"--generate {n_tokens}: the prompt ({len(ids)} tokens) and the new ids must fit in "
            f"the context of {n_ctx}"
        )
    new = model.generate(ids, n_tokens, ignore_eot=True, **sampling)
    logits = model.logits(ids + new[:-1])[len(ids) - 1 :].astype(np.float64)  # [N, n_vocab]
    logprobs = log_softmax(logits)
    best = np.argsort(-logits, axis=-1, kind="stable")[:, :TOP]
    chosen = np.asarray(new, dtype=np.int64)
    two = np.take_along_axis(logits, best[:, :2], axis=-1)
    return {
        "gen_ids": chosen,
        "gen_logprob": logprobs[np.arange(len(new)), chosen],
        "gen_top_ids": best.astype(np.int64),
        "gen_top_logprobs": np.take_along_axis(logprobs, best, axis=-1),
        "gen_top_logits": np.take_along_axis(logits, best, axis=-1).astype(model.dtype),
        "gen_gap": two[:, 0] - two[:, 1],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("dump"),
        description="Write ids, logits, every hidden state and ln_f of one forward pass (with "
        "--attn the attention probabilities, with --detail the inside of every block, with "
        "--generate N a decoding's per-step log-probabilities) to a file or folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="input text, encoded with GPT-2's encoder")
    source.add_argument("--ids", help="input token ids, comma-separated")
    add_model_arguments(parser)
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="float64 runs the whole pass in float64 (default: float32)",
    )
    parser.add_argument("--attn", action="store_true", help="also dump attention probabilities")
    parser.add_argument(
        "--detail",
        action="store_true",
        help=f"also dump the inside of every block: {', '.join(k.name for k in BLOCK)}",
    )
    parser.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="also decode N tokens (greedy, or with the sampling options) and record per "
        f"step: {', '.join(GENERATION)}",
    )
    add_sampling_arguments(parser)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="npz, safetensors, or npy-dir (a folder of KEY.npy); default: from --out's name",
    )
    parser.add_argument("--out", required=True, type=Path, help="FILE.npz, FILE.safetensors or DIR")
    return parser


def dump(args: argparse.Namespace) -> int:
    check_model_argument(args)
    fmt = output_format(args.out, args.format)
    ids = parse_ids(args.ids, "--ids") if args.ids is not None else None
    if ids == []:
        raise InputError("--ids is empty")
    if args.text is not None and not args.text:
        raise InputError("--text is empty")
    if args.generate < 0:
        raise InputError(f"--generate must be >= 0, got {args.generate}")
    sampling = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
    }
    Settings(**sampling).check()
    model = load_model(**model_options(args), dtype=args.dtype)
    if ids is None:
        ids = model.encoder.encode(argument_text(args.text, "--text"))
    arrays = model.trace(ids, attn=args.attn, detail=args.detail)
    if args.generate:
        arrays |= generation_record(model, ids, args.generate, {**sampling, "seed": args.seed})
    metadata = {"format": "picogpt2-dump", "model": args.model_size, "dtype": args.dtype}
    save(args.out, arrays, fmt, metadata)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
    status(f"wrote {args.out} ({fmt}, {args.dtype}): {shapes}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: dump(args), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
