"""The generated demo dataset: deterministic, structured, realistic costs, round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from router.catalogue import ModelCatalogue
from router.datasets import DatasetError, load_dataset, save_jsonl
from router.demo_dataset import DEMO_MODELS, DEMO_TASKS, generate_demo_dataset


@pytest.fixture(scope="module")
def demo():
    return generate_demo_dataset()


def test_shape_and_determinism(demo):
    assert len(demo) == 600 and demo.models == list(DEMO_MODELS)
    assert sorted(set(demo.tasks)) == sorted(DEMO_TASKS)
    again = generate_demo_dataset()
    assert again.prompts == demo.prompts
    np.testing.assert_array_equal(again.quality, demo.quality)
    np.testing.assert_array_equal(again.cost, demo.cost)
    other = generate_demo_dataset(seed=1)
    assert other.prompts != demo.prompts
    assert len(generate_demo_dataset(n=37, seed=3)) == 37


def test_structure_is_learnable(demo):
    quality, cost = demo.eval_matrices()
    tasks = np.array(demo.tasks)
    # per-task skills differ: specialists beat gpt-4o-mini on their own task
    j70, jmini = demo.models.index("llama-3.1-70b-instruct"), demo.models.index("gpt-4o-mini")
    trivia = tasks == "trivia"
    assert quality[trivia, j70].mean() > quality[trivia, jmini].mean()
    jh = demo.models.index("claude-haiku-4-5")
    coding = tasks == "coding"
    assert quality[coding, jh].mean() > quality[coding, jmini].mean()
    # the oracle is much better than any single model: prompts differ in who succeeds
    assert quality.max(1).mean() > quality.mean(0).max() + 0.1
    # costs: per call, ordered like the prices, in a realistic range (< 1 cent)
    mean_cost = cost.mean(0)
    assert mean_cost[demo.models.index("gpt-4o")] > mean_cost[jh] > mean_cost[jmini]
    assert cost.min() > 0 and cost.max() < 0.01


def test_quality_levels_and_missing_cells(demo):
    q = demo.quality[~np.isnan(demo.quality)]
    assert q.min() >= 0 and q.max() <= 1
    graded = np.array(demo.tasks) == "summarise"
    vals = demo.quality[~graded]
    assert set(np.unique(vals[~np.isnan(vals)])) <= {0.0, 1.0}
    assert 0 < np.isnan(demo.quality).sum() < 0.03 * demo.quality.size
    none = generate_demo_dataset(n=50, missing_rate=0)
    assert not np.isnan(none.quality).any()


def test_demo_prices_match_catalogue(demo):
    cat = ModelCatalogue.load()
    for m, (p_in, p_out) in DEMO_MODELS.items():
        assert cat.known(m)
        assert cat.price(m) == pytest.approx((p_in, p_out))


def test_save_and_reload(demo, tmp_path):
    path = save_jsonl(demo, tmp_path / "demo.jsonl")
    back = load_dataset(path)
    assert back.prompts == demo.prompts and back.tasks == demo.tasks and back.ids == demo.ids
    np.testing.assert_array_equal(back.quality, demo.quality)
    np.testing.assert_array_equal(back.cost, demo.cost)


def test_bad_arguments():
    with pytest.raises(DatasetError):
        generate_demo_dataset(n=0)
    with pytest.raises(DatasetError):
        generate_demo_dataset(missing_rate=1.0)
