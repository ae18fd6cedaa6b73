"""The routing kernels (decision, virtual queue, exploration) against their NumPy twins and their contracts.

Run as is (jitted) and, through test_kernels_nojit.py, again under NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from messplus import kernels
from messplus.kernels import reference as ref

JIT = not numba.config.DISABLE_JIT
EXAMPLES = 150 if JIT else 40
fuzz = settings(max_examples=EXAMPLES, deadline=None)

UINT64 = st.integers(0, 2**64 - 1)
# A few round values make exact ties between scores and costs common.
UNIT = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.25, 0.5, 1.0]))
NONNEG = st.one_of(st.floats(0.0, 100.0), st.sampled_from([0.0, 1.0, 2.0]))


def test_public_surface_is_pinned() -> None:
    assert sorted(kernels.__all__) == [
        "counter_uniform", "decide_batch", "draw_explore_batch", "explore_probability", "head_init",
        "head_predict", "head_update", "head_update_many", "price_for_target", "queue_update", "queue_update_many",
        "warmup", "window_satisfaction",
    ]
    assert all(callable(getattr(kernels, name)) for name in kernels.__all__)


def test_warmup_runs_every_kernel_and_reports_seconds() -> None:
    seconds = kernels.warmup()
    assert isinstance(seconds, float) and 0.0 <= seconds < 60.0


# ------------------------------------------------------------------------------------------ decide_batch
@st.composite
def decide_inputs(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    B, K = draw(st.integers(1, 12)), draw(st.integers(1, 16))
    p_hat = draw(arrays(np.float64, (B, K), elements=UNIT))
    cost = draw(arrays(np.float64, (B, K), elements=st.one_of(st.floats(0.0, 10.0), st.sampled_from([0.0, 1.0]))))
    avail = draw(arrays(np.bool_, (B, K), elements=st.booleans()))
    if draw(st.booleans()):
        avail[draw(st.integers(0, B - 1))] = False  # make sure all-unavailable rows come up
    queue = draw(arrays(np.float64, B, elements=NONNEG))
    alpha = draw(arrays(np.float64, B, elements=UNIT))
    V = draw(arrays(np.float64, B, elements=NONNEG))
    return p_hat, cost, avail, queue, alpha, V


def _args(p_hat, cost, avail, queue=None, alpha=None, V=None) -> tuple[np.ndarray, ...]:
    B = len(p_hat)
    fill = lambda v, x: np.full(B, x) if v is None else np.asarray(v, dtype=np.float64)  # noqa: E731
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), (B, len(p_hat[0]))).copy()  # one price list per row
    return (np.asarray(p_hat, dtype=np.float64), cost,
            np.asarray(avail, dtype=np.bool_), fill(queue, 1.0), fill(alpha, 0.5), fill(V, 1.0))


@fuzz
@given(decide_inputs())
def test_decide_batch_matches_numpy_twin(args: tuple[np.ndarray, ...]) -> None:
    got = kernels.decide_batch(*args)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref.decide_batch_np(*args))


ODD = st.sampled_from([np.inf, -np.inf, np.nan, 1e308, np.finfo(np.float64).max, -0.0, 0.5])


def test_a_band_that_overflows_still_leaves_unavailable_models_out() -> None:
    """best + TIE_RTOL * |best| rounds to +inf near the largest float: the band then held every unavailable
    model's +inf score, and one was chosen."""
    big = np.finfo(np.float64).max
    args = _args([[0.0, 0.0]], [big, 0.5], [[True, False]], queue=[0.0], V=[1.0])
    with np.errstate(over="ignore"):  # the band's overflow (NumPy warns; so does the kernel run without the JIT)
        assert kernels.decide_batch(*args)[0] == ref.decide_batch_np(*args)[0] == 0


@fuzz
@given(decide_inputs(), st.data())
def test_decide_batch_matches_numpy_twin_on_non_finite_values(args: tuple[np.ndarray, ...],
                                                              data: st.DataObject) -> None:
    """Infinite and NaN predictions or prices (a row whose band is +inf takes the other branch of the kernel)."""
    p_hat, cost = args[0].copy(), args[1].copy()
    for a in (p_hat, cost):
        for _ in range(data.draw(st.integers(0, a.size))):
            a[data.draw(st.integers(0, a.shape[0] - 1)), data.draw(st.integers(0, a.shape[1] - 1))] = data.draw(ODD)
    args = (p_hat, cost, *args[2:])
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0, inf - inf: NaN (NumPy warns; so does the kernel
        want, got = ref.decide_batch_np(*args), kernels.decide_batch(*args)  # run as Python without the JIT)
    np.testing.assert_array_equal(got, want)


@fuzz
@given(decide_inputs())
def test_decide_batch_picks_an_available_minimum(args: tuple[np.ndarray, ...]) -> None:
    p_hat, cost, avail, queue, alpha, V = args
    got = kernels.decide_batch(*args)
    score = V[:, None] * cost + queue[:, None] * (alpha[:, None] - p_hat)
    for b, k in enumerate(got):
        if not avail[b].any():
            assert k == -1
        else:
            best = score[b][avail[b]].min()
            assert avail[b, k] and score[b, k] <= best + 1e-12 * abs(best)


def test_all_unavailable_rows_get_minus_one() -> None:
    got = kernels.decide_batch(*_args([[0.9, 0.1], [0.5, 0.5]], [1.0, 2.0], [[False, False], [False, True]]))
    np.testing.assert_array_equal(got, [-1, 1])


def test_equal_scores_go_to_the_cheaper_model_then_the_lower_index() -> None:
    # score = cost + 1 * (0.5 - p): models 0 and 1 both score 1.0; model 1 is cheaper.
    assert kernels.decide_batch(*_args([[0.5, 0.0, 0.9]], [1.0, 0.5, 9.0], [[True, True, True]]))[0] == 1
    # same cost, same score: the lower index.
    assert kernels.decide_batch(*_args([[0.3, 0.3, 0.3]], [2.0, 1.0, 1.0], [[True, True, True]]))[0] == 1


def test_scores_within_the_relative_tolerance_tie() -> None:
    # score = cost + (1 - p): model 0 scores 1.0, the cheaper model 1 scores 1 + gap.
    def choice(gap: float) -> int:
        args = _args([[1.0, 0.5 - gap]], [1.0, 0.5], [[True, True]], queue=[1.0], alpha=[1.0], V=[1.0])
        return int(kernels.decide_batch(*args)[0])

    assert choice(4e-13) == 1  # within 1e-12 of the minimum: a tie, and the cheaper model takes it
    assert choice(1e-9) == 0  # beyond it: the lower score wins although it costs more


def test_empty_queue_sends_to_the_cheapest_available_model() -> None:
    args = _args([[1.0, 0.0, 0.0]], [3.0, 2.0, 1.0], [[True, True, False]], queue=[0.0])
    assert kernels.decide_batch(*args)[0] == 1


def test_single_request_single_model() -> None:
    assert kernels.decide_batch(*_args([[0.2]], [5.0], [[True]]))[0] == 0
    assert kernels.decide_batch(*_args([[0.2]], [5.0], [[False]]))[0] == -1


def test_decide_batch_rejects_mismatched_shapes() -> None:
    p_hat, cost, avail, queue, alpha, V = _args([[0.1, 0.2]], [1.0, 2.0], [[True, True]])
    with pytest.raises(ValueError):
        kernels.decide_batch(p_hat, np.ones((1, 3)), avail, queue, alpha, V)
    with pytest.raises(ValueError):
        kernels.decide_batch(p_hat, cost, avail, np.ones(2), alpha, V)


@pytest.mark.skipif(not JIT, reason="signatures are only enforced when jitted")
def test_decide_batch_rejects_other_dtypes_and_layouts() -> None:
    p_hat, cost, avail, queue, alpha, V = _args([[0.1, 0.2]], [1.0, 2.0], [[True, True]])
    with pytest.raises(TypeError):
        kernels.decide_batch(p_hat.astype(np.float32), cost, avail, queue, alpha, V)
    with pytest.raises(TypeError):
        kernels.decide_batch(np.asfortranarray(np.ones((2, 2))), cost, np.ones((2, 2), bool), *(np.ones(2),) * 3)


# ------------------------------------------------------------------------------------------------- queue
FLOORS = st.one_of(st.just(0.0), st.just(-np.inf), st.floats(-50.0, 0.0))


@fuzz
@given(st.floats(-1e3, 1e6), st.floats(0.0, 1.0), st.floats(0.0, 1.0), FLOORS)
def test_queue_update_is_the_floored_lindley_step(q: float, target: float, s: float, floor: float) -> None:
    q = max(q, floor)
    got = kernels.queue_update(q, target, s, floor)
    assert got >= floor
    assert got == ref.queue_update_np(np.float64(q), target, s, floor) == max(floor, q + target - s)


def test_queue_floor_zero_is_mess_plus_and_minus_inf_keeps_the_surplus() -> None:
    assert kernels.queue_update(0.2, 0.7, 1.0, 0.0) == 0.0
    assert kernels.queue_update(0.2, 0.7, 1.0, -np.inf) == pytest.approx(-0.1)
    assert kernels.queue_update(0.2, 0.7, 1.0, -0.05) == -0.05


@st.composite
def queue_inputs(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    N, M = draw(st.integers(1, 6)), draw(st.integers(0, 40))
    floor = draw(arrays(np.float64, N, elements=FLOORS))
    q = draw(arrays(np.float64, N, elements=st.one_of(st.just(0.0), st.floats(0.0, 5.0))))
    tenant = draw(arrays(np.int64, M, elements=st.integers(0, N - 1)))
    target = draw(arrays(np.float64, M, elements=UNIT))
    s = draw(arrays(np.float64, M, elements=UNIT))
    return q, tenant, target, s, floor


@fuzz
@given(queue_inputs())
def test_queue_update_many_matches_numpy_twin(args: tuple[np.ndarray, ...]) -> None:
    q, tenant, target, s, floor = args
    got, want = q.copy(), q.copy()
    assert kernels.queue_update_many(got, tenant, target, s, floor) is None
    ref.queue_update_many_np(want, tenant, target, s, floor)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert (got >= floor).all() and (want >= floor).all()


@fuzz
@given(queue_inputs())
def test_queue_update_many_is_the_single_updates_in_order(args: tuple[np.ndarray, ...]) -> None:
    q, tenant, target, s, floor = args
    got, want = q.copy(), q.copy()
    kernels.queue_update_many(got, tenant, target, s, floor)
    for t, a_i, s_i in zip(tenant, target, s):
        want[t] = kernels.queue_update(want[t], a_i, s_i, floor[t])
    np.testing.assert_array_equal(got, want)


def test_queue_update_many_checks_every_index_before_writing() -> None:
    q = np.array([1.0, 2.0])
    with pytest.raises(IndexError):
        kernels.queue_update_many(q, np.array([0, 2]), np.ones(2), np.zeros(2), np.zeros(2))
    with pytest.raises(IndexError):
        kernels.queue_update_many(q, np.array([0, -1]), np.ones(2), np.zeros(2), np.zeros(2))
    np.testing.assert_array_equal(q, [1.0, 2.0])
    with pytest.raises(ValueError):
        kernels.queue_update_many(q, np.array([0]), np.ones(2), np.zeros(1), np.zeros(2))
    with pytest.raises(ValueError):
        kernels.queue_update_many(q, np.array([0]), np.ones(1), np.zeros(1), np.zeros(3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_queue_refuses_a_non_finite_step_instead_of_taking_it_to_the_floor(bad: float) -> None:
    # max(floor, NaN) was the floor: -inf with an unlimited reserve, a queue that never asks for satisfaction again
    for fn in (kernels.queue_update, ref.queue_update_np):
        with pytest.raises(ValueError, match="finite"):
            fn(0.2, 0.7, bad, -np.inf)
        with pytest.raises(ValueError, match="finite"):
            fn(0.2, bad, 0.5, 0.0)
        with pytest.raises(ValueError, match="finite"):
            fn(bad, 0.7, 0.5, -np.inf)
    for fn in (kernels.queue_update_many, ref.queue_update_many_np):
        q = np.array([1.0, 2.0])
        with pytest.raises(ValueError, match="finite"):
            fn(q, np.array([0, 1]), np.array([0.7, 0.7]), np.array([0.5, bad]), np.full(2, -np.inf))
        with pytest.raises(ValueError, match="finite"):
            fn(q, np.array([1, 0]), np.array([bad, 0.7]), np.array([0.5, 0.5]), np.zeros(2))
        np.testing.assert_array_equal(q, [1.0, 2.0])  # nothing written, the good first step included
        q2 = np.array([1.0, bad])
        with pytest.raises(ValueError, match="finite"):
            fn(q2, np.array([0, 1]), np.array([0.7, 0.7]), np.array([0.5, 0.5]), np.zeros(2))
        assert q2[0] == 1.0  # the step on the finite queue before it was not written either


# ------------------------------------------------------------------------------------------- exploration
@fuzz
@given(st.integers(-(2**62), 2**62), st.floats(0.0, 100.0))
def test_explore_probability_matches_twin_bitwise(t: int, c: float) -> None:
    got = kernels.explore_probability(np.int64(t), c)
    assert 0.0 <= got <= 1.0
    assert got == ref.explore_probability_np(np.array([t]), np.array([c]))[0]
    assert got == pytest.approx(min(1.0, c / max(t, 1) ** 0.25), rel=1e-15)


@fuzz
@given(st.integers(1, 2**62), st.integers(0, 2**62), st.floats(0.0, 100.0))
def test_explore_probability_does_not_increase_with_t(t: int, dt: int, c: float) -> None:
    later = min(t + dt, 2**62)
    assert kernels.explore_probability(np.int64(later), c) <= kernels.explore_probability(np.int64(t), c)


def test_explore_probability_known_values() -> None:
    assert kernels.explore_probability(np.int64(16), 1.0) == 0.5
    assert kernels.explore_probability(np.int64(1), 0.3) == 0.3
    assert kernels.explore_probability(np.int64(1), 3.0) == 1.0
    assert kernels.explore_probability(np.int64(0), 0.3) == 0.3


@fuzz
@given(UINT64, UINT64, UINT64)
def test_counter_uniform_matches_twin_bitwise(seed: int, stream: int, t: int) -> None:
    got = kernels.counter_uniform(np.uint64(seed), np.uint64(stream), np.uint64(t))
    assert 0.0 <= got < 1.0
    assert got == ref.counter_uniform_np(seed, stream, t)


def _chi_square(u: np.ndarray, bins: int) -> float:
    counts = np.bincount((u * bins).astype(np.int64), minlength=bins)
    expected = len(u) / bins
    return float(((counts - expected) ** 2 / expected).sum())


def test_counter_uniform_is_roughly_uniform() -> None:
    n, bins = 20_000, 20  # chi-square with 19 degrees of freedom: mean 19; 60 is beyond p = 1e-5
    seed = np.uint64(20250519)
    along_t = np.array([kernels.counter_uniform(seed, np.uint64(7), np.uint64(t)) for t in range(1, n + 1)])
    across_streams = np.array([kernels.counter_uniform(seed, np.uint64(s), np.uint64(1)) for s in range(n)])
    assert _chi_square(along_t, bins) < 60.0
    assert _chi_square(across_streams, bins) < 60.0
    assert abs(np.corrcoef(along_t[:-1], along_t[1:])[0, 1]) < 0.05


@st.composite
def explore_inputs(draw: st.DrawFn) -> tuple[np.uint64, np.ndarray, np.ndarray, np.ndarray]:
    B = draw(st.integers(1, 30))
    stream = draw(arrays(np.uint64, B, elements=UINT64))
    t = draw(arrays(np.int64, B, elements=st.integers(1, 2**40)))
    c = draw(arrays(np.float64, B, elements=st.floats(0.0, 2.0)))
    return np.uint64(draw(UINT64)), stream, t, c


@fuzz
@given(explore_inputs())
def test_draw_explore_batch_matches_twin(args: tuple) -> None:
    got = kernels.draw_explore_batch(*args)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, ref.draw_explore_batch_np(*args))


@fuzz
@given(explore_inputs(), st.randoms(use_true_random=False))
def test_draw_explore_batch_does_not_depend_on_order(args: tuple, rnd) -> None:
    seed, stream, t, c = args
    perm = np.array(rnd.sample(range(len(t)), len(t)), dtype=np.int64)
    got = kernels.draw_explore_batch(seed, stream[perm].copy(), t[perm].copy(), c[perm].copy())
    np.testing.assert_array_equal(got, kernels.draw_explore_batch(seed, stream, t, c)[perm])


def test_draw_explore_batch_extremes() -> None:
    stream, t = np.arange(50, dtype=np.uint64), np.full(50, 81, dtype=np.int64)
    assert kernels.draw_explore_batch(np.uint64(1), stream, t, np.full(50, 3.0)).all()  # c / 3 >= 1
    assert not kernels.draw_explore_batch(np.uint64(1), stream, t, np.zeros(50)).any()
    with pytest.raises(ValueError):
        kernels.draw_explore_batch(np.uint64(1), stream, t[:3].copy(), np.zeros(50))


def test_a_nan_rating_rules_its_model_out_in_the_kernel_and_its_reference_alike() -> None:
    """The reference dropped a whole row of the window when one model's rating was NaN (the kernel skips that
    model): the price floor's oracle disagreed with the kernel it checks."""
    q = np.array([[np.nan, 0.9], [0.5, 0.6]])
    p, cost, avail = np.array([[0.2, 0.9], [0.5, 0.6]]), np.array([[0.1, 1.0], [0.1, 1.0]]), np.ones((2, 2), bool)
    for lam in (0.0, 10.0):
        assert kernels.window_satisfaction(q, p, cost, avail, lam) == ref.window_satisfaction_np(q, p, cost, avail, lam)
    assert kernels.price_for_target(q, p, cost, avail, 0.7, 1e4) == ref.price_for_target_np(q, p, cost, avail, 0.7, 1e4)
