"""Model speed and memory: picogpt2 vs transformers (PyTorch eager, KV
cache), side by side in one run, batch 1, float32, random weights with the
real shapes (speed does not depend on the values).

    python benchmarks/bench_model.py [--sizes 124M,1558M] [--backend numpy]

Prints, per size: decode tokens/s (new tokens after a 16-token prompt),
prefill of 128 tokens in ms, and for picogpt2 also the memory-bandwidth bound
(weights bytes / measured read bandwidth), import + load + first logits, and
peak RSS while generating, each in a fresh process. Medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from picogpt2.download import SIZES, expected_hparams  # noqa: E402
from picogpt2.weights import WEIGHTS_FILE, write_safetensors  # noqa: E402

PROMPT, N_DECODE, N_PREFILL = 16, 64, 128


def random_model(models_dir: Path, size: str) -> str:
    """A folder of random weights with ``size``'s real shapes (written once)."""
    name = f"{size}-random"
    folder = models_dir / name
    if (folder / WEIGHTS_FILE).is_file():
        return name
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_tensors, vocab_files

    h = expected_hparams(size)
    tensors = tiny_tensors(h, seed=0, scale=0.02)
    write_safetensors(folder / WEIGHTS_FILE, tensors, {"format": "picogpt2-random"})
    (folder / "hparams.json").write_text(json.dumps(h))
    encoder, bpe = vocab_files()
    (folder / "encoder.json").write_text(json.dumps(encoder))
    (folder / "vocab.bpe").write_text(bpe)
    return name


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth_gbs(n_bytes: int = 1 << 29) -> float:
    """Read bandwidth as decoding sees it: a matrix-vector product (BLAS,
    all threads) over a matrix as large as 124M's weights."""
    matrix = np.ones((n_bytes // 4096, 1024), np.float32)
    vector = np.ones(1024, np.float32)
    return n_bytes / median_time(lambda: matrix @ vector, 5) / 1e9


def fresh_process_figures(models_dir: Path, name: str, backend: str) -> tuple[float, float]:
    """(seconds for import + load + first logits, peak RSS GB while generating)."""
    code = f"""
import sys, time
t = time.perf_counter()
import picogpt2
m = picogpt2.load_model({name!r}, {str(models_dir)!r}, backend={backend!r}, download=False)
m.logits([1, 2, 3])
print(time.perf_counter() - t)
m.generate(list(range({PROMPT})), {N_DECODE})
# VmHWM, not ru_maxrss: the latter survives exec and reports the parent's size.
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) / 1e6)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def bench_ours(models_dir: Path, name: str, backend: str, repeats: int) -> dict[str, float]:
    import picogpt2

    model = picogpt2.load_model(name, models_dir, backend=backend, download=False)
    prompt = list(range(PROMPT))
    model.generate(prompt, 4)  # warm up
    decode = median_time(lambda: model.generate(prompt, N_DECODE + 1), repeats)
    first = median_time(lambda: model.generate(prompt, 1), repeats)
    prefill_ids = list(range(N_PREFILL))
    prefill = median_time(lambda: model.generate(prefill_ids, 1), repeats)
    load_s, rss_gb = fresh_process_figures(models_dir, name, backend)
    return {
        "decode_tps": N_DECODE / (decode - first),
        "prefill_ms": prefill * 1e3,
        "load_s": load_s,
        "rss_gb": rss_gb,
    }


def bench_transformers(models_dir: Path, name: str, repeats: int) -> dict[str, float] | None:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    from test_oracle_transformers import hf_model

    import picogpt2

    ours = picogpt2.load_model(name, models_dir, download=False)
    model = hf_model(ours, torch.float32)
    del ours
    model.generation_config.eos_token_id = None
    prompt = torch.arange(PROMPT)[None]
    prefill_ids = torch.arange(N_PREFILL)[None]

    def generate(ids, n):
        with torch.no_grad():
            model.generate(
                ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                use_cache=True,
            )

    generate(prompt, 4)
    decode = median_time(lambda: generate(prompt, N_DECODE + 1), repeats)
    first = median_time(lambda: generate(prompt, 1), repeats)
    prefill = median_time(lambda: generate(prefill_ids, 1), repeats)
    return {"decode_tps": N_DECODE / (decode - first), "prefill_ms": prefill * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="124M")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))

    bandwidth = bandwidth_gbs()
    print(
        f"gemv read bandwidth: {bandwidth:.1f} GB/s; {os.cpu_count()} CPUs; decode = "
        f"{N_DECODE} tokens after {PROMPT}, timed as T(n+1) - T(1); prefill = {N_PREFILL}"
    )
    header = (
        f"{'size':6} {'impl':13} {'decode tok/s':>12} {'vs hf':>6} {'bw bound':>9} "
        f"{'of bound':>8} {'prefill ms':>10} {'vs hf':>6} {'load s':>7} {'RSS GB':>7}"
    )
    print(header)
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"unknown size {size}")
        name = random_model(args.models_dir, size)
        n_bytes = (args.models_dir / name / WEIGHTS_FILE).stat().st_size
        bound = bandwidth * 1e9 / n_bytes
        ours = bench_ours(args.models_dir, name, args.backend, args.repeats)
        hf = bench_transformers(args.models_dir, name, args.repeats)
        if hf:
            print(
                f"{size:6} {'transformers':13} {hf['decode_tps']:12.1f} {'1.00':>6} {'':9} "
                f"{'':8} {hf['prefill_ms']:10.1f} {'1.00':>6}"
            )
        d_ratio = f"{ours['decode_tps'] / hf['decode_tps']:.2f}" if hf else "-"
        p_ratio = f"{ours['prefill_ms'] / hf['prefill_ms']:.2f}" if hf else "-"
        print(
            f"{size:6} {'picogpt2':13} {ours['decode_tps']:12.1f} {d_ratio:>6} {bound:9.1f} "
            f"{ours['decode_tps'] / bound:8.0%} {ours['prefill_ms']:10.1f} {p_ratio:>6} "
            f"{ours['load_s']:7.2f} {ours['rss_gb']:7.2f}"
        )


if __name__ == "__main__":
    main()
