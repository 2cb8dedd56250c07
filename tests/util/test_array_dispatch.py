"""The model never leaves the array module it is given: the CuPy path, checked
without a GPU.

CuPy arrays refuse to turn into NumPy arrays implicitly. ``StrictArray`` is a
NumPy array in a wrapper that refuses it too, and that reaches NumPy only
through the dispatch CuPy relies on (``__array_ufunc__``,
``__array_function__``, ``like=``). The whole model runs on it here, so a
line that would silently copy to the host, or call NumPy on a CuPy array,
fails in CI. Every function the model calls is recorded, and checked against
CuPy's namespace where CuPy is installed (it imports without a GPU).
"""

import inspect

import numpy as np
import pytest
from numpy.lib.mixins import NDArrayOperatorsMixin
from tiny import make_tiny_model

from picogpt2.model import GPT2, load_model
from picogpt2.util.backend import Backend
from picogpt2.weights.params import map_params


class StrictArray(NDArrayOperatorsMixin):
    # Every NumPy function and ufunc used: name -> {(n_args, keyword names)}
    called: dict[str, set[tuple[int, tuple[str, ...]]]] = {}

    def __init__(self, array):
        self.array = np.asarray(array)

    def __array__(self, dtype=None, copy=None):
        raise TypeError("implicit conversion to a NumPy array is not allowed (as in CuPy)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        record(name, inputs, kwargs)
        if "out" in kwargs:
            kwargs["out"] = unwrap(kwargs["out"])
        return wrap(getattr(ufunc, method)(*unwrap(inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        record(func.__name__, args, kwargs)
        return wrap(func(*unwrap(args), **unwrap(kwargs)))

    def __getitem__(self, key):
        return wrap(self.array[unwrap(key)])

    def __setitem__(self, key, value):
        self.array[unwrap(key)] = unwrap(value)

    def __len__(self):
        return len(self.array)

    def __int__(self):  # CuPy: a 0-d array to a Python int, one device sync
        return int(self.array)

    def __float__(self):
        return float(self.array)

    def __bool__(self):  # CuPy: a 0-d array to a Python bool, one device sync
        return bool(self.array)

    def astype(self, dtype):
        return wrap(self.array.astype(dtype))

    # CuPy's arrays have these methods too (the decoder calls them).
    def swapaxes(self, a, b):
        return wrap(self.array.swapaxes(a, b))

    def max(self, axis=None, keepdims=False):
        return wrap(self.array.max(axis=axis, keepdims=keepdims))

    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)
    size = property(lambda self: self.array.size)
    T = property(lambda self: wrap(self.array.T))


def record(name, args, kwargs):
    StrictArray.called.setdefault(name, set()).add((len(args), tuple(sorted(kwargs))))


def wrap(x):
    # CuPy returns 0-d arrays where NumPy returns scalars.
    if isinstance(x, np.ndarray | np.generic):
        return StrictArray(x)
    if isinstance(x, tuple | list):
        return type(x)(wrap(v) for v in x)
    return x


def unwrap(x):
    if isinstance(x, StrictArray):
        return x.array
    if isinstance(x, tuple | list):
        return type(x)(unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: unwrap(v) for k, v in x.items()}
    return x


STRICT = Backend("strict", lambda a, dtype: StrictArray(np.asarray(a, dtype=dtype)), unwrap)
IDS = [5, 17, 99, 3, 42, 8]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_model(root / "tiny", n_layer=2, n_head=4, n_embd=32, n_ctx=64, scale=0.3)
    ours = load_model("tiny", root)
    h = ours.hparams
    strict = GPT2(h, ours.encoder, map_params(ours.params, StrictArray), STRICT, "float32", root)
    return ours, strict


def test_logits_are_the_same_numbers_through_dispatch(pair):
    ours, strict = pair
    logits = strict.logits(IDS)
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, ours.logits(IDS))


def test_generation_and_every_sampler_run_through_dispatch(pair):
    ours, strict = pair
    assert strict.generate(IDS, 12) == ours.generate(IDS, 12)
    kwargs = {"temperature": 0.9, "top_k": 20, "top_p": 0.9, "seed": 7}
    assert strict.generate(IDS, 12, **kwargs) == ours.generate(IDS, 12, **kwargs)


def test_trace_runs_through_dispatch(pair):
    ours, strict = pair
    mine, theirs = strict.trace(IDS, attn=True), ours.trace(IDS, attn=True)
    assert mine.keys() == theirs.keys()
    for key in mine:
        np.testing.assert_array_equal(mine[key], theirs[key])


def test_every_call_exists_in_cupy_with_those_arguments(pair):
    cupy = pytest.importorskip("cupy")
    ours, strict = pair
    StrictArray.called.clear()
    strict.generate(IDS, 4)
    strict.generate(IDS, 4, top_k=5, top_p=0.5, seed=1)
    strict.generate_many(IDS, 70, 3, temperature=3.0, repetition_penalty=1.2, seed=1)
    strict.trace(IDS, attn=True)
    assert {
        "matmul",
        "tanh",
        "tri",
        "empty",
        "sort",
        "searchsorted",
        "partition",
        "flatnonzero",
        "repeat",
    } <= StrictArray.called.keys()
    assert_cupy_takes(cupy, StrictArray.called)


def assert_cupy_takes(cupy, called):
    """Each recorded call exists in CuPy and binds to its signature."""
    for name, calls in called.items():
        if "." in name:  # a ufunc's method: CuPy's reduce takes add and multiply alone
            assert name.split(".")[1] != "reduce" or name in ("add.reduce", "multiply.reduce")
        function = getattr(cupy, name.split(".")[0], None)
        assert function is not None, f"cupy.{name} does not exist in CuPy {cupy.__version__}"
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # a compiled ufunc: any arguments a ufunc takes
            continue
        for n_args, keywords in calls:
            signature.bind(*[None] * n_args, **dict.fromkeys(keywords))


@pytest.mark.parametrize(
    "settings",
    [{"top_k": 40}, {"temperature": 0.8}, {"top_k": 50, "top_p": 0.9, "repetition_penalty": 1.3}],
)
def test_sampling_a_real_vocabulary_runs_through_dispatch(settings):
    # 20,000 logits: top-k's boundary is found through its column maxima,
    # which the tiny model's vocabulary is too small for.
    from picogpt2.sampling import SplitMix64, sample

    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(20000) * 3).astype(np.float32)
    seen = rng.random(20000) < 0.01
    StrictArray.called.clear()
    for seed in range(5):
        strict = sample(StrictArray(logits), SplitMix64(seed), seen=StrictArray(seen), **settings)
        assert strict == sample(logits, SplitMix64(seed), seen=seen, **settings)
    if "top_k" in settings:
        assert {"max", "reshape", "partition"} <= StrictArray.called.keys()
    cupy = pytest.importorskip("cupy")
    assert_cupy_takes(cupy, StrictArray.called)


def test_samples_penalty_and_sliding_window_run_through_dispatch(pair):
    ours, strict = pair
    kwargs = {"top_k": 20, "repetition_penalty": 1.2, "seed": 4, "ignore_eot": True}
    assert strict.generate_many(IDS, 70, 3, **kwargs) == ours.generate_many(IDS, 70, 3, **kwargs)
    stopping = {"temperature": 3.0, "seed": 1}  # samples leave the batch at different steps
    assert strict.generate_many(IDS, 40, 4, **stopping) == ours.generate_many(
        IDS, 40, 4, **stopping
    )
