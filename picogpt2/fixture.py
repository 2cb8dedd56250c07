"""A small, deterministic GPT-2 in every format, with its reference outputs:
what a C or Rust implementer starts from, without a 500 MB download.

    python -m picogpt2.fixture fixture/ [--seed 0] [--layers 2 --heads 4 --width 64 --context 48]

The weights come from SplitMix64 (``sampling.SplitMix64``) by a formula any
language can repeat; the vocabulary is GPT-2's real one (50,257 tokens).
The folder's README.md says what every file is.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from picogpt2.activations import RTOL32
from picogpt2.cli.arguments import Parser, add_models_dir_argument, folder_argument, prog_name
from picogpt2.cli.running import run_cli
from picogpt2.encoder import Encoder, load_encoder
from picogpt2.generation import Settings
from picogpt2.hparams import HParams
from picogpt2.model import GPT2
from picogpt2.oracle.dumps import generation_record
from picogpt2.sampling import SplitMix64
from picogpt2.util.atomic import atomic_folder, require_new
from picogpt2.util.backend import NUMPY
from picogpt2.util.errors import InputError
from picogpt2.util.memory import check_fits
from picogpt2.util.status import status
from picogpt2.weights.fetch import DownloadError
from picogpt2.weights.formats import llmc, openai, transformers
from picogpt2.weights.formats.safetensors import write_tensors
from picogpt2.weights.loading import vocabulary_of
from picogpt2.weights.params import (
    map_params,
    parameter_count,
    params_from_tensors,
    parse_hparams,
    schema,
)
from picogpt2.weights.vocabulary import copy_vocabulary

PROMPT = "The quick brown fox jumps over the lazy dog."
N_GENERATE = 16
# Written three times, and held in float64 while the references are made:
# 200M parameters are 2.4 GB on disk and about 3.2 GB in memory.
MAX_PARAMETERS = 200_000_000
SAMPLE_SEEDS = (1, 2, 3)
# fixture --stress: attention scores this large overflow exp in float32 (past
# 88.7) unless the softmax subtracts the row's max first.
STRESS_SCORE = 100.0
SAMPLING = {"temperature": 1.0, "top_k": 40}
TEXTS = [
    "Hello, world!",
    "Grüße aus Köln: 日本語のテキスト, 한국어, русский текст, עברית, العربية.",
    "emoji 🤗 🇫🇷 👨‍👩‍👧 and combining e\u0301",
    "def f(x):\n    return x ** 2  # square\n\n\tindented\r\n",
    "  spaces   and\u00a0no-break\u3000ideographic ",
    "don't DON'T we'Re <|endoftext|> as ordinary text",
    "1234567890 ١٢٣ ½ ⅷ",
]


def fixture_tensors(hparams: HParams, seed: int) -> dict[str, np.ndarray]:
    """Every tensor, in the order of ``params.schema``, each element in
    row-major order taking the next draw u of ``SplitMix64(seed)``:
    ``float32(1 + 0.1 * (2u - 1))`` for a layer norm's gain (``.../g``),
    ``float32(0.1 * (2u - 1))`` for everything else, computed in float64 and
    rounded once to float32."""
    rng, tensors = SplitMix64(seed), {}
    for t in schema(hparams):
        values = 0.1 * (2.0 * rng.uniforms(int(np.prod(t.shape))) - 1.0)
        if t.leaf == "g":
            values = 1.0 + values
        tensors[t.name] = values.astype(np.float32).reshape(t.shape)
    return tensors


def scale_queries_and_keys(hparams: HParams, tensors: dict, factor: float) -> dict:
    """Every c_attn's query and key columns, and their biases, times
    ``factor`` (in float64, rounded once to float32): each attention score
    of the first block grows by factor^2."""
    out = dict(tensors)
    for i in range(hparams.n_layer):
        for leaf in ("w", "b"):
            name = f"model/h{i}/attn/c_attn/{leaf}"
            scaled = tensors[name].astype(np.float64)
            scaled[..., : 2 * hparams.n_embd] *= factor
            out[name] = scaled.astype(np.float32)
    return out


def largest_score(hparams: HParams, tensors: dict, encoder: Encoder, folder: Path) -> float:
    """The largest attention score over the prompt, any block and head."""
    trace = fixture_model(hparams, tensors, encoder, folder).trace(encoder.encode(PROMPT),
                                                                   detail=True)  # fmt: skip
    scores = trace["attn_scores"]
    return float(np.max(np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)))


def stress_factor(hparams: HParams, tensors: dict, encoder: Encoder, folder: Path) -> float:
    """The factor (four significant digits, so that it can be repeated) that
    brings the largest attention score over the prompt to about
    ``STRESS_SCORE``: scores grow as its square in the first block, and
    a few rounds settle the later ones."""
    factor = 1.0
    for _ in range(6):
        top = largest_score(hparams, scale_queries_and_keys(hparams, tensors, factor), encoder,
                            folder)  # fmt: skip
        factor = float(f"{factor * math.sqrt(STRESS_SCORE / top):.4g}")
    return factor


def fixture_model(hparams: HParams, tensors: dict, encoder: Encoder, folder: Path) -> GPT2:
    """The fixture in float64, built in memory (no file written beside it)."""
    params = map_params(params_from_tensors(tensors, hparams), lambda a: NUMPY.upload(a, "f8"))
    return GPT2(hparams, encoder, params, NUMPY, "float64", folder)


def write_formats(out: Path, hparams: HParams, tensors: dict, vocabulary: Path) -> None:
    """The model in OpenAI's, transformers' and llm.c's formats; llm.c's
    file with the vocabulary beside it, where llm.c's users keep it."""
    for fmt, path in ((openai, "openai"), (transformers, "hf"), (llmc, "llmc/model.bin")):
        fmt.write(out / path, hparams, tensors, vocabulary)
    copy_vocabulary(vocabulary, out / "llmc", ("encoder.json", "vocab.bpe"))


def write_references(out: Path, model: GPT2, seed: int) -> dict:
    encoder = model.encoder
    prompt = encoder.encode(PROMPT)
    greedy = generation_record(model, prompt, N_GENERATE, Settings())
    arrays = model.trace(prompt, detail=True) | greedy
    metadata = {"format": "picogpt2-dump", "dtype": "float64", "prompt": PROMPT}
    write_tensors(out / "reference.safetensors", arrays, metadata)
    samples = []
    for s in SAMPLE_SEEDS:
        record = generation_record(model, prompt, N_GENERATE, Settings(**SAMPLING, seed=s))
        samples.append({"seed": s, **SAMPLING, "ids": record["gen_ids"].tolist(),
                        "logprobs": record["gen_logprob"].tolist()})  # fmt: skip
    samples_json = {"prompt": PROMPT, "prompt_ids": prompt, "samples": samples}
    (out / "samples.json").write_text(json.dumps(samples_json, indent=1) + "\n")
    tokens = [{"text": t, "ids": encoder.encode(t)} for t in TEXTS]
    (out / "tokens.json").write_text(json.dumps(tokens, indent=1, ensure_ascii=False) + "\n")
    return {"prompt_ids": prompt, "greedy": arrays["gen_ids"].tolist(), "seed": seed}


def readme(hparams: HParams, seed: int, summary: dict) -> str:
    h = hparams
    stress = summary.get("stress")
    flag = " --stress" if stress else ""
    stressed = (
        ""
        if not stress
        else f"""

**Stressed** (`--stress`): then, in every layer, the first two thirds of
`attn/c_attn/w`'s columns and of `attn/c_attn/b` (the queries and the keys)
are multiplied by {stress[0]:g} in double precision and rounded once to
float32, so that the largest attention score over the prompt is
{stress[1]:.1f}: exp of it overflows float32 (past 88.7), and a softmax
that does not subtract each row's largest score first returns NaN."""
    )
    return f"""# picogpt2 conformance fixture

A small GPT-2 with deterministic weights, in three formats, with its
reference outputs. Made by `python -m picogpt2.fixture OUT --seed {seed} --layers
{h.n_layer} --heads {h.n_head} --width {h.n_embd} --context {h.n_ctx}{flag}`; the same
command writes the same bytes again.

Sizes: n_vocab {h.n_vocab} (GPT-2's real vocabulary), n_ctx {h.n_ctx}, n_embd
{h.n_embd}, n_head {h.n_head}, n_layer {h.n_layer}.

## The model, three times (the same float32 weights)

- `openai/`: OpenAI's layout: `hparams.json`, `encoder.json`, `vocab.bpe`,
  `checkpoint`, `model.ckpt.index`, `model.ckpt.data-00000-of-00001`
  (a TensorFlow checkpoint; names `model/wte`, `model/h0/attn/c_attn/w`
  [1, in, out], ...).
- `hf/`: a transformers folder (`GPT2LMHeadModel.from_pretrained("hf")`):
  `config.json`, `model.safetensors` (Conv1D weights [in, out], the head
  tied to `wte`), `vocab.json`, `merges.txt`.
- `llmc/model.bin`: llm.c's file (magic 20240326, version 3, float32, the
  vocabulary padded to a multiple of 128 with zero rows, linear weights
  [out, in]); `llmc/encoder.json` and `llmc/vocab.bpe` beside it.

## How the weights are made (repeat it in any language)

SplitMix64 seeded with {seed}: state += 0x9E3779B97F4A7C15 (mod 2^64); z =
state; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) *
0x94D049BB133111EB; next = z ^ (z >> 31); u = (next >> 11) * 2^-53. The
tensors take draws in this order: `model/wte`, `model/wpe`, `model/ln_f/g`,
`model/ln_f/b`, then for each layer i: `h{{i}}/ln_1/g`, `ln_1/b`,
`ln_2/g`, `ln_2/b`, `attn/c_attn/w`, `attn/c_attn/b`, `attn/c_proj/w`,
`attn/c_proj/b`, `mlp/c_fc/w`, `mlp/c_fc/b`, `mlp/c_proj/w`, `mlp/c_proj/b`
(OpenAI's shapes, elements in row-major order). A gain (`.../g`) is
float32(1 + 0.1 * (2u - 1)); everything else is float32(0.1 * (2u - 1)),
computed in double precision and rounded once.{stressed}

## Reference outputs (float64)

- `reference.safetensors`: every activation of one forward pass over the
  prompt {PROMPT!r} (ids {summary["prompt_ids"]}), as `python -m
  picogpt2.dump --detail` writes them (`ids`, `hidden`, `ln_1`, `q`, `k`,
  `v`, `attn_scores`, `attn`, `attn_heads`, `attn_out`, `resid_attn`,
  `ln_2`, `mlp_pre`, `mlp_hidden`, `mlp_out`, `ln_f`, `logits`:
  picogpt2's docs/oracle.md documents each), and {N_GENERATE} greedy
  tokens after it with their log-probabilities (`gen_ids`, `gen_logprob`,
  `gen_top_ids`, `gen_top_logprobs`, `gen_top_logits`, `gen_gap`). Greedy
  ids: {summary["greedy"]}.
- `samples.json`: {N_GENERATE} sampled tokens for seeds {list(SAMPLE_SEEDS)} (top-k 40,
  temperature 1, picogpt2's portable sampler), each id with its
  log-probability.
- `tokens.json`: texts in several scripts, and their ids.

## What to hold your implementation to

Compare with `python -m picogpt2.compare reference.safetensors yours.safetensors`
(or a folder of `KEY.npy`). A float32 implementation should agree with
these float64 references to {RTOL32:g} of each tensor's largest magnitude, per
layer; a float64 one to 1e-10. Greedy ids should be equal; where one differs,
`compare` tells a near-tie from a bug (`gen_gap`). Samples need the same
sampler and float64 logits to match bit for bit; in float32 a sample may
leave the reference at a near-tie. Token ids must be equal, always.
"""


def make_fixture(out: Path, hparams: HParams, seed: int, vocabulary: Path, stress: bool) -> None:
    encoder = load_encoder(vocabulary)
    if encoder.n_vocab != hparams.n_vocab:
        raise InputError(f"{vocabulary}: {encoder.n_vocab} tokens, not GPT-2's {hparams.n_vocab}")
    tensors = fixture_tensors(hparams, seed)
    with atomic_folder(out) as folder:
        factor = stress_factor(hparams, tensors, encoder, folder) if stress else None
        if factor is not None:
            tensors = scale_queries_and_keys(hparams, tensors, factor)
        write_formats(folder, hparams, tensors, vocabulary)
        model = fixture_model(hparams, tensors, encoder, folder)
        summary = write_references(folder, model, seed)
        if factor is not None:
            summary["stress"] = (factor, largest_score(hparams, tensors, encoder, folder))
        (folder / "README.md").write_text(readme(hparams, seed, summary))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog_name("fixture"),
        description="Write a small deterministic GPT-2 in OpenAI's, transformers' and llm.c's "
        "formats, with reference activations, generations and token ids.",
    )
    parser.add_argument("out", metavar="OUT", type=Path, help="a new folder")
    parser.add_argument("--seed", type=int, default=0, help="SplitMix64 seed (default: 0)")
    parser.add_argument("--layers", type=int, default=2, help="n_layer (default: 2)")
    parser.add_argument("--heads", type=int, default=4, help="n_head (default: 4)")
    parser.add_argument("--width", type=int, default=64, help="n_embd (default: 64)")
    parser.add_argument(
        "--context",
        type=int,
        default=48,
        help="n_ctx (default: 48, not the width: so that wpe's shape shows its orientation)",
    )
    parser.add_argument(
        "--encoder-dir",
        type=folder_argument,
        default=None,
        help="GPT-2's vocabulary (encoder.json and vocab.bpe; default: 124M's, fetched if "
        "needed, 1.5 MB)",
    )
    parser.add_argument(
        "--stress",
        action="store_true",
        help=f"scale the queries and keys so that attention scores reach about "
        f"{STRESS_SCORE:g}: a softmax that does not subtract the max overflows in float32",
    )
    add_models_dir_argument(parser)
    return parser


def fixture_sizes(args: argparse.Namespace) -> HParams:
    """The sizes asked for, if they make a fixture: small, and able to hold
    the prompt and the generated tokens."""
    values = {"n_vocab": 50257, "n_ctx": args.context, "n_embd": args.width,
              "n_head": args.heads, "n_layer": args.layers}  # fmt: skip
    try:
        hparams = parse_hparams(values, "the fixture's sizes")
    except ValueError as e:
        raise InputError(str(e)) from None
    if hparams.n_ctx < 16 + N_GENERATE:
        raise InputError(f"--context must be >= {16 + N_GENERATE}, got {hparams.n_ctx}")
    if parameter_count(hparams) > MAX_PARAMETERS:
        raise InputError(
            f"these sizes make {parameter_count(hparams):,} parameters; a fixture is a small "
            f"model, at most {MAX_PARAMETERS:,} (124M's shapes fit): for a real model, use "
            "python -m picogpt2.export"
        )
    # float32 weights, their float64 copy, and a writer's copy at a time
    check_fits(20 * parameter_count(hparams), "a fixture of these sizes")
    return hparams


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        hparams = fixture_sizes(args)
        require_new(args.out)
        try:
            vocabulary = vocabulary_of("124M", args.models_dir, args.encoder_dir)
        except DownloadError as e:  # offline: a folder with the vocabulary is the way round
            raise DownloadError(
                f"{e}; or name a folder with GPT-2's vocabulary: --encoder-dir"
            ) from None
        make_fixture(args.out, hparams, args.seed, vocabulary, args.stress)
        status(
            f"wrote {args.out}: a GPT-2 of {hparams.as_dict()} in three formats, with references"
        )
        return 0

    return run_cli(body, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
