"""The NumPy backend's allocator setting: temporaries freed by one forward
pass are reused by the next instead of being faulted in afresh."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Rounds of four 1.5 MB temporaries (an MLP activation's size for 128 tokens
# of 124M), all freed together, as a forward pass does.
CHURN = """
import resource, sys
import numpy as np
from picogpt2.backend import get_backend, keep_freed_memory
asked = False
if sys.argv[1] == "numpy":
    get_backend("numpy")
    asked = keep_freed_memory()  # cached: reports what get_backend did
x = np.ones((128, 3072), np.float32)
def round():
    a = x * x; b = a * x; c = b + x; d = c * x
for _ in range(2):
    round()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round()
print(int(asked), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def page_faults(backend: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, backend], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_numpy_backend_keeps_freed_memory_for_the_next_pass():
    from picogpt2.backend import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("this C library has no mallopt")
    asked, tuned = page_faults("numpy")
    _, untuned = page_faults("none")
    assert asked
    # 20 rounds of 6 MB are 30,000 pages: all faulted anew without the setting.
    assert untuned > 10_000
    assert tuned < 500
