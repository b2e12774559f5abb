"""Leave-one-task-out evaluation (eval/loto.py, `router eval --leave-one-task-out`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval import harness as H
from eval import loto as L
from router.dataset import RoutingDataset

MODELS = ["small", "mid", "large"]
PRICE = {"small": 0.0002, "mid": 0.002, "large": 0.02}
CHANCE = {  # P(correct) per task and model: "large" is best on every task but "code"
    "trivia": {"small": 0.3, "mid": 0.7, "large": 0.9},
    "math": {"small": 0.2, "mid": 0.6, "large": 0.8},
    "code": {"small": 0.7, "mid": 0.9, "large": 0.5},
}


def test_task_folds_need_two_tasks_and_leave_each_out():
    with pytest.raises(L.LotoError, match="at least 2 tasks"):
        L.task_folds(["a", "a"], ["a"])
    folds = L.task_folds(["a", "b", "a", "c"], ["b", "a", "c", "c"])
    assert [f[0] for f in folds] == ["a", "b", "c"]
    for task, train_rows, test_rows in folds:
        assert task not in [["a", "b", "a", "c"][i] for i in train_rows]
        assert all(["b", "a", "c", "c"][i] == task for i in test_rows)


def test_verdicts_and_requirement_on_hand_made_rows():
    assert L.verdict(0.01) == "above"
    assert L.verdict(0.0) == L.verdict(-0.005) == "within"
    assert L.verdict(-0.0051) == "below"

    def row(d):
        return {"diff": d, "verdict": L.verdict(d), "samples": np.array([d - 0.01, d + 0.01]),
                "quality_at_best_single_cost": 0.5 + d, "best_single_quality": 0.5}

    per = {"t1": {"vs_best_single": {"p": row(0.02), "q": row(-0.004)}},
           "t2": {"vs_best_single": {"p": row(-0.004), "q": row(-0.02)}}}
    out = L.summarise(per, ["p", "q"])
    assert out["p"]["met"] and out["p"]["mean_diff"] == pytest.approx(0.008)
    # per-resample means over tasks are -0.002 and 0.018; their 2.5% / 97.5% percentiles
    assert out["p"]["mean_diff_ci"] == pytest.approx([-0.0015, 0.0175])
    assert not out["q"]["met"] and out["q"]["tasks_below"] == ["t2"]
    assert out["q"]["worst_task"] == "t2"


def test_versus_best_single_reads_the_hull_at_best_singles_cost():
    # 4 queries; columns small (cost 1), large (cost 3). best-single = large everywhere:
    # quality 0.5 at cost 3. The policy routes queries 0, 1 to small and 2, 3 to large at
    # lam 0 (quality 0.75, cost 2), and all to small at lam 1 (quality 0.25, cost 1).
    quality = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cost = np.array([[1.0, 3.0]] * 4)
    test = RoutingDataset("t", [f"q{i}" for i in range(4)], ["a"] * 4, ["small", "large"],
                          quality, cost)
    ev = H.Evaluation(test, np.array([0.0, 1.0]))
    ev.add(H.PolicyResult("best-single", "best-single", "trained", {},
                          np.ones((2, 4), dtype=np.int64)))
    ev.add(H.PolicyResult("p", "knn", "trained", {}, np.array([[0, 0, 1, 1], [0, 0, 0, 0]])))
    counts = np.ones((1, 4))  # one "resample": the sample itself
    r = L.versus_best_single(ev, "p", "best-single", counts)
    # the hull is (1, 0.25) - (2, 0.75), flat after: 0.75 at cost 3
    assert r["best_single_cost"] == 3.0 and r["best_single_quality"] == 0.5
    assert r["quality_at_best_single_cost"] == pytest.approx(0.75)
    assert r["diff"] == pytest.approx(0.25) and r["verdict"] == "above"
    assert r["diff_ci"] == pytest.approx([0.25, 0.25])


def _records(task: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"{task}.{seed}.{i}", "prompt": f"{task} question number {i}?",
             "task": task,
             "scores": {m: float(rng.random() < CHANCE[task][m]) for m in MODELS},
             "costs": {m: PRICE[m] * float(rng.uniform(0.5, 1.5)) for m in MODELS}}
            for i in range(n)]


def _write_jsonl(root: Path) -> Path:
    for split, n, seed in (("train", 40, 1), ("test", 20, 2)):
        with open(root / f"all_{split}.jsonl", "w") as f:
            for k, task in enumerate(CHANCE):
                for rec in _records(task, n, seed + 10 * k):
                    f.write(json.dumps(rec) + "\n")
    return root


def _run(args: list[str]) -> int:
    from router.cli import main

    return main(["eval", *args])


def test_cli_leave_one_task_out_on_jsonl_with_baselines(tmp_path):
    data = _write_jsonl(tmp_path)
    out = tmp_path / "out"
    rc = _run(["--data", str(data), "--out", str(out), "--leave-one-task-out",
               "--policies", "task-static,cheapest", "--bootstrap", "50", "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "leave-one-task-out"
    assert res["dataset"]["tasks"] == ["code", "math", "trivia"]
    # best-single is added and chosen on the training tasks: "large" when trivia and math
    # are in training, whatever it scores on the left-out task
    assert res["per_task"]["code"]["best_single"] == "large"
    assert res["per_task"]["code"]["train_tasks"] == ["math", "trivia"]
    assert res["per_task"]["code"]["n_test"] == 20
    assert "best-single" in res["per_task"]["math"]["policies"]
    assert res["learned"] == [] and not res["all_met"]
    report = (out / "report.md").read_text()
    assert "Leave-one-task-out evaluation" in report and "### code (left out" in report


def test_cli_leave_one_task_out_refuses_a_single_task(tmp_path, capsys):
    root = tmp_path / "one"
    root.mkdir()
    for split, seed in (("train", 1), ("test", 2)):
        with open(root / f"x_{split}.jsonl", "w") as f:
            for rec in _records("math", 10, seed):
                f.write(json.dumps(rec) + "\n")
    rc = _run(["--data", str(root), "--out", str(tmp_path / "o"), "--leave-one-task-out",
               "--policies", "task-static", "--quiet"])
    assert rc != 0
    assert "leave-one-task-out needs at least 2 tasks" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.slow
def test_cli_leave_one_task_out_with_a_learned_policy_on_routerdc_json(tmp_path):
    """RouterDC's JSON layout (task from the file name, catalogue prices), knn with the
    real encoder: each left-out task gets knn's difference to best-single at its cost."""
    rdc = ["mistralai/Mistral-7B-v0.1", "meta-math/MetaMath-Mistral-7B",
           "meta-llama/Meta-Llama-3-8B"]
    rng = np.random.default_rng(0)
    for task, p in (("mmlu", [0.5, 0.4, 0.7]), ("gsm8k", [0.3, 0.8, 0.5]),
                    ("arc", [0.6, 0.4, 0.8])):
        for split, n in (("train", 30), ("test", 15)):
            recs = [{"question": f"{task} item {i} of {split}: what is {i} + {n}?",
                     "scores": {m: float(rng.random() < q) for m, q in zip(rdc, p, strict=True)}}
                    for i in range(n)]
            (tmp_path / f"{task}_{split}.json").write_text(json.dumps(recs))
    out = tmp_path / "out"
    assert _run(["--data", str(tmp_path), "--out", str(out), "--leave-one-task-out",
                 "--policies", "knn", "--bootstrap", "30", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["learned"] == ["knn"]
    for task, entry in res["per_task"].items():
        row = entry["vs_best_single"]["knn"]
        assert row["verdict"] in ("above", "within", "below")
        assert row["diff"] == pytest.approx(row["quality_at_best_single_cost"]
                                            - row["best_single_quality"])
        assert task not in entry["train_tasks"]
    assert res["mean"]["knn"]["mean_diff"] == pytest.approx(np.mean(
        [e["vs_best_single"]["knn"]["diff"] for e in res["per_task"].values()]))


def test_backoff_evidence_of_a_fold_and_its_report_paragraph():
    """Three specialist tasks and a generalist: each training task left out loses with the
    anchor, so the backoff sends a new task's queries to the global prior (weight near
    0) and keeps a familiar task's on the anchor (weight near 1)."""
    from tests.test_policies_backoff import SPECIALISTS, cluster, world

    X, Q, C, tasks = world({"a": 0, "b": 1, "c": 2}, SPECIALISTS, 100, 0)
    models = ["sa", "sb", "sc", "gen"]
    train = RoutingDataset("t", [f"q{i}" for i in range(len(tasks))], tasks, models, Q, C)
    new = cluster(6, 50, np.random.default_rng(1))
    ev = L.backoff_evidence(train, X, new)
    assert ev["fitted"].startswith("leave-one-task-out over 3")
    assert sorted(ev["left_out_tasks"]) == ["a", "b", "c"]
    assert all(g["anchored_minus_global"] < -0.4 for g in ev["left_out_tasks"].values())
    assert ev["weight_mean"] < 0.3 and ev["familiarity_quantile_median"] < 0.05
    familiar = L.backoff_evidence(train, X, cluster(1, 50, np.random.default_rng(2)))
    assert familiar["weight_mean"] > 0.8 and familiar["familiarity_quantile_median"] > 0.2
    assert L.backoff_evidence(train, None, new) is None
    text = "\n".join(L._backoff_lines(ev))
    assert f"mean weight {ev['weight_mean']:.2f}" in text and "a -0." in text
    assert L._backoff_lines(None) == []
