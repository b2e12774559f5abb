"""eval.metrics on small hand-worked curves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval import metrics as M

WEAK = M.Anchor(cost=1.0, quality=0.5)
STRONG = M.Anchor(cost=5.0, quality=0.9)


def hull_of(points):
    pts = np.asarray(points, dtype=float)
    return M.pareto_hull(pts[:, 0], pts[:, 1])


def test_hull_drops_dominated_and_under_chord_points():
    # (2, 0.4) is dominated by the cheaper, better (1, 0.5); (2.5, 0.55) lies under the
    # chord (1, 0.5)-(3, 0.8) (0.725 there); (4, 0.8) is dominated by (3, 0.8).
    hull = hull_of([(2, 0.4), (1, 0.5), (3, 0.8), (2.5, 0.55), (4, 0.8), (0.5, 0.2)])
    np.testing.assert_allclose(hull, [[0.5, 0.2], [1, 0.5], [3, 0.8]])


def test_hull_keeps_best_of_equally_cheap_points_and_drops_collinear():
    hull = hull_of([(1, 0.3), (1, 0.6), (2, 0.7), (3, 0.8)])  # (2, .7) is on the chord
    np.testing.assert_allclose(hull, [[1, 0.6], [3, 0.8]])


def test_hull_of_one_point_is_that_point():
    np.testing.assert_allclose(hull_of([(2, 0.6)]), [[2, 0.6]])
    np.testing.assert_allclose(hull_of([(2, 0.6), (2, 0.6)]), [[2, 0.6]])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 100)), min_size=1, max_size=40))
def test_hull_is_increasing_concave_and_covers_every_point(points):
    pts = np.asarray(points, dtype=float) / [100.0, 100.0]  # costs 0..10, quality 0..1
    hull = M.pareto_hull(pts[:, 0], pts[:, 1])
    assert np.all(np.diff(hull[:, 0]) > 0) and np.all(np.diff(hull[:, 1]) > 0)
    slopes = np.diff(hull[:, 1]) / np.diff(hull[:, 0])
    assert np.all(np.diff(slopes) <= 1e-9 * (1 + np.abs(slopes[1:])))
    assert hull[0, 0] == pts[:, 0].min()
    assert hull[-1, 1] == pts[:, 1].max()
    # every operating point is on or below the hull, and hull vertices are real points
    assert np.all(M.hull_value(hull, pts[:, 0]) >= pts[:, 1] - 1e-9)
    for c, q in hull:
        assert np.any((pts[:, 0] == c) & (pts[:, 1] == q))


def test_aiq_hand_worked():
    hull = hull_of([(1, 0.5), (3, 0.8)])
    # [0,1]: 0 (no operating point yet); [1,3]: trapezoid 1.3; [3,5]: flat 0.8 * 2 = 1.6
    assert M.aiq(hull, 0.0, 5.0) == pytest.approx(2.9 / 5)
    # range starting inside the hull: [2,3] trapezoid (0.65 + 0.8) / 2, then flat 0.8 * 2
    assert M.aiq(hull, 2.0, 5.0) == pytest.approx((0.725 + 1.6) / 3)


def test_aiq_routerbench_hand_worked_against_ours():
    # two curves; the largest cost of all curves is 6 (curve b's last point)
    a = hull_of([(1, 0.5), (3, 0.8)])
    b = hull_of([(2, 0.6), (6, 0.9)])
    # RouterBench: a from its cheapest point 1 to 6: trapezoid [1,3] 1.3 + flat 0.8 * 3 =
    # 3.7, over 6; b: trapezoid [2,6] (0.6 + 0.9) / 2 * 4 = 3.0, over 6
    assert M.aiq_routerbench(a, 6.0) == pytest.approx(3.7 / 6)
    assert M.aiq_routerbench(b, 6.0) == pytest.approx(3.0 / 6)
    # ours over single models costing 1..6: the same areas (0 before the cheapest point)
    # divided by the range 5, not by 6: the (0, 1) stretch is left out, not counted as 0
    assert M.aiq(a, 1.0, 6.0) == pytest.approx(3.7 / 5)
    assert M.aiq(b, 1.0, 6.0) == pytest.approx(3.0 / 5)
    # a hull starting at cost 0 integrates alike in both when c_min = 0 and c_top = c_max
    z = hull_of([(0, 0.2), (4, 0.6)])
    assert M.aiq_routerbench(z, 4.0) == pytest.approx(M.aiq(z, 0.0, 4.0)) == pytest.approx(0.4)
    assert M.aiq_routerbench(hull_of([(2, 0.6)]), 0.0) == 0.0  # zero range: value at 0
    with pytest.raises(ValueError, match="below the hull"):
        M.aiq_routerbench(b, 1.0)


def test_identical_curves_have_equal_aiq_and_order_does_not_matter():
    rng = np.random.default_rng(1)
    c, q = rng.random(30), rng.random(30)
    perm = rng.permutation(30)
    a = M.aiq(M.pareto_hull(c, q), 0.1, 0.9)
    b = M.aiq(M.pareto_hull(c[perm], q[perm]), 0.1, 0.9)
    assert a == b


def test_single_model_degenerate_curve_aiq():
    hull = hull_of([(2, 0.6)] * 5)  # the same point at every lam
    assert hull.shape == (1, 2)
    # counts 0 on [1, 2), 0.6 on [2, 4]: 0.6 * 2 / 3
    assert M.aiq(hull, 1.0, 4.0) == pytest.approx(0.4)
    assert M.aiq(hull_of([(1, 0.3)]), 1.0, 4.0) == pytest.approx(0.3)  # the cheapest model
    assert M.aiq(hull_of([(4, 0.9)]), 1.0, 4.0) == pytest.approx(0.0)  # the dearest model
    assert M.aiq(hull, 2.0, 2.0) == pytest.approx(0.6)  # zero-width range


def test_apgr_of_strong_weak_and_random_mix():
    assert M.apgr(hull_of([(5, 0.9)]), WEAK, STRONG) == (pytest.approx(1.0), 0.0)
    assert M.apgr(hull_of([(1, 0.5)]), WEAK, STRONG) == (pytest.approx(0.0), 1.0)
    # mixing weak and strong at random recovers the gap linearly: APGR 1/2
    mix = hull_of([(1 + 4 * t, 0.5 + 0.4 * t) for t in np.linspace(0, 1, 11)])
    value, coverage = M.apgr(mix, WEAK, STRONG)
    assert value == pytest.approx(0.5) and coverage == pytest.approx(1.0)


def test_apgr_and_cpt_on_a_known_curve():
    hull = hull_of([(1, 0.5), (2, 0.8), (5, 0.9)])
    # normalised: x = (c - 1) / 4, PGR = (q - .5) / .4 -> (0, 0), (.25, .75), (1, 1)
    value, coverage = M.apgr(hull, WEAK, STRONG)
    assert value == pytest.approx(0.75 / 2 * 0.25 + (0.75 + 1) / 2 * 0.75)
    assert coverage == 1.0
    assert M.cpt(hull, WEAK, STRONG, 0.5) == pytest.approx(0.25 * 0.5 / 0.75)
    assert M.cpt(hull, WEAK, STRONG, 0.8) == pytest.approx(0.25 + 0.05 / 0.25 * 0.75)
    assert M.cpt(hull_of([(1, 0.5), (2, 0.6)]), WEAK, STRONG, 0.8) is None  # never
    # a router cheaper than the weak model that already recovers 50% needs 0% strong calls
    assert M.cpt(hull_of([(0.5, 0.7), (2, 0.95)]), WEAK, STRONG, 0.5) == 0.0


def test_apgr_averages_over_the_covered_range_only():
    hull = hull_of([(3, 0.7), (5, 0.9)])  # starts at x = 0.5 with PGR 0.5
    value, coverage = M.apgr(hull, WEAK, STRONG)
    assert coverage == pytest.approx(0.5)
    assert value == pytest.approx(0.75)


def test_apgr_undefined_when_strong_is_not_better():
    assert M.apgr(hull_of([(1, 0.5)]), WEAK, M.Anchor(5.0, 0.5)) == (None, 0.0)
    assert M.cpt(hull_of([(1, 0.5)]), WEAK, M.Anchor(1.0, 0.9), 0.5) is None
    assert M.gap_defined(WEAK, STRONG) is None


def test_aiq_difference_by_segment_hand_worked_and_sums_to_the_aiq_difference():
    hull = hull_of([(1, 0.5), (3, 0.8)])
    base = hull_of([(1, 0.5), (5, 0.86)])
    # [1,3]: hull 1.3 - base (0.5 + 0.68) = 0.12; [3,5]: hull 1.6 - base (0.68 + 0.86) = 0.06
    parts = M.aiq_difference_by_segment(hull, base, np.array([1.0, 3.0, 5.0]))
    assert parts == pytest.approx([0.12 / 4, 0.06 / 4])
    # base better late: the segment past 4 loses
    late = M.aiq_difference_by_segment(hull, base, np.array([1.0, 4.0, 5.0]))
    assert late[1] < 0 < late[0]
    edges = np.array([1.0, 1.7, 2.2, 3.0, 4.4, 5.0])
    assert M.aiq_difference_by_segment(hull, base, edges).sum() == pytest.approx(
        M.aiq(hull, 1.0, 5.0) - M.aiq(base, 1.0, 5.0))
    assert M.aiq_difference_by_segment(hull, hull, edges) == pytest.approx(np.zeros(5))
    with pytest.raises(ValueError):
        M.aiq_difference_by_segment(hull, base, np.array([3.0, 1.0]))


def test_cost_to_reach_and_quality_at_cost():
    hull = hull_of([(1, 0.5), (3, 0.8)])
    assert M.cost_to_reach(hull, 0.65) == pytest.approx(2.0)
    assert M.cost_to_reach(hull, 0.4) == 1.0
    assert M.cost_to_reach(hull, 0.8) == pytest.approx(3.0)
    assert M.cost_to_reach(hull, 0.81) is None
    assert M.quality_at_cost(hull, 0.5) is None
    assert M.quality_at_cost(hull, 2.0) == pytest.approx(0.65)
    assert M.quality_at_cost(hull, 10.0) == pytest.approx(0.8)
    assert M.max_quality(np.array([1, 3, 4.0]), np.array([0.5, 0.8, 0.8])) == (0.8, 3.0)


def test_bootstrap_counts_are_seeded_resamples():
    a = M.bootstrap_counts(50, 200, seed=3)
    assert a.shape == (200, 50) and np.all(a.sum(axis=1) == 50)
    np.testing.assert_array_equal(a, M.bootstrap_counts(50, 200, seed=3))
    assert not np.array_equal(a, M.bootstrap_counts(50, 200, seed=4))
    assert M.percentile_ci(np.array([np.nan, np.nan])) is None
    lo, hi = M.percentile_ci(np.arange(101.0))
    assert lo == pytest.approx(2.5) and hi == pytest.approx(97.5)
