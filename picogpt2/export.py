"""Write a model in another format: a transformers folder, an llm.c file,
or OpenAI's TensorFlow layout.

    python -m picogpt2.export 124M --to hf gpt2-hf/
    python -m picogpt2.export 124M --to llmc gpt2_124M.bin
    python -m picogpt2.export my-finetune.bin --to openai my-finetune/ --encoder-dir vocab/

The model is anything picogpt2 loads (a released size, a folder or file in
the models folder, or a path). The weights are written float32, exactly
(a round trip to any format and back is bit-exact). ``OUT`` must not exist
yet; a folder is filled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: python picogpt2/export.py
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from picogpt2 import hf, llmc  # noqa: E402
from picogpt2.atomic import atomic_folder  # noqa: E402
from picogpt2.checkpoint import write_tf_checkpoint  # noqa: E402
from picogpt2.cli import (  # noqa: E402
    Parser,
    add_encoder_dir_argument,
    add_models_dir_argument,
    prog_name,
    run_cli,
)
from picogpt2.encoder import load_encoder, vocabulary_files  # noqa: E402
from picogpt2.errors import InputError  # noqa: E402
from picogpt2.hparams import HPARAMS_FILE, HParams  # noqa: E402
from picogpt2.locations import models_dir  # noqa: E402
from picogpt2.sources import Source, open_source  # noqa: E402
from picogpt2.status import status  # noqa: E402

FORMATS = {
    "hf": "a transformers folder: config.json, model.safetensors, vocab.json, merges.txt",
    "llmc": "an llm.c model file: float32 (version 3), vocabulary padded to a multiple of 128",
    "openai": "OpenAI's layout: hparams.json, encoder.json, vocab.bpe, a TensorFlow checkpoint",
}


def write_openai(
    out: Path, hparams: HParams, tensors: dict[str, np.ndarray], vocabulary: tuple[Path, Path]
) -> None:
    """OpenAI's layout in the folder ``out``: hparams.json, encoder.json and
    vocab.bpe (copied from ``vocabulary``'s two files), a TF checkpoint."""
    (out / HPARAMS_FILE).write_text(json.dumps(hparams.as_dict()) + "\n")
    shutil.copyfile(vocabulary[0], out / "encoder.json")
    shutil.copyfile(vocabulary[1], out / "vocab.bpe")
    write_tf_checkpoint(out / "model.ckpt", {k: v.astype("<f4") for k, v in tensors.items()})


def export(source: Source, fmt: str, out: Path) -> None:
    """Write ``source`` as ``fmt`` into ``out``, a path that must not exist."""
    if out.exists():
        raise InputError(f"{out} exists: name a new file or folder")
    if fmt == "llmc":
        out.parent.mkdir(parents=True, exist_ok=True)
        llmc.write_file(out, source.hparams, source.tensors)
        return
    eot = load_encoder(source.vocabulary).eot_token  # refuses a bad vocabulary before writing
    vocabulary = vocabulary_files(source.vocabulary)
    with atomic_folder(out) as folder:
        if fmt == "hf":
            hf.write_folder(folder, source.hparams, source.tensors, vocabulary, eot)
        else:
            write_openai(folder, source.hparams, source.tensors, vocabulary)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("export"),
        description="Write a model as a transformers folder, an llm.c file or OpenAI's "
        "TensorFlow layout (float32, bit-exact).",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a released size, or any model in --models-dir or at a path (any format)",
    )
    parser.add_argument(
        "--to",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{name}: {what}" for name, what in FORMATS.items()),
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="the new folder (or .bin file)")
    add_models_dir_argument(parser)
    add_encoder_dir_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        if args.out.exists():
            raise InputError(f"{args.out} exists: name a new file or folder")
        source = open_source(args.model, models_dir(args.models_dir),
                             encoder_dir=args.encoder_dir)  # fmt: skip
        export(source, args.to, args.out)
        status(f"wrote {args.out}: {FORMATS[args.to]}")
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
