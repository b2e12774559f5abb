"""``router eval --online --auto-rewards`` (eval/online_auto.py) on a synthetic stream where
the cheap models changed after training: only the cascade's agreement labels say so."""

from __future__ import annotations

import numpy as np
import pytest

from eval.online_auto import AutoRewardError, cascade_labels, run_online_auto
from router.dataset import RoutingDataset

MODELS = ["cheap-a", "cheap-b", "strong"]
Q = "Question {}: which of the following is right?\nA) one\nB) two\nC) three\nD) four"


def dataset(n: int, cheap_acc: float | tuple[float, float], seed: int
            ) -> tuple[RoutingDataset, np.ndarray]:
    acc_a, acc_b = cheap_acc if isinstance(cheap_acc, tuple) else (cheap_acc, cheap_acc)
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n)
    quality = np.zeros((n, 3))
    responses = []
    for i in range(n):
        row = []
        for j, acc in enumerate((acc_a, acc_b, 0.97)):
            ok = rng.random() < acc
            letter = truth[i] if ok else (truth[i] + rng.integers(1, 4)) % 4
            row.append(f"The answer is ({'ABCD'[letter]}).")
            quality[i, j] = float(ok)
        responses.append(row)
    cost = np.tile([1e-4, 1e-4, 3e-3], (n, 1))
    X = rng.standard_normal((n, 8)).astype(np.float32) * 0.1 + 1.0
    ds = RoutingDataset("toy", [Q.format(i) for i in range(n)], ["mc"] * n, MODELS, quality,
                        cost, ids=[f"t{i}" for i in range(n)], responses=responses)
    return ds, X


def test_cascade_labels_replay_the_recorded_answers():
    ds, X = dataset(40, 0.7, 1)
    from policies import make_policy

    cascade = make_policy("cascade").fit_dataset(ds, X)
    labels = cascade_labels(cascade, ds, 100.0)
    plan = cascade.plan(ds.prompts[0], lam=100.0)
    assert plan.first() == ("cheap-a", "cheap-b")
    q = ds.quality
    for i, lab in enumerate(labels):
        got = {ds.models[j]: r for j, r, _ in lab}
        if ds.responses[i][0] == ds.responses[i][1]:
            assert got == {"cheap-a": 1.0, "cheap-b": 1.0}
        else:  # escalated: the first stage is labelled by agreement with strong
            assert set(got) >= {"cheap-a", "cheap-b"}
            for j in (0, 1):
                same = ds.responses[i][j] == ds.responses[i][2]
                assert got[MODELS[j]] == float(same)
        assert all(c == pytest.approx(ds.cost[i, j]) for j, _, c in lab)
    assert np.isfinite(q).all()


def test_auto_rewards_alone_teach_the_bandit_which_cheap_model_got_worse():
    train, X_train = dataset(160, (0.55, 0.65), 2)  # the prior prefers cheap-b
    test, X_test = dataset(120, (0.95, 0.3), 3)  # after training: cheap-a good, cheap-b bad
    res = run_online_auto(train=train, test=test, X_train=X_train, X_test=X_test,
                          weight=1.0, cascade_lam=100.0, budgets=(0.1,), progress=False)
    assert res["labels"]["labels_per_query"] >= 2
    assert res["labels"]["label_accuracy"] > 0.85
    row = res["budgets"][0]
    assert row["auto"]["quality"] > row["prior-only"]["quality"] + 0.3
    assert row["all-labels"]["quality"] > row["prior-only"]["quality"] + 0.3  # the ceiling
    runs = res["replay"]["budgets"][0]["runs"]
    assert runs["prior-only"]["model_share"].get("cheap-b", 0) > 0.5
    assert runs["auto"]["model_share"].get("cheap-a", 0) > 0.5


def test_chosen_on_train_and_clear_errors():
    train, X_train = dataset(60, 0.7, 4)
    test, X_test = dataset(20, 0.7, 5)
    res = run_online_auto(train=train, test=test, X_train=X_train, X_test=X_test,
                          budgets=(0.3,), progress=False, weights=(0.5, 1.0), lams=(100.0,))
    chosen = res["chosen_on_train"]
    assert (chosen["weight"], chosen["cascade_lam"]) == (res["weight"], res["cascade_lam"])
    scores = chosen["validation_quality"]
    assert set(scores) == {"auto-w0.5-lam100", "auto-w1-lam100"}
    assert scores[f"auto-w{res['weight']:g}-lam100"] == max(scores.values())
    train.responses = None
    with pytest.raises(AutoRewardError, match="no recorded responses"):
        run_online_auto(train=train, test=test, X_train=X_train, X_test=X_test)


def test_cli_needs_online(tmp_path, capsys):
    from router.cli import main

    assert main(["eval", "--auto-rewards", "--out", str(tmp_path)]) != 0
    assert "--auto-rewards replays the online bandit: give --online too" in capsys.readouterr().err
