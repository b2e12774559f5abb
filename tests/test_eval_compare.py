"""eval.compare: a policy's hull against task-static's at matched costs (hand-worked)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval import harness as H
from eval import metrics as M
from eval.compare import compare_hulls, requirement
from tests.test_eval_harness import run_policy, synthetic

# task-static: two operating points; the policy starts dearer and ends higher
BASE = np.array([[1.0, 0.5], [3.0, 0.7]])
LATE = np.array([[2.0, 0.6], [4.0, 0.9]])
# starts where the base does, dips below it, ends above it
DIP = np.array([[1.0, 0.5], [2.0, 0.55], [3.0, 0.75]])


def test_matched_costs_and_differences_by_hand():
    # common range [max(1, 2), max(3, 4)] = [2, 4]; grid of 3: 2, 2*sqrt(2), 4; plus the
    # base vertex 3 inside it
    costs = M.comparison_costs(LATE, BASE, n_grid=3)
    np.testing.assert_allclose(costs, [2.0, 2 * math.sqrt(2), 3.0, 4.0])
    r = 2 * math.sqrt(2)
    # LATE(2) = 0.6, BASE(2) = 0.5 + 0.1 * 1 = 0.6 -> tie; at 3: 0.75 - 0.7; at 4 the
    # base is flat after its last point: 0.9 - 0.7
    expected = [0.0, (0.6 + 0.15 * (r - 2)) - (0.5 + 0.1 * (r - 1)), 0.05, 0.2]
    np.testing.assert_allclose(M.hull_difference(LATE, BASE, costs), expected, atol=1e-12)
    assert np.isnan(M.hull_difference(LATE, BASE, [1.5])[0])  # LATE has no point that cheap
    # a single shared cost (both hulls one point at the same cost): one comparison point
    np.testing.assert_allclose(M.comparison_costs(np.array([[2.0, 0.4]]),
                                                  np.array([[2.0, 0.5]])), [2.0])


def test_verdicts_by_hand():
    # LATE is never worse on [2, 4], but task-static operates on [1, 2) where LATE cannot
    late = compare_hulls(LATE, BASE, n_grid=3)
    assert (late["better"], late["tied"], late["worse"]) == (3, 1, 0)
    assert late["uncovered"] == [1.0, 2.0] and late["verdict"] == "no cheap point"
    r = 2 * math.sqrt(2)
    d = (0.6 + 0.15 * (r - 2)) - (0.5 + 0.1 * (r - 1))
    assert not late["beats"] and late["mean_diff"] == pytest.approx((0 + d + 0.05 + 0.2) / 4)
    assert [p["baseline_vertex"] for p in late["points"]] == [False, False, True, False]

    # DIP on [1, 3] with the grid 1, sqrt(3), 3: tie, -0.0366, +0.05
    resamples = [DIP, DIP]
    dip = compare_hulls(DIP, BASE, resamples, [BASE, BASE], n_grid=3)
    diffs = [p["diff"] for p in dip["points"]]
    s = math.sqrt(3)
    np.testing.assert_allclose(diffs, [0.0, (0.5 + 0.05 * (s - 1)) - (0.5 + 0.1 * (s - 1)),
                                       0.05], atol=1e-12)
    assert (dip["better"], dip["tied"], dip["worse"]) == (1, 1, 1)
    # every resample gives the same hulls: the intervals collapse onto the estimates
    assert dip["significantly_worse"] == 1 and dip["significantly_better"] == 1
    assert dip["verdict"] == "significantly worse" and dip["worst"]["cost"] == pytest.approx(s)
    assert "significantly worse at 1" in dip["summary"]

    # resamples on both sides of the dip: worse at sqrt(3), but not significantly
    up = np.array([[1.0, 0.5], [2.0, 0.65], [3.0, 0.75]])
    mixed = compare_hulls(DIP, BASE, [DIP, up, up, DIP], [BASE] * 4, n_grid=3)
    assert mixed["worse"] == 1 and mixed["significantly_worse"] == 0
    assert mixed["verdict"] == "worse, not significantly"
    assert mixed["points"][1]["ci"][0] < 0 < mixed["points"][1]["ci"][1]

    # the base against itself: every point a tie
    same = compare_hulls(BASE, BASE, [BASE], [BASE])
    assert same["verdict"] == "ties" and same["tied"] == same["n_points"]
    with pytest.raises(ValueError, match="same resamples"):
        compare_hulls(BASE, BASE, [BASE], [])


def test_evaluation_pairs_the_resamples():
    train, test = synthetic(300, seed=1).split(0.4, seed=0)
    lams = H.lam_grid("auto:30", train.eval_matrices()[1])
    ev = H.Evaluation(test, lams)
    for name, label in (("task-static", None), ("task-static", "copy"), ("oracle", None),
                        ("cheapest", None)):
        ev.add(run_policy(name, train, test, lams, label=label))
    s = ev.score(n_boot=200, seed=3)
    assert ev.baseline_label() == "task-static" and s["task-static"]["vs_task_static"] is None
    copy = s["copy"]["vs_task_static"]
    # a copy of the baseline: paired resamples make every difference exactly 0
    assert copy["verdict"] == "ties" and copy["mean_diff_ci"] == [0.0, 0.0]
    assert all(p["ci"] == [0.0, 0.0] for p in copy["points"])
    oracle = s["oracle"]["vs_task_static"]
    assert oracle["verdict"] == "beats" and oracle["significantly_worse"] == 0
    assert oracle["significantly_better"] >= 1
    cheapest = s["cheapest"]["vs_task_static"]  # flat at the cheapest model's quality
    assert cheapest["verdict"] == "significantly worse" and cheapest["better"] == 0
    # none of these is a learned policy: nothing to judge
    req = requirement(s, ev.baseline_label())
    assert req["learned"] == [] and req["all_beat"] is None
    s["oracle"]["learned"] = True  # judged as if learned
    req = requirement(s, "task-static")
    assert req["all_beat"] is True and req["verdicts"] == {"oracle": "beats"}


def _shift(hull: np.ndarray, dc: float) -> np.ndarray:
    return hull + np.array([dc, 0.0])


def test_a_tied_cheap_end_is_not_significant():
    # both hulls start at the same point (cost 1, quality 0.5): tied there; the policy is
    # better inside. Half the resamples move both cheap ends below cost 1 (there the policy
    # is ahead at c=1), half above it (no difference defined at c=1). Leaving the second
    # half out made the tied point "significantly better" (better at 18 of 20 points,
    # significantly at 19, on a two-model dataset).
    base = np.array([[1.0, 0.5], [3.0, 0.7]])
    pol = np.array([[1.0, 0.5], [2.0, 0.68], [3.0, 0.75]])
    shifts = [-0.1, 0.1] * 50
    cmp = compare_hulls(pol, base, [_shift(pol, s) for s in shifts],
                        [_shift(base, s) for s in shifts], n_grid=5)
    first = cmp["points"][0]
    assert first["cost"] == 1.0 and first["diff"] == 0.0
    assert first["ci"][0] <= 0.0 < first["ci"][1]  # the undefined resamples count as 0
    assert cmp["tied"] == 1 and cmp["better"] == len(cmp["points"]) - 1
    assert cmp["significantly_better"] <= cmp["better"]
    assert f"better than task-static at {cmp['better']} of" in cmp["summary"]


def test_significant_counts_never_exceed_the_point_counts():
    rng = np.random.default_rng(7)

    def hull(n: int) -> np.ndarray:
        c = np.sort(rng.uniform(0.5, 4.0, n))
        return np.column_stack([c, np.sort(rng.uniform(0.3, 0.9, n))])

    for _ in range(200):
        pol, base = hull(int(rng.integers(1, 5))), hull(int(rng.integers(1, 5)))
        jitter = [(rng.normal(0, 0.2), rng.normal(0, 0.02)) for _ in range(40)]
        bp = [pol + np.array(j) for j in jitter]
        bb = [base + np.array(j) for j in jitter]
        cmp = compare_hulls(pol, base, bp, bb, n_grid=8)
        assert cmp["significantly_better"] <= cmp["better"]
        assert cmp["significantly_worse"] <= cmp["worse"]
