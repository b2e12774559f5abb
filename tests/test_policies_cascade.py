"""Cascade plans (policies/cascade.py), their vectorised replay and the train-split search
(policies/cascade_search.py), on small data the tests make, and offline replay
(eval/cascades.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.cascades import CascadeEvalError, no_responses_note, replay
from policies import Policy, PolicyError, make_policy
from policies.cascade import CascadePlan, CascadePolicy, CascadeStage
from policies.cascade_search import Table, score_candidates, simulate
from router.dataset import RoutingDataset
from tests.conftest import ROUTERBENCH, needs_shared

LETTERS = "ABCD"
MODELS = ["cheap-a", "cheap-b", "big"]
PRICE = {"cheap-a": 0.0001, "cheap-b": 0.0002, "big": 0.01}
SKILL = {"cheap-a": 0.72, "cheap-b": 0.75, "big": 0.97}


def mc_prompt(i: int) -> str:
    return (f"Question {i}: which option is right?\nA) one\nB) two\nC) three\nD) four\n"
            "Answer:\n")


def make_data(n: int, seed: int, *, numbers: int = 0) -> RoutingDataset:
    """Multiple-choice rows (and ``numbers`` arithmetic rows): each model answers right
    with its skill, else a random wrong answer; quality 1 when right."""
    rng = np.random.default_rng(seed)
    prompts, tasks, responses, quality = [], [], [], []
    for i in range(n + numbers):
        is_mc = i < n
        truth = LETTERS[rng.integers(4)] if is_mc else str(rng.integers(10, 99))
        row, qrow = [], []
        for m in MODELS:
            right = rng.random() < SKILL[m]
            if right:
                ans = truth
            elif is_mc:
                ans = rng.choice([x for x in LETTERS if x != truth])
            else:
                ans = str(int(truth) + int(rng.integers(1, 5)))
            row.append(ans if is_mc else f"Adding them up gives {ans}.")
            qrow.append(float(right))
        prompts.append(mc_prompt(i) if is_mc else f"How many apples are left in basket {i}?")
        tasks.append("quiz" if is_mc else "sums")
        responses.append(row)
        quality.append(qrow)
    cost = np.array([[PRICE[m] * rng.uniform(0.8, 1.2) for m in MODELS]
                     for _ in prompts])
    return RoutingDataset("synthetic", prompts, tasks, list(MODELS), np.array(quality), cost,
                          responses=responses)


@pytest.fixture(scope="module")
def fitted() -> CascadePolicy:
    train = make_data(600, seed=1, numbers=120)
    return make_policy("cascade").fit_dataset(train, np.zeros((len(train), 1), np.float32))


PAIR = CascadePlan("mc", (CascadeStage(("cheap-a", "cheap-b"), 2), CascadeStage(("big",), 1)))


# ---- the decision rule ------------------------------------------------------------------
def test_step_agreement_stops_with_the_preferred_agreeing_model() -> None:
    assert PAIR.first() == ("cheap-a", "cheap-b")
    first = PAIR.step({})
    assert not first.done and first.next_models == ("cheap-a", "cheap-b")
    waiting = PAIR.step({"cheap-a": "B"})
    assert not waiting.done and waiting.next_models == ("cheap-b",)
    step = PAIR.step({"cheap-a": "B", "cheap-b": "(B) two"})
    assert step.done and step.model == "cheap-b" and set(step.agreed) == {"cheap-a", "cheap-b"}


def test_step_disagreement_and_failure_escalate() -> None:
    for answers in ({"cheap-a": "B", "cheap-b": "C"}, {"cheap-a": "B", "cheap-b": None},
                    {"cheap-a": None, "cheap-b": None}, {"cheap-a": "B", "cheap-b": "Hmm,"}):
        step = PAIR.step(answers)
        assert not step.done and step.next_models == ("big",), answers
    final = PAIR.step({"cheap-a": "B", "cheap-b": "C", "big": "C"})
    assert final.done and final.model == "big" and set(final.agreed) == {"cheap-b", "big"}


def test_last_stage_is_accepted_unconditionally_and_failures_fall_back() -> None:
    step = PAIR.step({"cheap-a": "B", "cheap-b": "C", "big": "I am not sure"})
    assert step.done and step.model == "big" and step.agreed == ("big",)
    fallback = PAIR.step({"cheap-a": "B", "cheap-b": "C", "big": None})
    assert fallback.done and fallback.model in {"cheap-a", "cheap-b"}
    nothing = PAIR.step({"cheap-a": None, "cheap-b": None, "big": None})
    assert nothing.done and nothing.model is None and nothing.agreed == ()


LAZY = CascadePlan("mc", (CascadeStage(("a", "b"), 3), CascadeStage(("c",), 3),
                          CascadeStage(("d",), 1)))
TRIPLE = CascadePlan("mc", (CascadeStage(("a", "b", "c"), 3), CascadeStage(("d",), 1)))


def test_a_stage_that_cannot_reach_its_min_agree_is_skipped() -> None:
    assert LAZY.step({}).next_models == ("a", "b")  # the pair can still lead to 3 of 3
    assert LAZY.step({"a": "B", "b": "B"}).next_models == ("c",)
    for pair in ({"a": "B", "b": "C"}, {"a": "B", "b": None}, {"a": None, "b": None}):
        assert LAZY.step(pair).next_models == ("d",), pair  # c could not make 3: not called
    # the same decisions as calling the three at once, on every answer pattern
    for a, b, c, d in np.ndindex(3, 3, 3, 2):
        answers = dict(zip("abcd", ("AB"[x] if x < 2 else None for x in (a, b, c, d)),
                           strict=True))
        lazy, triple = {}, {}
        for plan, got in ((LAZY, lazy), (TRIPLE, triple)):
            step = plan.step(got)
            while not step.done:
                got.update({m: answers[m] for m in step.next_models})
                step = plan.step(got)
            got["model"] = step.model
        assert lazy["model"] == triple["model"], answers
        assert ("c" in lazy) == (a == b and a < 2)


def test_candidate_sums_match_simulate() -> None:
    """score_candidates' per-fold sums are simulate's, plan by plan (lazy stages too)."""
    rng = np.random.default_rng(3)
    n, m = 120, 5
    choices = np.array(list("ABC") + [None], dtype=object)
    responses = [[choices[k] for k in rng.choice(4, size=m, p=[.4, .3, .2, .1])]
                 for _ in range(n)]
    quality, cost = rng.random((n, m)), rng.random((n, m))
    table = Table.build(["mc"] * n, responses, quality, cost)
    rank = rng.permutation(m)
    folds = [np.arange(0, n, 2), np.arange(1, n, 2)]
    cand = score_candidates(table, rank, folds, 3)
    assert any(len(st) == 3 and st[0][1] == 3 for st in cand.stages)  # lazy triples searched
    for p in rng.choice(len(cand.stages), size=200, replace=False):
        q, c, _ = simulate(table, cand.stages[p], rank)
        np.testing.assert_allclose(cand.q_fold[p], [q[f].sum() for f in folds])
        np.testing.assert_allclose(cand.c_fold[p], [c[f].sum() for f in folds])


def test_kind_candidates_scores_the_search_family_of_one_kind() -> None:
    """kind_candidates (the search's per-kind step, also used by bench_cascade.py): best
    model first, folds partition the rows, exact agreement for letters and every
    threshold of the grid for code, sums as simulate's."""
    from policies.cascade_search import THRESHOLDS, kind_candidates

    rng = np.random.default_rng(5)
    n, m = 60, 4
    responses = [[str(rng.choice(list("AB"))) for _ in range(m)] for _ in range(n)]
    quality = (rng.random((n, m)) < np.array([0.5, 0.9, 0.6, 0.7])).astype(float)
    table = Table.build(["mc"] * n, responses, quality, rng.random((n, m)))
    cand, prefer, parts = kind_candidates(table, "mc", folds=3, max_first=2, seed=1)
    assert prefer[0] == int(np.argmax(quality.mean(axis=0)))
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert set(cand.threshold.tolist()) == {1.0}
    rank = np.empty(m, dtype=np.int64)
    rank[prefer] = np.arange(m)
    for p in range(0, len(cand.stages), 7):
        q, _, _ = simulate(table, cand.stages[p], rank)
        np.testing.assert_allclose(cand.q_fold[p], [q[f].sum() for f in parts])
    code = Table.build(["code"] * n, [["def f(): return 1"] * m] * n, quality,
                       np.ones((n, m)))
    graded, _, _ = kind_candidates(code, "code", folds=3, max_first=2)
    assert set(graded.threshold.tolist()) == set(THRESHOLDS)


def test_compares_says_whether_a_plan_ever_checks_agreement() -> None:
    one = CascadeStage(("a",), 1)
    assert PAIR.compares
    assert not CascadePlan("mc", (one,)).compares
    assert not CascadePlan("mc", (one, CascadeStage(("b",), 1))).compares  # a fallback only
    assert CascadePlan("mc", (one, CascadeStage(("b",), 2), CascadeStage(("c",), 1))).compares
    assert CascadePlan("mc", (CascadeStage(("a", "b", "c"), 1),)).compares  # a final vote


def test_plan_errors_and_json_round_trip() -> None:
    with pytest.raises(PolicyError, match="does not call"):
        PAIR.step({"stranger": "A"})
    with pytest.raises(PolicyError, match="twice"):
        CascadePlan("mc", (CascadeStage(("a",), 1), CascadeStage(("a",), 1)))
    with pytest.raises(PolicyError, match="answer kind"):
        CascadePlan("essay", (CascadeStage(("a",), 1),))
    with pytest.raises(PolicyError, match="min_agree"):
        CascadeStage(("a",), 0)
    with pytest.raises(PolicyError, match="not a cascade plan"):
        CascadePlan.from_json({"kind": "mc"})
    assert CascadePlan.from_json(json.loads(json.dumps(PAIR.to_json()))) == PAIR
    assert PAIR.describe() == "cheap-a+cheap-b>=2 -> big"


def _random_plan(rng: np.random.Generator, m: int) -> list[tuple[list[int], int]]:
    cols = list(rng.permutation(m))
    stages, start = [], 0
    for _ in range(int(rng.integers(1, 4))):
        if start >= m:
            break
        size = int(rng.integers(1, min(3, m - start) + 1))
        stages.append((cols[start:start + size], int(rng.integers(1, 4))))
        start += size
    return stages


WORDS = ["return", "a", "b", "+", "-", "x", "sorted", "len", "(", ")"]


@pytest.mark.parametrize("kind, threshold", [("mc", 1.0), ("text", 0.5), ("text", 1.0)])
def test_vectorised_replay_matches_step(kind: str, threshold: float) -> None:
    """simulate() (the search's numpy replay) decides exactly as CascadePlan.step, for
    exact agreement and for graded (token overlap) agreement of free text."""
    rng = np.random.default_rng(7)
    n, m = 200, 5
    models = [f"m{j}" for j in range(m)]
    if kind == "mc":
        choices = np.array(list("ABC") + ["Hmm", None], dtype=object)
        responses = [[choices[k] for k in rng.choice(5, size=m, p=[.3, .3, .2, .1, .1])]
                     for _ in range(n)]
    else:
        responses = [[None if rng.random() < 0.1 else
                      " ".join(rng.choice(WORDS[:6], size=int(rng.integers(1, 4))))
                      for _ in range(m)] for _ in range(n)]
    quality = rng.random((n, m))
    cost = rng.random((n, m))
    table = Table.build([kind] * n, responses, quality, cost)
    for _ in range(30):
        stages = _random_plan(rng, m)
        prefer = tuple(models[j] for j in rng.permutation(m))
        plan = CascadePlan(kind, tuple(CascadeStage(tuple(models[j] for j in cols), need)
                                       for cols, need in stages), prefer, threshold)
        rank = np.array([plan.rank().get(x, m + j) for j, x in enumerate(models)])
        q, c, rep = simulate(table, stages, rank, threshold)
        for i in range(n):
            answers: dict[str, str | None] = {}
            spent = 0.0
            step = plan.step(answers)
            while not step.done:
                for x in step.next_models:
                    answers[x] = responses[i][models.index(x)]
                    spent += cost[i, models.index(x)]
                step = plan.step(answers)
            want = -1 if step.model is None else models.index(step.model)
            assert rep[i] == want, (plan.describe(), responses[i])
            assert c[i] == pytest.approx(spent)
            assert q[i] == (quality[i, want] if want >= 0 else 0.0)


# ---- the learned policy -----------------------------------------------------------------
def test_search_learns_agreement_then_escalation(fitted: CascadePolicy) -> None:
    assert set(fitted.kinds_) == {"mc", "number"}
    best = fitted.plan(mc_prompt(1), lam=0.0)
    assert "big" in best.models
    cheapest = fitted.plan(mc_prompt(1), lam=1e6)
    assert cheapest.models == ("cheap-a",)
    middle = [c.plan for c in fitted.choices("mc")
              if len(c.plan.stages) > 1 and c.plan.stages[-1].models == ("big",)]
    assert any(set(p.first()) == {"cheap-a", "cheap-b"} and p.stages[0].min_agree == 2
               for p in middle), [p.describe() for p in middle]
    for c in fitted.choices("mc"):  # lam ranges ascend, dearer plans first
        assert c.lam_low >= 0
    lows = [c.lam_low for c in fitted.choices("mc")]
    assert lows == sorted(lows) and lows[0] == 0.0
    assert fitted.plan("How many pears?", lam=0.0).kind == "number"


def test_cascade_beats_every_single_model_on_fresh_data(fitted: CascadePolicy) -> None:
    """On a test set drawn afresh, some learned plan is as good as the big model for a
    fraction of its cost (agreement of the two cheap models is informative here)."""
    test = make_data(400, seed=2)
    lams = [0.0] + list(np.geomspace(1, 1e4, 15))
    out = replay(fitted, test, lams)
    q, c = out.quality.mean(axis=1), out.cost.mean(axis=1)
    big = test.models.index("big")
    big_q, big_c = test.quality[:, big].mean(), test.cost[:, big].mean()
    cheap = (q >= big_q - 0.03) & (c <= 0.6 * big_c)
    assert cheap.any(), list(zip(q.round(3), (c / big_c).round(2), strict=True))
    assert (out.calls >= 1).all() and (out.calls <= 3).all()


def test_lazy_false_searches_no_lazy_plans() -> None:
    rng = np.random.default_rng(5)
    n, m = 60, 5
    models = [f"m{j}" for j in range(m)]
    responses = [[LETTERS[k] for k in rng.integers(0, 4, m)] for _ in range(n)]
    data = RoutingDataset("five", [mc_prompt(i) for i in range(n)], ["quiz"] * n, models,
                          rng.integers(0, 2, (n, m)).astype(float), rng.random((n, m)),
                          responses=responses)
    X = np.zeros((n, 1), np.float32)
    lazy, eager = (make_policy("cascade", lazy=flag).fit_dataset(data, X)
                   for flag in (True, False))
    extra = m * (m - 1) // 2 * (m - 2) * (m - 3)  # pair, third model, final model
    assert (lazy.search_["kinds"]["mc"]["candidates"]
            - eager.search_["kinds"]["mc"]["candidates"]) == extra > 0
    for choices in eager.plans_.values():
        for c in choices:
            assert c.plan.stages[0].min_agree <= len(c.plan.stages[0].models), c.plan


def test_budget_zero_gives_the_cheapest_plans(fitted: CascadePolicy) -> None:
    """A budget is spent on the train mix of kinds (tests/test_cascade_budget.py); below
    the cheapest mix every kind keeps its cheapest train plan."""
    options = fitted.choices("mc")
    assert fitted.plan(mc_prompt(3), budget=0.0).stages == min(
        options, key=lambda c: c.cost).plan.stages
    with pytest.raises(PolicyError, match="budget"):
        fitted.plan(mc_prompt(3), budget=-1.0)


def test_save_load_round_trip(fitted: CascadePolicy, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "cascade")
    config = json.loads((path / "config.json").read_text())
    assert config["policy"] == "cascade" and config["state"]["plans"]["mc"]
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        assert npz.files
    loaded = Policy.load(path)
    assert isinstance(loaded, CascadePolicy)
    assert loaded.plans_ == fitted.plans_
    for lam in (0.0, 30.0, 1e5):
        assert loaded.plan(mc_prompt(5), lam=lam) == fitted.plan(mc_prompt(5), lam=lam)
    X = np.zeros((4, 1), np.float32)
    est, est2 = fitted.predict(X, tasks=["quiz"] * 4), loaded.predict(X, tasks=["quiz"] * 4)
    assert est.quality.shape == (4, 3) and np.allclose(est.quality, est2.quality)
    assert loaded.route(X, tasks=["quiz"] * 4)[0] == MODELS.index("big")
    config["state"]["plans"] = {"mc": [{"lam_low": 0}]}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyError, match="cascade artifact"):
        Policy.load(path)


def test_fit_needs_responses_and_replay_needs_them_too(fitted: CascadePolicy) -> None:
    data = make_data(50, seed=3)
    bare = RoutingDataset("bare", data.prompts, data.tasks, data.models, data.quality,
                          data.cost)
    with pytest.raises(PolicyError, match="responses"):
        make_policy("cascade").fit_dataset(bare, np.zeros((50, 1), np.float32))
    assert "no recorded responses" in (no_responses_note(bare) or "")
    with pytest.raises(CascadeEvalError, match="cascades are skipped"):
        replay(fitted, bare, [0.0])
    with pytest.raises(PolicyError, match="folds"):
        make_policy("cascade", folds=1).fit_dataset(data, np.zeros((50, 1), np.float32))


@pytest.mark.slow
@needs_shared
def test_routerbench_subset_cascade_on_arc() -> None:
    """On the shared subset (choices on train only), the learned ARC cascade gets within
    0.015 of gpt-4's test accuracy for under half of its cost."""
    from router.datasets import load_split

    split = load_split(ROUTERBENCH)
    policy = make_policy("cascade").fit_dataset(
        split.train, np.zeros((len(split.train), 1), np.float32))
    arc = [i for i, t in enumerate(split.test.tasks) if t == "arc-challenge"]
    test = split.test.subset(arc)
    out = replay(policy, test, [0.0] + list(np.geomspace(1, 1e3, 30)))
    g = test.models.index("gpt-4-1106-preview")
    quality, cost = test.eval_matrices()
    q4, c4 = quality[:, g].mean(), cost[:, g].mean()
    q, c = out.quality.mean(axis=1), out.cost.mean(axis=1)
    assert ((q >= q4 - 0.015) & (c <= 0.5 * c4)).any()


# ---- router eval ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jsonl_dirs(tmp_path_factory) -> tuple[Path, Path]:
    from router.datasets import save_jsonl

    with_resp = tmp_path_factory.mktemp("with-responses")
    bare = tmp_path_factory.mktemp("no-responses")
    for part, seed, n in (("train", 11, 300), ("test", 12, 150)):
        data = make_data(n, seed=seed, numbers=n // 5)
        save_jsonl(data, with_resp / f"quiz_{part}.jsonl")
        save_jsonl(RoutingDataset(data.name, data.prompts, data.tasks, data.models,
                                  data.quality, data.cost), bare / f"quiz_{part}.jsonl")
    return with_resp, bare


def test_router_eval_sweeps_cascades_beside_other_policies(jsonl_dirs, tmp_path) -> None:
    from router.cli import main

    out = tmp_path / "out"
    rc = main(["eval", "--data", str(jsonl_dirs[0]), "--out", str(out), "--policies",
               "cascade,task-static", "--bootstrap", "50", "--lams", "auto:20", "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["policies"]["cascade"]
    assert entry["answer_aware"] and entry["learned"]
    assert entry["vs_task_static"]["verdict"] in {"beats", "worse, not significantly",
                                                  "ties"}
    assert entry["vs_best_prompt_only"] is None  # no prompt-only policy in this run
    assert len(entry["cascade"]["plans"]) == len(results["lams"])
    assert max(entry["cascade"]["mean_calls"]) > 1.0  # some lam escalates
    static = results["policies"]["task-static"]
    assert entry["aiq"] > static["aiq"]
    report = (out / "report.md").read_text()
    assert "## Cascades (answer-aware)" in report and "cheap-a+cheap-b>=2 -> big" in report
    assert (out / "pareto.png").stat().st_size > 0


def test_router_eval_skips_cascades_without_responses(jsonl_dirs, tmp_path, capsys) -> None:
    from router.cli import main

    out = tmp_path / "out"
    rc = main(["eval", "--data", str(jsonl_dirs[1]), "--out", str(out), "--policies",
               "cascade,task-static", "--bootstrap", "0", "--quiet", "--no-plots"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert "cascade" not in results["policies"]
    assert "no recorded responses" in results["skipped"]["cascade"]
    assert "skipped: " in (out / "report.md").read_text()
    capsys.readouterr()
    rc = main(["eval", "--data", str(jsonl_dirs[1]), "--out", str(tmp_path / "o2"),
               "--policies", "cascade", "--quiet", "--no-plots"])
    assert rc != 0 and "no policy could be evaluated" in capsys.readouterr().err


def test_unseen_kinds_fall_back_to_all_prompt_plans(fitted: CascadePolicy) -> None:
    """A yes/no prompt (no such train rows) gets the all-prompts plans, extracting yes/no;
    free text gets single-model plans only (what its agreement means was never learned)."""
    plan = fitted.plan("Is the sky blue? Answer yes or no.", lam=30.0)
    assert plan.kind == "yesno"
    for lam in (0.0, 30.0, 300.0, 1e5):
        text = fitted.plan("Tell me a story about a dragon.", lam=lam)
        assert text.kind == "text" and len(text.stages) == 1 and len(text.first()) == 1
