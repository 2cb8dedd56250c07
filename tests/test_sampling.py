"""Choosing a token: the rules of sampling.py, and SplitMix64 pinned bit for
bit."""

import numpy as np
import pytest

from picogpt2.sampling import (
    GROUPS,
    SplitMix64,
    check_sampling_args,
    is_greedy,
    sample,
    top_values,
)


def test_splitmix64_first_outputs_are_pinned():
    rng = SplitMix64(0)
    assert [rng.next_u64() for _ in range(3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F,
    ]  # fmt: skip
    rng = SplitMix64(42)
    assert rng.next_u64() == 0xBDD732262FEB6E95
    assert SplitMix64(42).uniform() == (0xBDD732262FEB6E95 >> 11) * 2.0**-53


def test_uniform_is_in_unit_interval():
    rng = SplitMix64(7)
    draws = [rng.uniform() for _ in range(10000)]
    assert 0 <= min(draws) and max(draws) < 1 and abs(np.mean(draws) - 0.5) < 0.02


def fixed_rng(u: float):
    class Fixed:
        def uniform(self):
            return u

    return Fixed()


LOGITS = np.log(np.array([0.1, 0.4, 0.2, 0.3], dtype=np.float32))  # sorted: 1, 3, 2, 0


@pytest.mark.parametrize(
    "u, expected", [(0.0, 1), (0.39, 1), (0.41, 3), (0.69, 3), (0.71, 2), (0.89, 2), (0.91, 0)]
)
def test_inverse_cdf_over_descending_order(u, expected):
    assert sample(LOGITS, fixed_rng(u), temperature=1.0) == expected


def test_top_k_keeps_the_k_largest():
    # top-2 keeps tokens 1 (0.4) and 3 (0.3): cdf 4/7 then 1.
    assert sample(LOGITS, fixed_rng(0.56), top_k=2) == 1
    assert sample(LOGITS, fixed_rng(0.58), top_k=2) == 3
    assert sample(LOGITS, fixed_rng(0.999), top_k=2) == 3


def test_top_k_keeps_ties_at_the_boundary():
    logits = np.array([1.0, 3.0, 2.0, 2.0, 0.0])
    assert {sample(logits, fixed_rng(u), top_k=2) for u in np.linspace(0, 0.999, 50)} == {1, 2, 3}


def test_top_p_keeps_the_token_that_crosses():
    # cumulative in order 1, 3, 2, 0: 0.4, 0.7, 0.9, 1.0.
    assert {sample(LOGITS, fixed_rng(u), top_p=0.5) for u in np.linspace(0, 0.999, 50)} == {1, 3}
    assert {sample(LOGITS, fixed_rng(u), top_p=0.4) for u in np.linspace(0, 0.999, 50)} == {1}
    assert {sample(LOGITS, fixed_rng(u), top_p=0.71) for u in np.linspace(0, 0.999, 50)} == {
        1, 2, 3,
    }  # fmt: skip


def test_top_k_then_top_p():
    # top-3 renormalises 0.4, 0.3, 0.2 to 4/9, 3/9, 2/9; top-p 0.7 keeps 1 and 3.
    assert {
        sample(LOGITS, fixed_rng(u), top_k=3, top_p=0.7) for u in np.linspace(0, 0.999, 50)
    } == {1, 3}


def test_temperature_sharpens_and_flattens():
    rng = SplitMix64(1)
    cold = [sample(LOGITS, rng, temperature=0.05) for _ in range(200)]
    assert cold.count(1) > 190
    rng = SplitMix64(1)
    hot = [sample(LOGITS, rng, temperature=100.0) for _ in range(2000)]
    assert all(abs(hot.count(t) / 2000 - 0.25) < 0.05 for t in range(4))


def test_frequencies_follow_probabilities():
    rng = SplitMix64(2024)
    draws = [sample(LOGITS, rng, temperature=1.0) for _ in range(20000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.1, 0.4, 0.2, 0.3], atol=0.015)


def test_greedy_rules():
    assert is_greedy(None, None, None) and is_greedy(0.0, 40, 0.9) and is_greedy(None, 1, None)
    assert not is_greedy(None, 40, None) and not is_greedy(0.7, None, None)
    assert sample(LOGITS, SplitMix64(0)) == 1
    assert sample(np.array([2.0, 5.0, 5.0]), SplitMix64(0), temperature=0) == 1  # lowest id


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top-k"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.01}, "top-p"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_invalid_settings(kwargs, message):
    args = {"temperature": None, "top_k": None, "top_p": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        check_sampling_args(**args)


def test_worked_example_in_readme():
    """The README's worked example of the portable sampler, step by step."""
    rng = SplitMix64(1234)
    assert [rng.next_u64() for _ in range(3)] == [
        0xBB0CF61B2F181CDB, 0x97C7A1364DF06524, 0x33BEFAE49BC025DA,
    ]  # fmt: skip
    rng = SplitMix64(1234)
    assert [rng.uniform() for _ in range(3)] == [
        0.730666524540624, 0.5928898580149862, 0.20213287431010984,
    ]  # fmt: skip
    logits = np.array([2.0, 1.0, 0.5, 3.0, -1.0], np.float32)
    rng = SplitMix64(1234)
    assert [sample(logits, rng, temperature=2.0, top_k=3) for _ in range(3)] == [0, 0, 3]


@pytest.mark.parametrize(
    "settings",
    [{}, {"top_k": 1}, {"top_k": 5}, {"top_k": 40}, {"temperature": 0.7},
     {"top_p": 0.9}, {"top_k": 40, "top_p": 0.5, "temperature": 1.3},
     {"top_k": 40, "repetition_penalty": 1.3}],
)  # fmt: skip
def test_float32_logits_choose_as_their_float64_values(settings):
    # The code compares float32 logits as they come and converts the kept
    # ones only: the same tokens as converting them all first (step 1).
    # Quantised values make ties, at the top and at top-k's boundary.
    rng = np.random.default_rng(5)
    seen = rng.random(1000) < 0.1
    for seed in range(40):
        logits = (np.round(rng.standard_normal(1000) * 8) / 4).astype(np.float32)
        as_32 = sample(logits, SplitMix64(seed), seen=seen, **settings)
        as_64 = sample(logits.astype(np.float64), SplitMix64(seed), seen=seen, **settings)
        assert as_32 == as_64


def test_the_draw_is_made_in_float64():
    # Two tokens 0.1 apart: token 1 is drawn iff u * cdf[1] >= cdf[0]. The
    # two adjacent float64 values of u around that boundary round to the
    # same float32, so a draw made in float32 cannot tell them apart.
    logits = np.array([0.0, -0.1], dtype=np.float32)
    cdf = np.cumsum(np.exp(logits.astype(np.float64) / 1.0))  # steps 1 and 6, as the rules say
    u = 1 / cdf[1]
    while u * cdf[1] < cdf[0]:
        u = np.nextafter(u, 1.0)
    while np.nextafter(u, 0.0) * cdf[1] >= cdf[0]:
        u = np.nextafter(u, 0.0)
    assert sample(logits, fixed_rng(float(u)), temperature=1.0) == 1
    assert sample(logits, fixed_rng(float(np.nextafter(u, 0.0))), temperature=1.0) == 0


def by_the_rules(logits, rng, temperature=None, top_k=None, top_p=None, penalty=None, seen=None):
    """The module docstring's rules, literally: every logit converted and
    penalised, all of them sorted (stable, so ties by ascending id)."""
    z = logits.astype(np.float64)  # step 1
    if penalty is not None:  # step 2
        z = np.where(seen, np.where(z > 0, z / penalty, z * penalty), z)
    if is_greedy(temperature, top_k, top_p):  # step 3
        return int(np.argmax(z))
    order = np.argsort(-z, kind="stable")  # step 4
    if top_k is not None:  # step 5
        order = order[z[order] >= z[order[min(top_k, len(z)) - 1]]]
    cdf = np.cumsum(np.exp((z[order] - z[order[0]]) / (temperature or 1.0)))  # step 6
    if top_p is not None:  # step 7
        cdf = cdf[: int(np.argmax(cdf / cdf[-1] >= top_p)) + 1]
    return int(order[np.searchsorted(cdf, rng.uniform() * cdf[-1], side="right")])  # step 8


def tied_logits(rng, n, kind):
    """Logits with no ties, with some, and with thousands of each value."""
    values = rng.standard_normal(n) * 3
    return [values, np.round(values * 4) / 4, np.round(values)][kind].astype(np.float32)


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 0.7}, {"top_k": 1}, {"top_k": 2}, {"top_k": 40}, {"top_k": GROUPS // 8},
     {"top_k": GROUPS // 8 + 1}, {"top_k": 5000}, {"top_p": 0.9},
     {"top_k": 40, "top_p": 0.5, "temperature": 1.3}, {"top_k": 50, "penalty": 1.3},
     {"top_p": 0.95, "penalty": 0.8}, {"temperature": 1e-300}],
)  # fmt: skip
@pytest.mark.parametrize("n", [7, 1000, 8 * GROUPS + 3])
def test_sample_draws_what_the_rules_draw(settings, n):
    # The code sorts values, finds top-k's boundary among a few candidates
    # and orders ties for the drawn token alone: the same token as the
    # rules applied literally, for each seed, ties at the top, at top-k's
    # boundary and where the draw lands included.
    rng = np.random.default_rng(n)
    seen = rng.random(n) < 0.05
    penalty = settings.pop("penalty", None)
    for kind in range(3):
        logits = tied_logits(rng, n, kind)
        for seed in range(6):
            ours = sample(logits, SplitMix64(seed), repetition_penalty=penalty, seen=seen,
                          **settings)  # fmt: skip
            rules = by_the_rules(logits, SplitMix64(seed), penalty=penalty, seen=seen, **settings)
            assert ours == rules, (kind, seed)


@pytest.mark.parametrize("k", [1, 3, GROUPS // 8, GROUPS // 8 + 1, 20000])
def test_top_values_are_those_at_or_above_the_kth_largest(k):
    rng = np.random.default_rng(k)
    for kind in range(3):
        z = tied_logits(rng, 20000, kind)
        kth = np.sort(z)[-k]
        np.testing.assert_array_equal(np.sort(top_values(z, k)), np.sort(z[z >= kth]))
    z = np.zeros(20000, np.float32)  # every entry ties: all are kept
    assert len(top_values(z, k)) == 20000
