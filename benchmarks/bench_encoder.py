"""Encoder throughput: picogpt2 vs tiktoken (and transformers' fast tokenizer
when installed), side by side, single-threaded, on text every Python has:
English prose (Python's own reference documentation, ``pydoc_data.topics``)
and code (the standard library's ``*.py`` files).

    python benchmarks/bench_encoder.py [--vocab-dir ../shared/gpt2-124M-real]

Prints MB/s (median of --repeats runs, UTF-8 bytes) and the ratio to tiktoken:
warm (picogpt2's piece cache filled by a first pass, as in steady use) and
cold (the cache emptied before each run: every piece merged afresh). Then
the seconds one long piece takes (a run of random letters with no space,
as in a base64 blob or a minified URL: BPE's worst case).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from picogpt2.encoder import load_encoder  # noqa: E402

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tiktoken single-threaded


def corpora() -> dict[str, str]:
    from pydoc_data.topics import topics

    english = "\n\n".join(topics[k] for k in sorted(topics))
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = "".join(p.read_text(errors="replace") for p in sorted(lib.glob("*.py"))[:120])
    return {"english": english, "code": code}


def median_seconds(fn, arg, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def others(vocab_dir: Path) -> dict:
    """tiktoken's and transformers' fast encoders of the same vocabulary,
    those installed."""
    rivals = {}
    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        ranks = data_gym_to_mergeable_bpe_ranks(
            str(vocab_dir / "vocab.bpe"), str(vocab_dir / "encoder.json")
        )
        tk = tiktoken.Encoding(
            "gpt2",
            pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
            mergeable_ranks=ranks,
            special_tokens={},
        )
        rivals["tiktoken"] = tk.encode_ordinary
    except ImportError:
        print("tiktoken not installed: no reference to compare with", file=sys.stderr)
    try:
        from transformers import GPT2TokenizerFast

        hf = GPT2TokenizerFast(
            vocab_file=str(vocab_dir / "encoder.json"),
            merges_file=str(vocab_dir / "vocab.bpe"),
        )
        rivals["transformers-fast"] = lambda text: hf(text)["input_ids"]
    except ImportError:
        pass
    return rivals


def main() -> None:
    default_vocab = Path(__file__).resolve().parents[2] / "shared" / "gpt2-124M-real"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-dir", type=Path, default=default_vocab)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--pieces",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[5_000, 20_000, 200_000],
        help="letters in the long pieces timed, comma-separated",
    )
    args = parser.parse_args()

    ours = load_encoder(args.vocab_dir)
    rivals = {"picogpt2": lambda text: ours.encode(text), **others(args.vocab_dir)}

    def cold(text: str) -> list[int]:
        ours._cache.clear()  # every piece merged afresh
        return ours.encode(text)

    print(f"{'corpus':8} {'MB':>6} {'encoder':18} {'MB/s':>7} {'vs tiktoken':>11}")
    for name, text in corpora().items():
        size = len(text.encode("utf-8"))
        speeds = {}
        for label, encode in {**rivals, "picogpt2 (cold)": cold}.items():
            encode(text)  # warm caches, as in steady use
            speeds[label] = size / median_seconds(encode, text, args.repeats) / 1e6
        for label, speed in speeds.items():
            ratio = f"{speed / speeds['tiktoken']:.2f}x" if "tiktoken" in speeds else "-"
            print(f"{name:8} {size / 1e6:6.2f} {label:18} {speed:7.2f} {ratio:>11}")
    print(f"\n{'one piece':>12} {'encoder':18} {'seconds':>8}")
    rng = random.Random(0)
    by_piece = {**rivals, "picogpt2": cold}  # a piece is merged once: cold is the cost
    for n in args.pieces:
        piece = "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
        for label, encode in by_piece.items():
            print(f"{n:>12,} {label:18} {median_seconds(encode, piece, 3):8.3f}")


if __name__ == "__main__":
    main()
