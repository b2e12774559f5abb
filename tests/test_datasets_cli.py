"""`router data inspect` and `router data demo` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from router.cli import main
from router.datasets import load_split
from tests.conftest import REPO
from tests.test_datasets_loaders import write_routerbench_csv


def _inspect_json(capsys, *args):
    assert main(["data", "inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_single_file_json(tmp_path, capsys):
    path = write_routerbench_csv(tmp_path / "arc_challenge_train.csv", 4)
    out = _inspect_json(capsys, str(path))
    assert out["kind"] == "single"
    s = out["splits"]["all"]
    assert s["rows"] == 4 and s["models"] == ["m-big", "m-small"]
    assert s["tasks"] == {"arc-challenge": 4}
    assert s["missing_cells"] == 1
    small = s["per_model"][1]
    assert small["missing"] == 1
    # m-small: 0, missing, 0, 1
    assert small["mean_quality"] == pytest.approx(1 / 4)  # missing counts as 0
    assert small["observed_quality"] == pytest.approx(1 / 3)
    assert small["cost_per_1k"] == pytest.approx(1000 * 0.0001 * (1 + 2 + 3 + 4) / 4)


def test_inspect_pair_directory_reports_train_and_test(tmp_path, capsys):
    write_routerbench_csv(tmp_path / "mbpp_train.csv", 5, "mbpp")
    write_routerbench_csv(tmp_path / "mbpp_test.csv", 3, "mbpp")
    out = _inspect_json(capsys, str(tmp_path))
    assert out["kind"] == "pair"
    assert out["splits"]["train"]["rows"] == 5 and out["splits"]["test"]["rows"] == 3


def test_inspect_rich_table(tmp_path, capsys):
    write_routerbench_csv(tmp_path / "x_train.csv", 4)
    write_routerbench_csv(tmp_path / "x_test.csv", 2)
    assert main(["data", "inspect", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "[train]" in text and "[test]" in text
    assert "m-small" in text and "$ / 1k queries" in text and "oracle" in text


def test_inspect_errors_are_clean(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "missing.csv")]) == 2
    assert "router data: error:" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "scores": {"a": 1}}\n{not json\n')
    assert main(["data", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 2: invalid JSON" in err and "Traceback" not in err


def test_lenient_flag_turns_unknown_fields_into_warnings(tmp_path, capsys):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"prompt": "p", "scores": {"a": 1}, "costs": {"a": 0.1},
                                "extra": 1}) + "\n")
    assert main(["data", "inspect", str(path), "--json"]) == 2
    capsys.readouterr()
    assert main(["data", "inspect", str(path), "--json", "--lenient"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "'extra'" in captured.err
    assert json.loads(captured.out)["splits"]["all"]["rows"] == 1


def test_demo_writes_file_and_pair(tmp_path, capsys):
    assert main(["data", "demo", "--out", str(tmp_path / "d.jsonl"), "--n", "40"]) == 0
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert len(lines) == 40 and {"prompt", "scores", "costs"} <= set(json.loads(lines[0]))
    assert main(["data", "demo", "--out", str(tmp_path / "demo"), "--n", "50"]) == 0
    split = load_split(tmp_path / "demo")
    assert len(split.train) + len(split.test) == 50 and len(split.test) > 0
    capsys.readouterr()
    assert main(["data", "demo", "--out", str(tmp_path / "d.jsonl"), "--n", "1"]) == 2


def test_subprocess_entry_point(tmp_path):
    out = tmp_path / "demo.jsonl"
    run = subprocess.run([sys.executable, "-m", "router", "data", "demo", "--out", str(out),
                          "--n", "30"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "router", "data", "inspect", str(out), "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["splits"]["all"]["rows"] == 30
