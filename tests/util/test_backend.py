"""The allocator setting: temporaries freed by one forward pass are reused by
the next instead of being faulted in afresh, and it is made only where
``load_model`` asks (never on import or by choosing a backend)."""

import subprocess
import sys
from pathlib import Path

import pytest
from tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]

# Loads a model as the case says, then counts page faults over rounds of
# four 1.5 MB temporaries (an MLP activation's size for 128 tokens of 124M),
# all freed together, as a forward pass does.
CHURN = """
import resource, sys
import numpy as np
import picogpt2
from picogpt2.util.backend import get_backend, tune_malloc
case, models = sys.argv[1], sys.argv[2]
get_backend("numpy")
if case == "load_model":
    picogpt2.load_model("tiny", models)
elif case == "opt_out":
    picogpt2.load_model("tiny", models, keep_freed_memory=False)
x = np.ones((128, 3072), np.float32)
def round():
    a = x * x; b = a * x; c = b + x; d = c * x
for _ in range(2):
    round()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round()
made = tune_malloc.cache_info().currsize == 1  # tune_malloc was called
print(int(made), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny")
    return root


def page_faults(case: str, models: Path) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, case, str(models)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_load_model_keeps_freed_memory_for_the_next_pass(models):
    from picogpt2.util.backend import tune_malloc

    if not tune_malloc():
        pytest.skip("this C library has no mallopt")
    made, tuned = page_faults("load_model", models)
    assert made
    # 20 rounds of 6 MB are 30,000 pages: all faulted anew without the setting.
    assert tuned < 500


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
@pytest.mark.parametrize("case", ["import_only", "opt_out"])
def test_nothing_else_changes_the_allocator(models, case):
    # Importing picogpt2, choosing the NumPy backend, or load_model with
    # keep_freed_memory=False leaves the C library as it was.
    made, untuned = page_faults(case, models)
    assert not made
    assert untuned > 10_000
