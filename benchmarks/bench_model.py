"""Model speed and memory: picogpt2 vs transformers (PyTorch eager, KV
cache), batch 1, float32, random weights with the real shapes (speed does not
depend on the values).

    python benchmarks/bench_model.py [--sizes 124M,355M] [--repeats 5]

Both models and a "matmuls only" floor run in one process, round after round
(this machine is shared and noisy, so each round measures all three within
seconds of each other); the table shows medians over the rounds. Figures:
decode tokens/s (new tokens after a 16-token prompt, timed as T(n+1) - T(1)),
prefill of 128 tokens to the first new token in ms, and, in fresh processes,
picogpt2's import + load + first logits and its peak RSS while generating.

"matmuls only" runs just the matrix products of our forward pass (every
weight matrix, then the head for the last position) with NumPy's BLAS: the
least time our forward pass could take on that BLAS, the floor. "of floor"
is the median over rounds of a rate's share of the floor's rate in the
same round (decode tokens/s, prefill 1/ms). Decoding is bound by reading
every weight once per token, prefill by the GEMMs. The default sizes are
124M and 355M (24 blocks, 1024 wide).

"as stored" is picogpt2 generating from the weights as the checkpoint lays
them out, not as generating holds them (picogpt2/weights/layout.py): what
that layout gains, in the same run. "llama.cpp F32", where llama-cpp-python
is installed, is llama.cpp on the
same weights exported to GGUF F32, on every core: its own matrix kernels,
not this BLAS, so its share of the floor can pass 100%.

With --backend cupy, picogpt2 runs on the GPU and transformers on CUDA (the
matmuls-only and llama.cpp rows are for NumPy only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tiny import tiny_tensors, vocab_files  # noqa: E402

from picogpt2.hparams import SIZES  # noqa: E402
from picogpt2.weights.formats.safetensors import WEIGHTS_FILE, write_tensors  # noqa: E402

PROMPT, N_DECODE, N_PREFILL = 16, 64, 128
REAL_VOCAB = ROOT.parent / "shared" / "gpt2-124M-real"


def random_model(models_dir: Path, size: str) -> str:
    """A folder of random weights with ``size``'s real shapes (written once)."""
    name = f"{size}-random"
    folder = models_dir / name
    if (folder / WEIGHTS_FILE).is_file():
        return name
    folder.mkdir(parents=True, exist_ok=True)
    h = SIZES[size].as_dict()
    tensors = tiny_tensors(h, seed=0, scale=0.02)
    write_tensors(folder / WEIGHTS_FILE, tensors, {"format": "picogpt2-random"})
    (folder / "hparams.json").write_text(json.dumps(h))
    if (REAL_VOCAB / "encoder.json").is_file():  # so that the CLI can decode its output
        for file in ("encoder.json", "vocab.bpe"):
            shutil.copyfile(REAL_VOCAB / file, folder / file)
    else:
        encoder, bpe = vocab_files()
        (folder / "encoder.json").write_text(json.dumps(encoder))
        (folder / "vocab.bpe").write_text(bpe)
    return name


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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


class Ours:
    def __init__(self, model):
        self.model = model

    def generate(self, ids: list[int], n: int) -> None:
        self.model.generate(ids, n)


def as_stored(model):
    """``model`` generating from its weights as the checkpoint lays them out
    (before weights/layout.py): what the layout gains, in the same run."""
    model.__dict__["decoding_params"] = model.params  # the cached property, set
    return model


def block_linears(params: dict) -> list[dict]:
    """Every block's linear layers ({"w", "b"}), in the order a forward pass
    multiplies by them: ``c_attn``, ``attn/c_proj``, ``c_fc``, ``mlp/c_proj``."""
    order = (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))
    return [block[part][name] for block in params["blocks"] for part, name in order]


class MatmulsOnly:
    """The matrix products of our forward pass and nothing else, on the
    weights as generating holds them (``decoding_params``)."""

    def __init__(self, model):
        p = model.decoding_params
        self.matrices = [linear["w"] for linear in block_linears(p)]
        self.wte = p["wte"]
        self._ones: dict[tuple[int, int], np.ndarray] = {}

    def ones(self, rows: int, width: int) -> np.ndarray:
        """An input of ``rows`` rows, made once, so that only products are timed."""
        if (rows, width) not in self._ones:
            self._ones[rows, width] = np.ones((rows, width), self.wte.dtype)
        return self._ones[rows, width]

    def products(self, rows: int, head_rows: int) -> None:
        """``rows`` rows times every block's matrices, then ``head_rows`` times the head."""
        for w in self.matrices:
            self.ones(rows, w.shape[0]) @ w
        self.ones(head_rows, self.wte.shape[1]) @ self.wte.T

    def forward(self, n_seq: int) -> None:
        self.products(n_seq, 1)  # the head for the last position, as decoding runs it

    def generate(self, ids: list[int], n: int) -> None:
        self.forward(len(ids))
        for _ in range(n - 1):
            self.forward(1)


class Transformers:
    def __init__(self, model, device: str):
        import torch
        import transformers  # noqa: F401  (ImportError here, not pytest's skip below)

        sys.path.insert(0, str(ROOT / "tests" / "oracle"))
        from test_transformers import hf_model

        self.torch, self.device = torch, device
        self.model = hf_model(model, torch.float32).to(device)
        self.model.generation_config.eos_token_id = None

    def generate(self, ids: list[int], n: int) -> None:
        with self.torch.no_grad():
            self.model.generate(
                self.torch.tensor([ids], device=self.device),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                use_cache=True,
            )
        if self.device == "cuda":
            self.torch.cuda.synchronize()


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on the same weights, exported to GGUF
    F32 by ``python -m picogpt2.export`` (written once beside the random
    model): its own kernels on every core. Decoding feeds fixed ids (speed
    does not depend on them) and reads no logits back."""

    def __init__(self, models_dir: Path, name: str):
        import llama_cpp

        path = models_dir / f"{name}.gguf"
        if not path.is_file():
            subprocess.run([sys.executable, "-m", "picogpt2.export", name, "--models-dir",
                            str(models_dir), "--to", "gguf", str(path)],
                           cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        self.llm = llama_cpp.Llama(str(path), n_ctx=N_PREFILL + N_DECODE + PROMPT,
                                   n_batch=N_PREFILL, n_threads=os.cpu_count(),
                                   verbose=False)  # fmt: skip

    def generate(self, ids: list[int], n: int) -> None:
        self.llm.reset()
        self.llm.eval(ids)
        for i in range(n - 1):
            self.llm.eval([(ids[-1] + 1 + i) % 50000])


def measure_round(impl) -> dict[str, float]:
    prompt, prefill_ids = list(range(PROMPT)), list(range(N_PREFILL))
    first = seconds(lambda: impl.generate(prompt, 1))
    decode = seconds(lambda: impl.generate(prompt, N_DECODE + 1)) - first
    return {
        "decode_tps": N_DECODE / decode,
        "prefill_ms": seconds(lambda: impl.generate(prefill_ids, 1)) * 1e3,
    }


def implementations(models_dir: Path, name: str, backend: str) -> dict[str, object]:
    import picogpt2

    ours = picogpt2.load_model(name, models_dir, backend=backend, download=False)
    impls = {"picogpt2": Ours(ours)}
    if backend == "numpy":
        impls["matmuls only"] = MatmulsOnly(ours)
        impls["as stored"] = Ours(as_stored(picogpt2.load_model(name, models_dir, download=False)))
    try:
        # transformers takes its weights from NumPy arrays (memory-mapped: no copy).
        on_cpu = ours if backend == "numpy" else picogpt2.load_model(name, models_dir)
        impls["transformers"] = Transformers(on_cpu, "cuda" if backend == "cupy" else "cpu")
    except ImportError:
        print("(transformers or torch not installed: no reference)")
    if backend == "numpy":
        try:
            impls["llama.cpp F32"] = LlamaCpp(models_dir, name)
        except ImportError:
            print("(llama-cpp-python not installed: no llama.cpp row)")
    return impls


def median_rounds(impls: dict[str, object], repeats: int) -> dict[str, dict[str, float]]:
    """Every implementation once per round, ``repeats`` rounds; the medians,
    and each one's share of the floor: the median over rounds of its rate
    over the floor's rate in the same round (rates drift between rounds on
    a shared machine; within one they are seconds apart)."""
    for impl in impls.values():
        impl.generate(list(range(PROMPT)), 4)  # warm up
    rounds: dict[str, list[dict[str, float]]] = {key: [] for key in impls}
    for _ in range(repeats):
        for key, impl in impls.items():
            rounds[key].append(measure_round(impl))
    medians = {
        key: {f: statistics.median(r[f] for r in rs) for f in rs[0]} for key, rs in rounds.items()
    }
    if "matmuls only" in rounds:
        for key, rs in rounds.items():
            pairs = list(zip(rs, rounds["matmuls only"], strict=True))
            decode = [r["decode_tps"] / f["decode_tps"] for r, f in pairs]
            prefill = [f["prefill_ms"] / r["prefill_ms"] for r, f in pairs]
            medians[key]["decode_floor"] = statistics.median(decode)
            medians[key]["prefill_floor"] = statistics.median(prefill)
    return medians


def bench_size(models_dir: Path, size: str, backend: str, repeats: int) -> None:
    name = random_model(models_dir, size)
    medians = median_rounds(implementations(models_dir, name, backend), repeats)
    load_s, rss_gb = fresh_process_figures(models_dir, name, backend)
    ref, floor = medians.get("transformers"), medians.get("matmuls only")
    for key in ("transformers", "picogpt2", "as stored", "matmuls only", "llama.cpp F32"):
        if key not in medians:
            continue
        m = medians[key]
        d_floor = f"{m['decode_floor']:.0%}" if floor else "-"
        p_floor = f"{m['prefill_floor']:.0%}" if floor else "-"
        d_ratio = f"{m['decode_tps'] / ref['decode_tps']:.2f}" if ref else "-"
        p_ratio = f"{m['prefill_ms'] / ref['prefill_ms']:.2f}" if ref else "-"
        extra = f"{load_s:7.2f} {rss_gb:7.2f}" if key == "picogpt2" else ""
        row = f"{size:6} {key:13} {m['decode_tps']:12.1f} {d_floor:>8} {d_ratio:>6} "
        print(row + f"{m['prefill_ms']:10.1f} {p_floor:>8} {p_ratio:>6} {extra}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="124M,355M", help="comma-separated, e.g. 124M,1558M")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    for size in sizes:
        if size not in SIZES:
            raise SystemExit(f"unknown size {size}; choose from {', '.join(SIZES)}")
    print(
        f"batch 1, float32; decode = {N_DECODE} tokens after {PROMPT}; prefill = {N_PREFILL} "
        f"tokens; medians of {args.repeats} interleaved rounds"
    )
    print(
        f"{'size':6} {'impl':13} {'decode tok/s':>12} {'of floor':>8} {'vs hf':>6} "
        f"{'prefill ms':>10} {'of floor':>8} {'vs hf':>6} {'load s':>7} {'RSS GB':>7}"
    )
    for size in sizes:
        bench_size(args.models_dir, size, args.backend, args.repeats)


if __name__ == "__main__":
    main()
