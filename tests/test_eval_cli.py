"""`router eval` end to end on a tiny RouterBench-layout dataset written in the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from router.cli import main
from tests.conftest import ROUTERBENCH, needs_shared

MODELS = ["tiny-model", "mid-model", "big-model"]
PRICE = {"tiny-model": 0.0002, "mid-model": 0.002, "big-model": 0.02}
CHANCE = {  # P(correct) per task and model
    "trivia": {"tiny-model": 0.3, "mid-model": 0.7, "big-model": 0.9},
    "coding": {"tiny-model": 0.7, "mid-model": 0.5, "big-model": 0.8},
}
FAST = ["--policies", "cheapest,best-single,task-static,oracle", "--quiet"]


def write_split(path: Path, task: str, n: int, seed: int) -> pd.DataFrame:
    """A RouterBench-style CSV: prompt as a list literal, 0/1 columns, |total_cost."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"sample_id": f"{task}.{seed}.{i}", "prompt": repr([f"{task} question {i}?"]),
               "eval_name": task}
        for m in MODELS:
            row[m] = float(rng.random() < CHANCE[task][m])
            row[f"{m}|model_response"] = repr([f"answer {i}"])
            row[f"{m}|total_cost"] = PRICE[m] * rng.uniform(0.5, 1.5)
        good = [m for m in MODELS if row[m] == 1.0]
        row["oracle_model_to_route_to"] = good[0] if good else "no_model_correct"
        rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(path)  # with the unnamed index column, as in the shared files
    return df


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("tinybench")
    tests = []
    for k, task in enumerate(CHANCE):
        write_split(root / f"{task}_train.csv", task, 60, seed=10 + k)
        tests.append(write_split(root / f"{task}_test.csv", task, 30, seed=20 + k))
    return root, pd.concat(tests, ignore_index=True)


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    root, test_df = tiny
    out = tmp_path_factory.mktemp("eval-out")
    rc = main(["eval", "--data", str(root), "--out", str(out), "--bootstrap", "60",
               "--seed", "3", "--lams", "auto:25", *FAST])
    assert rc == 0
    return out, json.loads((out / "results.json").read_text()), test_df


def test_eval_writes_all_outputs(evaluated):
    out, results, _ = evaluated
    for name in ("results.json", "report.md", "pareto.png", "per_task.png"):
        assert (out / name).is_file(), name
    for png in ("pareto.png", "per_task.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert set(results["policies"]) == {"cheapest", "best-single", "task-static", "oracle"}
    assert results["dataset"]["n_test"] == 60 and results["dataset"]["n_train"] == 120
    assert results["seed"] == 3 and results["bootstrap"] == 60 and len(results["lams"]) == 26
    assert results["versions"]["numpy"] == np.__version__ and results["versions"]["costroute"]
    assert results["encoder"] is None  # none of these policies reads embeddings
    for p in results["policies"].values():
        assert len(p["curve"]) == 26 and {"lam", "cost", "quality"} <= set(p["curve"][0])
        for key in ("aiq", "aiq_ci", "hull", "max_quality", "cost_at_max_quality",
                    "cost_at_best_single_quality", "apgr", "cpt50", "cpt80", "per_task"):
            assert key in p
        assert set(p["per_task"]) == {"trivia", "coding"}


def test_eval_reference_matches_the_csv(evaluated):
    _, results, df = evaluated
    ref = results["reference"]
    for m in MODELS:
        assert ref["models"][m]["quality"] == pytest.approx(df[m].mean())
        assert ref["models"][m]["cost"] == pytest.approx(df[f"{m}|total_cost"].mean())
    # the oracle: the cheapest correct model per query, else the cheapest model
    q = df[MODELS].to_numpy()
    c = df[[f"{m}|total_cost" for m in MODELS]].to_numpy()
    pick = np.where(q == 1, c, np.inf).argmin(axis=1)
    pick = np.where(q.max(axis=1) == 1, pick, c.argmin(axis=1))
    assert ref["oracle"]["quality"] == pytest.approx(q.max(axis=1).mean())
    assert ref["oracle"]["cost"] == pytest.approx(c[np.arange(len(df)), pick].mean())
    oracle = results["policies"]["oracle"]
    assert oracle["max_quality"] == pytest.approx(ref["oracle"]["quality"])
    assert results["policies"]["best-single"]["apgr"] == pytest.approx(1.0)
    assert results["policies"]["cheapest"]["apgr"] == pytest.approx(0.0)


def test_report_table(evaluated):
    out, results, _ = evaluated
    report = (out / "report.md").read_text()
    assert "| policy | AIQ [95% CI] | max quality @ $/1k |" in report
    assert "## Per task" in report and "### trivia" in report and "### coding" in report
    oracle = results["policies"]["oracle"]
    lo, hi = oracle["aiq_ci"]
    assert f"| oracle | {oracle['aiq']:.3f} [{lo:.3f}, {hi:.3f}]" in report
    # none of these policies is learned: the comparison is made, but nothing is judged
    req = results["vs_task_static"]
    assert req["baseline"] == "task-static" and req["learned"] == [] and req["all_beat"] is None
    assert "## Against task-static" in report and "no learned policy" in report
    assert oracle["vs_task_static"]["verdict"] == "beats"
    assert all(p["ci"] is not None for p in oracle["vs_task_static"]["points"])


def test_eval_is_deterministic_per_seed(tiny, evaluated, tmp_path):
    root, _ = tiny
    _, first, _ = evaluated
    rc = main(["eval", "--data", str(root), "--out", str(tmp_path), "--bootstrap", "60",
               "--seed", "3", "--lams", "auto:25", "--no-plots", *FAST])
    assert rc == 0
    again = json.loads((tmp_path / "results.json").read_text())
    for label, p in first["policies"].items():
        assert again["policies"][label]["aiq_ci"] == p["aiq_ci"]
        assert again["policies"][label]["curve"] == p["curve"]


def test_eval_strong_weak_and_artifact(tiny, tmp_path):
    from policies import make_policy

    root, _ = tiny
    train = pd.concat([pd.read_csv(f) for f in sorted(root.glob("*_train.csv"))])
    policy = make_policy("cheapest").fit(
        np.zeros((len(train), 1)), train[MODELS].to_numpy(float),
        train[[f"{m}|total_cost" for m in MODELS]].to_numpy(float), MODELS,
    )
    policy.save(tmp_path / "art")
    out = tmp_path / "out"
    rc = main(["eval", "--data", str(root), "--out", str(out), "--artifact",
               str(tmp_path / "art"), "--strong", "big-model", "--weak", "mid-model",
               "--bootstrap", "0", "--no-plots", "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["policies"]) == ["cheapest@art"]
    assert results["strong"] == "big-model" and results["weak"] == "mid-model"
    # always 'tiny-model', cheaper than the weak model: its PGR over the whole range
    q = {m: v["quality"] for m, v in results["reference"]["models"].items()}
    expected = (q["tiny-model"] - q["mid-model"]) / (q["big-model"] - q["mid-model"])
    assert results["policies"]["cheapest@art"]["apgr"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/no/such/dir"], "no such file or directory"),
        (["--policies", "cheapest,nosuch"], "unknown policy 'nosuch'"),
        (["--policies", "cheapest", "--lams", "log:1"], "--lams"),
        (["--policies", "cheapest", "--strong", "gpt-9"], "--strong 'gpt-9': no such model"),
        (["--policies", "cheapest", "--bootstrap", "-1"], "--bootstrap"),
        (["--policies", "cheapest", "--threads", "-1"], "--threads"),
        (["--artifact", "/no/such/artifact"], "no such directory"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tiny, tmp_path, capsys, argv, message):
    root, _ = tiny
    args = ["eval", "--out", str(tmp_path / "o"), "--quiet", *argv]
    if "--data" not in argv:
        args += ["--data", str(root)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "router eval: error:" in err and message in err
    assert "Traceback" not in err


def test_empty_test_split_is_an_error(tiny, tmp_path, capsys):
    root, _ = tiny
    data = tmp_path / "data"
    data.mkdir()
    for f in root.glob("*_train.csv"):
        (data / f.name).write_bytes(f.read_bytes())
        header = f.read_text().splitlines()[0]
        (data / f.name.replace("_train", "_test")).write_text(header + "\n")
    assert main(["eval", "--data", str(data), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "router eval: error:" in err and "empty" in err


def test_eval_on_the_demo_dataset(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["eval", "--data", "demo", "--out", str(out), "--bootstrap", "30",
               "--lams", "auto:15", "--no-plots", *FAST])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["source"] == "demo" and results["dataset"]["n_test"] > 0
    oracle = results["policies"]["oracle"]
    single = [m["quality"] for m in results["reference"]["models"].values()]
    assert oracle["max_quality"] >= max(single)
    assert "| oracle |" in capsys.readouterr().out  # the table is printed


@pytest.mark.slow
def test_eval_with_an_embedding_policy(tiny, tmp_path):
    root, _ = tiny
    out = tmp_path / "knn"
    rc = main(["eval", "--data", str(root), "--out", str(out), "--policies", "knn:k=5,oracle",
               "--bootstrap", "20", "--lams", "auto:10", "--no-plots", "--quiet",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["encoder"]["model_id"] and results["encoder"]["dim"] == 384
    knn = results["policies"]["knn:k=5"]
    assert knn["params"] == {"k": 5} and knn["timings"]["fit_s"] >= 0
    assert knn["max_quality"] <= results["policies"]["oracle"]["max_quality"] + 1e-12


@needs_shared
@pytest.mark.slow
def test_routerbench_subset_references(tmp_path):
    out = tmp_path / "rb"
    rc = main(["eval", "--data", str(ROUTERBENCH), "--out", str(out), "--policies",
               "task-static,oracle", "--bootstrap", "0", "--no-plots", "--quiet"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    ref = results["reference"]
    assert results["dataset"]["n_test"] == 573
    gpt4 = ref["models"]["gpt-4-1106-preview"]
    assert gpt4["quality"] == pytest.approx(0.887, abs=5e-4)
    assert gpt4["cost"] * 1000 == pytest.approx(6.03, abs=5e-3)
    assert ref["oracle"]["quality"] == pytest.approx(0.958, abs=5e-4)
    assert ref["oracle"]["cost"] * 1000 == pytest.approx(0.29, abs=5e-3)
    # task-static (per-task best train model) is a vertex of its hull: ~0.857 at ~$0.39/1k
    hull = results["policies"]["task-static"]["hull"]
    assert any(abs(h["quality"] - 0.857) < 1e-3 and abs(h["cost"] * 1000 - 0.39) < 5e-3
               for h in hull)
    assert results["policies"]["oracle"]["max_quality"] == pytest.approx(ref["oracle"]["quality"])


def test_separate_test_file_with_models_in_another_order(tiny, tmp_path):
    root, _ = tiny
    train = root / "trivia_train.csv"
    df = pd.read_csv(root / "trivia_test.csv", index_col=0)
    reordered = ["sample_id", "prompt", "eval_name"]
    for m in reversed(MODELS):
        reordered += [m, f"{m}|model_response", f"{m}|total_cost"]
    df[reordered + ["oracle_model_to_route_to"]].to_csv(tmp_path / "other.csv")
    out = tmp_path / "out"
    rc = main(["eval", "--data", str(train), "--test", str(tmp_path / "other.csv"),
               "--out", str(out), "--bootstrap", "0", "--no-plots", *FAST])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["n_train"] == 60 and results["dataset"]["n_test"] == 30
    for m in MODELS:
        assert results["reference"]["models"][m]["quality"] == pytest.approx(df[m].mean())
    oracle = results["policies"]["oracle"]
    assert oracle["max_quality"] == pytest.approx(df[MODELS].max(axis=1).mean())
