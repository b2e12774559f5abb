"""`router train` / `router route` end to end on a small JSONL dataset (real encoder)."""

from __future__ import annotations

import json

import pytest

from router.cli import main

MATH = [
    "What is {a} plus {b}?",
    "Compute the product of {a} and {b}.",
    "Solve for x: x + {a} = {b}.",
    "What is {a} percent of {b}?",
]
CODE = [
    "Write a Python function that returns the {a}th Fibonacci number.",
    "Write a Python function that reverses a list of {a} integers.",
    "Implement a Python class for a stack holding at most {b} items.",
    "Write a Python function that checks whether {a} is a prime number.",
]
PRICES = {"math-pro": 0.01, "code-lite": 0.001}


def write_dataset(path, n_per_task: int = 24) -> None:
    """Math prompts: only the dear "math-pro" is right; code prompts: only "code-lite"."""
    records = []
    for i in range(n_per_task):
        for task, templates, right in (("math", MATH, "math-pro"), ("code", CODE, "code-lite")):
            prompt = templates[i % len(templates)].format(a=i + 3, b=2 * i + 7)
            records.append({
                "id": f"{task}-{i}",
                "prompt": prompt,
                "task": task,
                "scores": {m: float(m == right) for m in PRICES},
                "costs": {m: p * (1 + 0.01 * (i % 5)) for m, p in PRICES.items()},
            })
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_dataset(root / "toy.jsonl")
    return root


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def knn_artifact(workspace):
    out = workspace / "knn"
    code = main(["train", "--policy", "knn", "--data", str(workspace / "toy.jsonl"),
                 "--out", str(out), "--seed", "3", "--cache-dir", str(workspace / "cache"),
                 "--param", "k=5", "--quiet"])
    assert code == 0
    return out


def test_train_writes_an_artifact_with_metadata(knn_artifact):
    cfg = json.loads((knn_artifact / "config.json").read_text())
    assert cfg["policy"] == "knn"
    assert cfg["params"]["k"] == 5 and cfg["params"]["seed"] == 3
    meta = cfg["meta"]
    assert meta["encoder"]["model_name"] and meta["encoder"]["text_view"]
    assert meta["n_train"] > 0 and meta["seed"] == 3
    assert meta["trained_at"].startswith("20")
    assert sorted(cfg["models"]) == sorted(PRICES)
    # knn's routing holds on the static backend, so `router train` defaults to it
    assert meta["encoder"]["backend"] == "static" and cfg["dim"] == 256


def test_train_backend_defaults_follow_measured_quality():
    from router.encoding.select import TRAIN_DEFAULT, default_train_backend, train_encoder_kwargs

    assert default_train_backend("knn", None) == "static"
    assert default_train_backend("cscr", "all-MiniLM-L6-v2") == "static"
    # not measured on static: the bandit, a named model, and evaluation (one encoder for all)
    assert default_train_backend("linucb", None) == TRAIN_DEFAULT == "torch"
    assert default_train_backend("knn", "some/other-model") == "torch"
    assert train_encoder_kwargs(None, None, None)["backend"] == "torch"
    assert train_encoder_kwargs(None, "onnx", None, policy="knn")["backend"] == "onnx"


def test_route_picks_the_model_that_is_right_for_the_prompt(knn_artifact, workspace, capsys):
    cache = ["--cache-dir", str(workspace / "cache")]
    code, out, _ = cli(capsys, "route", "--artifact", str(knn_artifact), *cache, "--json",
                       "What is 12 plus 40?")
    assert code == 0
    result = json.loads(out)
    assert result["chosen"]["model"] == "math-pro"
    assert result["runner_up"]["model"] == "code-lite"
    assert result["chosen"]["cost"] == pytest.approx(0.01, rel=0.1)
    code, out, _ = cli(capsys, "route", "--artifact", str(knn_artifact), *cache, "--json",
                       "Write a Python function that sorts a list of 9 integers.")
    assert json.loads(out)["chosen"]["model"] == "code-lite"
    # a large lam, or a budget below math-pro's cost, picks the cheap model
    code, out, _ = cli(capsys, "route", "--artifact", str(knn_artifact), *cache, "--json",
                       "--lam", "10000", "What is 12 plus 40?")
    assert json.loads(out)["chosen"]["model"] == "code-lite"
    code, out, _ = cli(capsys, "route", "--artifact", str(knn_artifact), *cache, "--json",
                       "--budget", "0.005", "What is 12 plus 40?")
    assert json.loads(out)["chosen"]["model"] == "code-lite"
    # human-readable output names the choice, its estimates and the runner-up
    code, out, _ = cli(capsys, "route", "--artifact", str(knn_artifact), *cache,
                       "What is 12 plus 40?")
    assert code == 0
    assert "model:     math-pro" in out and "runner-up: code-lite" in out and "$" in out


@pytest.mark.parametrize("policy,params,route_args,expected", [
    ("task-static", [], ["--task", "math"], "math-pro"),
    ("task-static", [], [], "code-lite"),  # no task: global means tie, the cheaper wins
    ("mlp", ["--param", "hidden=16", "--param", "lr=0.01", "--param", "max_epochs=40"], [],
     "math-pro"),
    ("single", ["--param", "model=code-lite"], [], "code-lite"),
])
def test_other_policies_train_and_route(policy, params, route_args, expected, workspace,
                                        capsys):
    out = workspace / policy
    code, _, err = cli(capsys, "train", "--policy", policy, "--data",
                       str(workspace / "toy.jsonl"), "--out", str(out), "--cache-dir",
                       str(workspace / "cache"), *params)
    assert code == 0, err
    assert "fitting" in err and "saved" in err  # progress output
    code, stdout, _ = cli(capsys, "route", "--artifact", str(out), "--cache-dir",
                          str(workspace / "cache"), "--json", *route_args, "Compute 3 times 7.")
    assert code == 0
    assert json.loads(stdout)["chosen"]["model"] == expected


@pytest.mark.parametrize("argv,message", [
    (["--policy", "nope"], "unknown policy 'nope'"),
    (["--policy", "oracle"], "evaluation-only"),
    (["--policy", "knn", "--param", "kk=3"], "unknown parameter"),
    (["--policy", "knn", "--param", "k=abc"], "k must be 'auto' or an integer"),
    (["--policy", "knn", "--param", "k"], "expected KEY=VALUE"),
    (["--policy", "mlp", "--param", "lr=fast"], "lr must be a number"),
    (["--policy", "knn", "--param", "alpha=NaN"], "finite"),
])
def test_train_rejects_bad_policies_and_parameters(argv, message, workspace, capsys):
    code, _, err = cli(capsys, "train", "--data", str(workspace / "toy.jsonl"), "--out",
                       str(workspace / "never"), *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (workspace / "never").exists()


def test_train_rejects_missing_and_empty_data(workspace, capsys):
    code, _, err = cli(capsys, "train", "--policy", "knn", "--data",
                       str(workspace / "missing.jsonl"), "--out", str(workspace / "x"))
    assert code == 2 and "missing.jsonl" in err
    (workspace / "empty.jsonl").write_text("")
    code, _, err = cli(capsys, "train", "--policy", "knn", "--data",
                       str(workspace / "empty.jsonl"), "--out", str(workspace / "x"),
                       "--quiet")
    assert code == 2 and "empty" in err.lower()


@pytest.mark.parametrize("argv,message", [
    (["--lam", "-1"], "lam must be a finite number >= 0"),
    (["--lam", "nan"], "lam must be a finite number >= 0"),
    (["--budget", "-0.01"], "budget must be a finite number >= 0"),
])
def test_route_rejects_bad_lam_and_budget(argv, message, knn_artifact, capsys):
    code, _, err = cli(capsys, "route", "--artifact", str(knn_artifact), *argv, "hello")
    assert code == 2 and message in err


def test_route_rejects_missing_artifact_and_empty_prompt(knn_artifact, workspace, capsys):
    code, _, err = cli(capsys, "route", "--artifact", str(workspace / "nothing"), "hello")
    assert code == 2 and "not a policy artifact" in err
    code, _, err = cli(capsys, "route", "--artifact", str(knn_artifact), "   ")
    assert code == 2 and "prompt is empty" in err
