"""Loaders on the real shared data (skipped when ../shared/datasets is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from router.datasets import load_dataset, load_split
from tests.conftest import ROUTERBENCH, ROUTERDC, needs_shared

pytestmark = [needs_shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def routerbench():
    return load_split(ROUTERBENCH)


def test_routerbench_subset_shape(routerbench):
    train, test = routerbench.train, routerbench.test
    assert (len(train), len(test)) == (1338, 573)
    assert train.n_models == 11 and train.models == test.models
    assert int((~train.mask).sum()) == 92  # the documented empty quality cells
    assert train.tasks.count("arc-challenge") == 1039 and test.tasks.count("mbpp") == 128
    assert not np.isnan(train.cost).any()
    assert train.responses is not None and train.prompts[0].strip()


def test_routerbench_reference_figures(routerbench):
    quality, cost = routerbench.test.eval_matrices()
    j = routerbench.test.models.index("gpt-4-1106-preview")
    assert quality[:, j].mean() == pytest.approx(0.887, abs=5e-4)
    assert cost[:, j].mean() * 1000 == pytest.approx(6.03, abs=5e-3)
    best = quality.max(1, keepdims=True)
    oracle_cost = np.where(quality >= best, cost, np.inf).min(1).mean() * 1000
    assert best.mean() == pytest.approx(0.958, abs=5e-4)
    assert oracle_cost == pytest.approx(0.29, abs=0.01)


def test_routerdc_pairs_with_dash_names():
    split = load_split(ROUTERDC, responses=False)
    assert len(split.train) == 2000 + 1000 + 2000 + 820 + 115
    assert len(split.test) == 4213 + 1319 + 3475 + 352 + 49
    assert sorted(set(split.test.tasks)) == ["arc_challenge", "cmmlu", "gsm8k", "humaneval",
                                             "mmlu"]
    assert split.train.n_models == 7
    assert (split.test.cost > 0).all()  # catalogue-priced


def test_single_routerdc_file():
    ds = load_dataset(ROUTERDC / "gsm8k-train.json")
    assert len(ds) == 1000 and set(ds.tasks) == {"gsm8k"}
