"""Distance-aware backoff (policies._backoff): fitted by leaving training tasks out, it
moves unfamiliar queries to the global prior when borrowing another task's means loses,
and keeps the anchor when it wins."""

from __future__ import annotations

import numpy as np
import pytest

from policies._anchor import TaskPrior
from policies._backoff import fit_backoff, left_out_gains
from policies._priors import encode_tasks

D = 16


def cluster(centre: int, n: int, rng, spread: float = 0.5) -> np.ndarray:
    """``n`` unit vectors around axis ``centre`` (scaled 3, Gaussian noise)."""
    X = rng.normal(scale=spread, size=(n, D))
    X[:, centre] += 3.0
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def world(task_axes: dict[str, int], task_p: dict[str, list[float]], n: int, seed: int):
    """Rows of each task around its axis; 0/1 quality drawn with the task's odds; all
    models cost the same (so quality alone decides, at every lam)."""
    rng = np.random.default_rng(seed)
    X, Q, tasks = [], [], []
    for t, axis in task_axes.items():
        X.append(cluster(axis, n, rng))
        Q.append((rng.random((n, len(task_p[t]))) < np.array(task_p[t])).astype(np.float64))
        tasks += [t] * n
    X, Q = np.concatenate(X), np.concatenate(Q)
    return X, Q, np.full(Q.shape, 0.001), tasks


# three specialists (each right on its own task only) and a generalist (0.7 everywhere):
# a task left out borrows the nearest other task's specialist and loses to the generalist
SPECIALISTS = {"a": [0.95, 0.1, 0.1, 0.7], "b": [0.1, 0.95, 0.1, 0.7],
               "c": [0.1, 0.1, 0.95, 0.7]}


def test_backoff_moves_unfamiliar_queries_to_the_global_prior_when_the_anchor_loses():
    X, Q, C, tasks = world({"a": 0, "b": 1, "c": 2}, SPECIALISTS, 150, 0)
    names, codes = encode_tasks(tasks, len(tasks))
    prior = TaskPrior.fit(X, codes, names, Q, C)
    backoff = prior.backoff
    assert backoff.active and backoff.fitted.startswith("leave-one-task-out over 3")
    gains = backoff.info["left_out_tasks"]
    assert sorted(gains) == ["a", "b", "c"] and all(g["n"] == 150 for g in gains.values())
    for g in gains.values():  # the anchor loses about 0.6 on every left-out task ...
        assert g["anchored_minus_global"] < -0.4
        assert g["backoff_minus_global"] > g["anchored_minus_global"] + 0.3  # ... the fit not
    rng = np.random.default_rng(1)
    familiar, new_task = cluster(1, 200, rng), cluster(5, 200, rng)
    _, _, fam_in = prior.task_means(familiar)
    _, _, fam_out = prior.task_means(new_task)
    assert prior.weight(fam_in).mean() > 0.9 and prior.weight(fam_out).mean() < 0.1
    # familiar "b" prompts keep b's specialist; a new task gets the generalist
    assert np.mean(prior.query(familiar)[0].argmax(axis=1) == 1) > 0.98
    assert np.all(prior.query(new_task)[0].argmax(axis=1) == 3)


def test_backoff_keeps_the_anchor_when_left_out_tasks_gain_from_it():
    # two families of neighbouring tasks (a1 near a2, b1 near b2): a left-out task borrows
    # its neighbour's best model, right for it, while the global prior leans to the other
    # family's model (two tasks against one)
    axes = {"a1": 0, "a2": 0, "b1": 1, "b2": 1}
    p = {"a1": [0.9, 0.2], "a2": [0.9, 0.2], "b1": [0.2, 0.9], "b2": [0.2, 0.9]}
    X, Q, C, tasks = world(axes, p, 100, 2)
    names, codes = encode_tasks(tasks, len(tasks))
    backoff = fit_backoff(X, codes, names, Q, C, k=10)
    gains = backoff.info["left_out_tasks"]
    assert sorted(gains) == ["a1", "a2", "b1", "b2"]
    assert all(g["anchored_minus_global"] > 0.3 for g in gains.values())
    prior = TaskPrior.fit(X, codes, names, Q, C)
    _, _, fam = prior.task_means(cluster(0, 100, np.random.default_rng(3)))
    assert prior.weight(fam).min() > 0.9


def test_a_single_training_task_has_no_backoff_and_no_left_out_record():
    X, Q, C, tasks = world({"a": 0}, {"a": [0.9, 0.2]}, 50, 4)
    names, codes = encode_tasks(tasks, len(tasks))
    backoff = fit_backoff(X, codes, names, Q, C, k=10)
    assert not backoff.active and backoff.fitted.startswith("none")
    assert "left_out_tasks" not in backoff.info
    np.testing.assert_allclose(backoff.global_quality, np.nanmean(Q, axis=0))


def test_left_out_gains_on_hand_made_rows():
    codes = np.array([0, 0, 1])
    out = left_out_gains(codes, ["x", "y"], anchored=np.array([1.0, 0.0, 0.2]),
                         global_=np.array([0.5, 0.5, 0.6]), chosen=np.array([1.0, 0.5, 0.6]))
    assert out == {"x": {"anchored_minus_global": 0.0, "backoff_minus_global": 0.25, "n": 2},
                   "y": {"anchored_minus_global": pytest.approx(-0.4),
                         "backoff_minus_global": 0.0, "n": 1}}
