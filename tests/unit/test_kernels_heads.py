"""The Bayesian logistic-regression head kernels against their NumPy twins and their contracts.

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
EXAMPLES = 120 if JIT else 30
fuzz = settings(max_examples=EXAMPLES, deadline=None)
CLOSE = {"rtol": 1e-9, "atol": 1e-12}


@st.composite
def heads(draw: st.DrawFn, max_k: int = 3, max_d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """W[K, D] and symmetric positive definite S[K, D, D] = A A' / D + 0.05 I."""
    K, D = draw(st.integers(1, max_k)), draw(st.integers(1, max_d))
    W = draw(arrays(np.float64, (K, D), elements=st.floats(-3.0, 3.0)))
    A = draw(arrays(np.float64, (K, D, D), elements=st.floats(-1.0, 1.0)))
    S = A @ A.transpose(0, 2, 1) / D + 0.05 * np.eye(D)
    return W, np.ascontiguousarray((S + S.transpose(0, 2, 1)) / 2)


def features(D: int, max_abs: float = 2.0) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, D, elements=st.floats(-max_abs, max_abs))


def _predict(fn, X: np.ndarray, W: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, v = np.full((len(X), len(W)), np.nan), np.full((len(X), len(W)), np.nan)
    assert fn(X, W, S, p, v) is None
    return p, v


# ------------------------------------------------------------------------------------------------- init
def test_head_init_puts_the_bias_on_the_constant_feature() -> None:
    W, S = kernels.head_init(3, 4, 2.5, np.array([0.1, -0.2, 0.3]))
    assert W.flags.c_contiguous and S.flags.c_contiguous and W.dtype == S.dtype == np.float64
    np.testing.assert_array_equal(W, [[0, 0, 0, 0.1], [0, 0, 0, -0.2], [0, 0, 0, 0.3]])
    np.testing.assert_array_equal(S, np.broadcast_to(2.5 * np.eye(4), (3, 4, 4)))


@pytest.mark.parametrize("K, D, prior_var, bias", [(0, 3, 1.0, []), (2, 0, 1.0, [0, 0]), (2, 3, 0.0, [0, 0]),
                                                   (2, 3, float("inf"), [0, 0]), (2, 3, 1.0, [0])])
def test_head_init_rejects_bad_arguments(K: int, D: int, prior_var: float, bias: list) -> None:
    with pytest.raises(ValueError):
        kernels.head_init(K, D, prior_var, np.array(bias, dtype=np.float64))


def test_prior_prediction_is_the_moderated_bias() -> None:
    W, S = kernels.head_init(2, 3, 1.0, np.array([2.0, -1.0]))
    p, v = _predict(kernels.head_predict, np.array([[0.0, 0.0, 1.0]]), W, S)
    np.testing.assert_allclose(v, [[1.0, 1.0]])
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-np.array([[2.0, -1.0]]) / np.sqrt(1 + np.pi / 8))))


# ---------------------------------------------------------------------------------------------- predict
@fuzz
@given(heads(), st.integers(1, 9), st.data())
def test_head_predict_matches_numpy_twin(WS: tuple, B: int, data: st.DataObject) -> None:
    W, S = WS
    X = data.draw(arrays(np.float64, (B, W.shape[1]), elements=st.floats(-2.0, 2.0)))
    p, v = _predict(kernels.head_predict, X, W, S)
    p_np, v_np = _predict(ref.head_predict_np, X, W, S)
    np.testing.assert_allclose(v, v_np, **CLOSE)
    np.testing.assert_allclose(p, p_np, **CLOSE)
    assert ((p >= 0.0) & (p <= 1.0)).all() and (v >= -1e-12).all()


def test_head_predict_is_stable_for_huge_logits() -> None:
    W = np.array([[1e4, 0.0], [-1e4, 0.0]])
    S = np.zeros((2, 2, 2))
    p, v = _predict(kernels.head_predict, np.array([[1.0, 1.0]]), W, S)
    np.testing.assert_array_equal(p, [[1.0, 0.0]])
    np.testing.assert_array_equal(v, [[0.0, 0.0]])


def test_head_predict_rejects_mismatched_shapes() -> None:
    W, S = kernels.head_init(2, 3, 1.0, np.zeros(2))
    with pytest.raises(ValueError):
        kernels.head_predict(np.ones((1, 4)), W, S, np.empty((1, 2)), np.empty((1, 2)))
    with pytest.raises(ValueError):
        kernels.head_predict(np.ones((1, 3)), W, S, np.empty((1, 3)), np.empty((1, 3)))


# ----------------------------------------------------------------------------------------------- update
@fuzz
@given(heads(), st.data())
def test_head_update_matches_numpy_twin(WS: tuple, data: st.DataObject) -> None:
    W, S = WS
    x = data.draw(features(W.shape[1]))
    y, k = data.draw(st.floats(0.0, 1.0)), np.int64(data.draw(st.integers(0, len(W) - 1)))
    W1, S1, W2, S2 = W.copy(), S.copy(), W.copy(), S.copy()
    assert kernels.head_update(x, y, k, W1, S1) is None
    ref.head_update_np(x, y, k, W2, S2)
    np.testing.assert_allclose(W1, W2, **CLOSE)
    np.testing.assert_allclose(S1, S2, **CLOSE)
    others = np.arange(len(W)) != k
    np.testing.assert_array_equal(W1[others], W[others])
    np.testing.assert_array_equal(S1[others], S[others])


@st.composite
def label_stream(draw: st.DrawFn, n_max: int = 25) -> tuple:
    W, S = draw(heads())
    N = draw(st.integers(0, n_max))
    X = draw(arrays(np.float64, (N, W.shape[1]), elements=st.floats(-2.0, 2.0)))
    y = draw(arrays(np.float64, N, elements=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0]))))
    k = draw(arrays(np.int64, N, elements=st.integers(0, len(W) - 1)))
    return X, y, k, W, S


@fuzz
@given(label_stream())
def test_head_update_many_matches_numpy_twin_and_single_updates(args: tuple) -> None:
    X, y, k, W, S = args
    W1, S1, W2, S2, W3, S3 = W.copy(), S.copy(), W.copy(), S.copy(), W.copy(), S.copy()
    kernels.head_update_many(X, y, k, W1, S1)
    ref.head_update_many_np(X, y, k, W2, S2)
    for i in range(len(X)):
        kernels.head_update(X[i], y[i], k[i], W3, S3)
    np.testing.assert_allclose(W1, W2, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(S1, S2, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(W1, W3)
    np.testing.assert_array_equal(S1, S3)


@fuzz
@given(label_stream())
def test_head_update_keeps_S_symmetric_positive_definite_and_shrinking(args: tuple) -> None:
    X, y, k, W, S = args
    for i in range(len(X)):
        before = X[i] @ S[k[i]] @ X[i]
        kernels.head_update(X[i], y[i], k[i], W, S)
        assert X[i] @ S[k[i]] @ X[i] <= before * (1 + 1e-12) + 1e-15
    np.testing.assert_array_equal(S, S.transpose(0, 2, 1))
    assert (np.linalg.eigvalsh(S) > 0.0).all()


@fuzz
@given(heads(), st.data())
def test_head_update_moves_the_prediction_towards_the_label(WS: tuple, data: st.DataObject) -> None:
    W, S = WS
    k = np.int64(data.draw(st.integers(0, len(W) - 1)))
    x = data.draw(features(W.shape[1]))
    x /= max(1.0, np.sqrt(x @ S[k] @ x))  # x'Sx <= 1, so the Newton step cannot overshoot the label
    y = data.draw(st.floats(0.0, 1.0))
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    before = sigmoid(x @ W[k])
    kernels.head_update(x, y, k, W, S)
    after = sigmoid(x @ W[k])
    assert (after - before) * (y - before) >= 0.0
    assert abs(after - y) <= abs(before - y) + 1e-15
    if abs(before - y) > 1e-3 and x @ x > 1e-2:
        assert abs(after - y) < abs(before - y)


def test_repeated_labels_pull_the_prediction_to_them() -> None:
    W, S = kernels.head_init(1, 2, 1.0, np.zeros(1))
    x = np.array([0.5, 1.0])
    for _ in range(200):
        kernels.head_update(x, 1.0, np.int64(0), W, S)
    p, _ = _predict(kernels.head_predict, x[None, :].copy(), W, S)
    assert p[0, 0] > 0.9


def test_head_update_checks_the_head_index_before_writing() -> None:
    W, S = kernels.head_init(2, 3, 1.0, np.zeros(2))
    W0, S0 = W.copy(), S.copy()
    with pytest.raises(IndexError):
        kernels.head_update(np.ones(3), 1.0, np.int64(2), W, S)
    with pytest.raises(IndexError):
        kernels.head_update_many(np.ones((2, 3)), np.ones(2), np.array([0, -1]), W, S)
    with pytest.raises(ValueError):
        kernels.head_update(np.ones(4), 1.0, np.int64(0), W, S)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(S, S0)
