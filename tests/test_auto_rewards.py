"""Automatic cascade rewards: which calls get which label, and the weighted bandit update."""

from __future__ import annotations

import numpy as np
import pytest

from policies import make_policy
from policies.cascade import CascadePlan, CascadeStage
from router.auto_rewards import auto_labels, weighted_update

PLAN = CascadePlan("mc", (CascadeStage(("a", "b"), 2), CascadeStage(("c",), 1)))


def decide(answers: dict[str, str | None]) -> dict[str, float]:
    step = PLAN.step(answers)
    assert step.done
    return auto_labels(PLAN, answers, step.model, step.agreed)


def test_agreement_labels_every_agreeing_call():
    assert decide({"a": "The answer is (B).", "b": "(B)"}) == {"a": 1.0, "b": 1.0}


def test_escalated_answer_labels_the_first_stage():
    labels = decide({"a": "The answer is (A).", "b": "Answer: C", "c": "The answer is (A)."})
    assert labels == {"a": 1.0, "b": 0.0, "c": 1.0}
    # the escalated answer alone confirms nothing about itself
    assert decide({"a": "(A)", "b": "(C)", "c": "(D)"}) == {"a": 0.0, "b": 0.0}


def test_failed_calls_and_keyless_answers():
    assert decide({"a": None, "b": "(B)", "c": "(B)"}) == {"b": 1.0, "c": 1.0}
    # no answer of the kind: a disagreement for the one who gave it
    assert decide({"a": "no idea", "b": "(B)", "c": "(B)"}) == {"a": 0.0, "b": 1.0, "c": 1.0}
    assert decide({"a": None, "b": None, "c": None}) == {}


def test_weighted_update_is_a_weighted_rank_one_update():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 8)).astype(np.float32)
    q = (rng.random((40, 2)) < 0.6).astype(float)
    policy = make_policy("linucb", alpha=0.0, fallback=False).fit(
        X, q, np.tile([0.1, 1.0], (40, 1)), ["m0", "m1"])
    with policy.store.read() as st:
        A0, b0 = np.linalg.inv(st.A_inv[1]), st.b[1].copy()
    x = rng.standard_normal(8).astype(np.float32)
    weighted_update(policy, x, "m1", 1.0, 0.5, 0.25)
    z = policy.features(x)[0]
    with policy.store.read() as st:
        assert np.allclose(np.linalg.inv(st.A_inv[1]), A0 + 0.25 * np.outer(z, z), atol=1e-6)
        assert np.allclose(st.b[1], b0 + 0.25 * z, atol=1e-9)
    with pytest.raises(ValueError, match="weight"):
        weighted_update(policy, x, "m1", 1.0, 0.5, 1.5)
