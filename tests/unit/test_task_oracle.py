"""The task-level oracle on a hand-made stream whose answer is worked out by hand (below)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from messplus.service.replay.baselines import oracle, static_mixture, task_oracle

NAMES = ("small", "large")
# task A: small and large both always right; task B: small right on one item of two, large on both.
# costs: small 1, large 10, everywhere.
LABELS = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
COSTS = np.array([[1.0, 10.0]] * 4)
SOURCES = ("A", "A", "B", "B")


def test_task_oracle_mixes_inside_the_task_that_needs_it() -> None:
    # alpha 0.875: 3.5 of 4 right. A with small gives 2; B needs 1.5 of 2: small is right on 0.5 of B's items,
    # so x (B's share of large) solves 2 (0.5 (1 - x) + x) = 1.5: x = 0.5, and B costs 2 (0.5 * 1 + 0.5 * 10) = 11.
    got = task_oracle(NAMES, COSTS, LABELS, SOURCES, 0.875)
    assert got["feasible"] and got["mean_cost"] == pytest.approx((2 + 11) / 4)
    assert got["satisfaction"] == pytest.approx(0.875)
    assert got["mix"] == {"A": {"small": pytest.approx(1.0)}, "B": {"small": pytest.approx(0.5),
                                                                     "large": pytest.approx(0.5)}}


def test_it_lies_between_the_item_oracle_and_the_static_mixture() -> None:
    item = oracle(COSTS, LABELS, 0.875).solution.mean_cost  # B's first item with small, half the second large
    static = static_mixture(NAMES, COSTS.mean(0), LABELS.mean(0), 0.875)["mean_cost"]  # small 0.75: half large
    assert item == pytest.approx((2 + 1 + 5.5) / 4) and static == pytest.approx(5.5)
    assert item < task_oracle(NAMES, COSTS, LABELS, SOURCES, 0.875)["mean_cost"] < static


def test_the_cheapest_choice_when_it_already_reaches_alpha() -> None:
    got = task_oracle(NAMES, COSTS, LABELS, SOURCES, 0.75)  # small everywhere: 3 of 4
    assert got["mean_cost"] == pytest.approx(1.0) and got["mix"]["B"] == {"small": pytest.approx(1.0)}


def test_missing_labels_make_a_model_unavailable_in_that_task_and_an_unlabelled_task_is_left_out() -> None:
    labels = np.array([[1.0, np.nan], [1.0, np.nan], [np.nan, 1.0], [0.0, 1.0], [np.nan, np.nan]])
    costs = np.array([[1.0, 10.0]] * 5)
    got = task_oracle(NAMES, costs, labels, ("A", "A", "B", "B", "C"), 1.0)
    assert got["excluded_prompts"] == 1 and set(got["mix"]) == {"A", "B"}
    assert got["mix"]["A"] == {"small": pytest.approx(1.0)}  # large has no label in A: unavailable there
    assert got["mix"]["B"] == {"large": pytest.approx(1.0)} and got["mean_cost"] == pytest.approx(22 / 4)


def test_infeasible_alpha_is_reported() -> None:
    got = task_oracle(NAMES, COSTS, np.array([[0.0, 0.5]] * 4), SOURCES, 0.9)
    assert not got["feasible"] and math.isfinite(got["mean_cost"])
