"""`router data label` against the local upstream playing three scripted models and a judge:
the dataset it writes, resuming after SIGKILL without paying twice, failing backends, a
judge answering garbage, the --max-usd cap and malformed prompt files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from router.cli import main
from tests.conftest import REPO
from tests.own_models import OWN_MODELS, own_config, own_prompts, play_own_models
from tests.upstream import UpstreamServer

MODELS = list(OWN_MODELS)


@pytest.fixture
def own(tmp_path):
    server = UpstreamServer().start()
    play_own_models(server)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(own_config(server.base, tmp_path / "state")))
    yield server, cfg
    server.stop()


def write_prompts(path: Path, n: int, start: int = 0) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in own_prompts(n, start)))
    return path


def label(tmp_path: Path, cfg: Path, prompts: Path, *extra: str) -> int:
    return main(["data", "label", "--prompts", str(prompts), "--config", str(cfg),
                 "--out", str(tmp_path / "labels.jsonl"), "--quiet", "--backoff", "0.01",
                 *extra])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def journal_answers(path: Path) -> set[tuple[str, str]]:
    out = set()
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("t") == "answer":
            out.add((rec["id"], rec["model"]))
    return out


def test_label_writes_graded_dataset_with_real_costs(own, tmp_path, capsys):
    server, cfg = own
    prompts = write_prompts(tmp_path / "p.jsonl", 9)
    assert label(tmp_path, cfg, prompts, "--grader", "number", "--models", ",".join(MODELS)) == 0
    data = rows(tmp_path / "labels.jsonl")
    assert [r["id"] for r in data] == [f"q{i}" for i in range(9)]
    from tests.own_models import own_answer

    refs = {q["id"]: q["answer"] for q in own_prompts(9)}
    for r in data:
        want = {m: float(own_answer(m, r["prompt"]).endswith(f" {refs[r['id']]}."))
                for m in MODELS}
        assert r["scores"] == want
        assert set(r["costs"]) == set(MODELS) and r["responses"]["small"].startswith("The answer")
    # the cost is the usage the upstream returned at the config's prices
    first = data[0]
    prompt_tokens = max(1, len(first["prompt"]) // 4)
    out_tokens = (len(first["responses"]["large"]) + 3) // 4
    p_in, p_out = OWN_MODELS["large"]
    assert first["costs"]["large"] == pytest.approx(prompt_tokens * p_in + out_tokens * p_out)
    assert server.calls("judge") == 0
    from router.datasets import load_dataset

    ds = load_dataset(tmp_path / "labels.jsonl")
    assert ds.models == MODELS and ds.mask.all()


def test_resume_after_sigkill_pays_no_answered_cell_twice(own, tmp_path):
    server, cfg = own
    server.control("*", latency_ms=25)
    n = 40
    prompts = write_prompts(tmp_path / "p.jsonl", n)
    out = tmp_path / "labels.jsonl"
    journal = tmp_path / "labels.jsonl.journal"
    cmd = [sys.executable, "-m", "router", "data", "label", "--prompts", str(prompts),
           "--config", str(cfg), "--out", str(out), "--grader", "judge:judge", "--quiet",
           "--concurrency", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and len(journal_answers(journal)) >= 30:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    paid = journal_answers(journal)
    assert 30 <= len(paid) < 3 * n, "the kill must land in the middle of the run"
    calls_before = sum(server.upstream.calls[m] for m in MODELS)

    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{len(paid)} reused" in r.stderr
    text = {rec["id"]: rec["prompt"] for rec in own_prompts(n)}
    for pid, model in paid:  # answered before the kill: asked exactly once in all
        assert server.upstream.prompt_calls[(model, text[pid])] == 1, (pid, model)
    total = sum(server.upstream.calls[m] for m in MODELS)
    # calls in flight at the kill (answered upstream, not yet journaled) are asked again
    assert 3 * n <= total <= 3 * n + 4
    assert total - calls_before == 3 * n - len(paid)
    data = rows(out)
    assert len(data) == n
    assert all(r["scores"][m] in (0.0, 1.0) for r in data for m in MODELS)


def test_failing_backend_is_stopped_and_resumed_without_repaying(own, tmp_path, capsys):
    server, cfg = own
    prompts = write_prompts(tmp_path / "p.jsonl", 12)
    server.control("medium", fail="500")
    code = label(tmp_path, cfg, prompts, "--grader", "number", "--models", ",".join(MODELS),
                 "--retries", "1", "--max-backend-failures", "3", "--concurrency", "1")
    err = capsys.readouterr().err
    assert code == 1
    assert "backend 'medium' stopped: 3 cells in a row failed after 1 retries" in err
    assert "upstream failure 500" in err and "incomplete" in err
    assert server.calls("medium") == 3 * 2  # 3 cells x (1 try + 1 retry), then stopped
    data = rows(tmp_path / "labels.jsonl")
    assert all(r["scores"]["medium"] is None for r in data)
    assert all(r["scores"]["small"] is not None and r["scores"]["large"] is not None
               for r in data)
    before = {m: server.calls(m) for m in MODELS}
    server.control("medium", fail=None)
    assert label(tmp_path, cfg, prompts, "--grader", "number", "--models",
                 ",".join(MODELS)) == 0
    assert server.calls("small") == before["small"] and server.calls("large") == before["large"]
    assert server.calls("medium") == before["medium"] + 12
    assert all(r["scores"]["medium"] is not None for r in rows(tmp_path / "labels.jsonl"))


def test_judge_garbage_is_a_missing_cell_not_zero(own, tmp_path, capsys):
    server, cfg = own
    from tests.own_models import own_judge

    # the judge rambles for every 'Quick sum' question
    server.script("judge", lambda text: "Looks fine to me!" if "Quick sum" in text
                  else own_judge(text))
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    assert label(tmp_path, cfg, prompts, "--grader", "judge:judge") == 0
    err = capsys.readouterr().err
    assert "2 judge verdict(s) were not 'SCORE: <0-1>'" not in err  # 2 prompts x 3 models
    assert "6 judge verdict(s) were not 'SCORE: <0-1>'" in err and "missing (not 0)" in err
    data = rows(tmp_path / "labels.jsonl")
    for i, r in enumerate(data):
        if i % 3 == 0:
            assert r["scores"] == {m: None for m in MODELS}
            assert set(r["responses"]) == set(MODELS)  # the paid answers are kept
        else:
            assert None not in r["scores"].values()
    calls = server.calls("judge")
    assert label(tmp_path, cfg, prompts, "--grader", "judge:judge") == 0
    assert server.calls("judge") == calls  # verdicts (even garbage) are not bought twice


def test_max_usd_stops_before_the_cap_and_keeps_paid_answers(own, tmp_path, capsys):
    server, cfg = own
    prompts = write_prompts(tmp_path / "p.jsonl", 30)
    cap = 0.01
    code = label(tmp_path, cfg, prompts, "--grader", "number", "--models", ",".join(MODELS),
                 "--max-usd", str(cap), "--max-tokens", "64")
    err = capsys.readouterr().err
    assert code == 3
    assert "--max-usd $0.010000 reached" in err and "rerun with a higher --max-usd" in err
    journal = tmp_path / "labels.jsonl.journal"
    spent = sum(json.loads(x).get("cost", 0) for x in journal.read_text().splitlines())
    assert 0 < spent <= cap
    paid = journal_answers(journal)
    data = rows(tmp_path / "labels.jsonl")
    kept = {(r["id"], m) for r in data for m, s in r["scores"].items() if s is not None}
    assert kept == paid and 0 < len(paid) < 90
    calls = sum(server.calls(m) for m in MODELS)
    assert calls == len(paid)
    assert label(tmp_path, cfg, prompts, "--grader", "number", "--models", ",".join(MODELS),
                 "--max-usd", "1") == 0
    assert sum(server.calls(m) for m in MODELS) == 90


@pytest.mark.parametrize(("content", "name", "message"), [
    ('{"prompt": "a", "answer": "1"}\n{"prompt": "b"\n', "p.jsonl", "line 2: invalid JSON"),
    ('{"prompt": "a", "answer": "1"}\n["b"]\n', "p.jsonl", "line 2: expected a JSON object"),
    ('{"question": 3, "answer": "1"}\n', "p.jsonl", "needs a non-empty string 'prompt'"),
    ("text,answer\nhello,1\n", "p.csv", "no 'prompt' (or 'question') column"),
    ('prompt,answer\n"hello,1\n', "p.csv", "malformed CSV"),
    ("prompt,answer\nhello,1,2\n", "p.csv", "row 1 (line 2): more cells than the header"),
    ("\n\n", "p.txt", "no prompts in the file"),
    ('{"id": "x", "prompt": "a", "answer": "1"}\n{"id": "x", "prompt": "b", "answer": "2"}\n',
     "p.jsonl", "id 'x' of prompt 2 is already used by prompt 1"),
    ('{"prompt": "what is 2+2?"}\n', "p.jsonl", "q has no reference answer"),
])
def test_malformed_prompt_files_are_refused_before_any_call(own, tmp_path, capsys, content,
                                                            name, message):
    server, cfg = own
    path = tmp_path / name
    path.write_text(content)
    if "q has no" in message:
        path.write_text('{"id": "q", "prompt": "what is 2+2?"}\n')
        message = "q (number): has no reference answer"
    assert label(tmp_path, cfg, path, "--grader", "number") == 2
    assert message in capsys.readouterr().err
    assert sum(server.upstream.calls.values()) == 0
    assert not (tmp_path / "labels.jsonl").exists()


def test_bad_grader_and_models_are_clear_errors(own, tmp_path, capsys):
    server, cfg = own
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    assert label(tmp_path, cfg, prompts, "--grader", "judge:nobody") == 2
    assert "'nobody' is not a backend of the config" in capsys.readouterr().err
    assert label(tmp_path, cfg, prompts, "--grader", "fuzzy") == 2
    assert "unknown grader 'fuzzy'" in capsys.readouterr().err
    assert label(tmp_path, cfg, prompts) == 2
    assert "give --grader SPEC" in capsys.readouterr().err
    assert label(tmp_path, cfg, prompts, "--grader", "number", "--models", "small,gpt-9") == 2
    assert "unknown backend(s) ['gpt-9']" in capsys.readouterr().err
    assert label(tmp_path, cfg, prompts, "--grader", "mc") == 2  # '32' is no option letter or number
    assert "q1 (mc): reference '32' names no option letter or number" in capsys.readouterr().err
    assert sum(server.upstream.calls.values()) == 0


def test_plain_text_and_csv_prompts(own, tmp_path):
    server, cfg = own
    txt = tmp_path / "p.txt"
    txt.write_text("Quick sum 1: what is 2 + 3?\n\nQuick sum 2: what is 4 + 4?\n")
    # without a reference the scripted judge cannot tell: every verdict is a missing cell
    assert label(tmp_path, cfg, txt, "--grader", "judge:judge") == 0
    data = rows(tmp_path / "labels.jsonl")
    assert [r["id"] for r in data] == ["line1", "line3"]
    assert all(s is None for r in data for s in r["scores"].values())
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("id,prompt,answer,task\na,Quick sum 1: what is 2 + 3?,5,sums\n")
    assert main(["data", "label", "--prompts", str(csv_path), "--config", str(cfg), "--out",
                 str(tmp_path / "c.jsonl"), "--grader", "number", "--quiet",
                 "--models", "small"]) == 0
    (rec,) = rows(tmp_path / "c.jsonl")
    assert rec["id"] == "a" and rec["task"] == "sums" and rec["scores"] == {"small": 1.0}


def test_litellm_backends_label_at_the_same_real_cost(own, tmp_path):
    server, cfg = own
    data = yaml.safe_load(cfg.read_text())
    for entry in data["model_list"]:
        entry["fast_path"] = False  # through litellm.acompletion, as non-OpenAI providers go
    slow = tmp_path / "litellm.yaml"
    slow.write_text(yaml.safe_dump(data))
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    assert main(["data", "label", "--prompts", str(prompts), "--config", str(slow), "--out",
                 str(tmp_path / "a.jsonl"), "--grader", "number", "--models", "small,large",
                 "--quiet"]) == 0
    assert main(["data", "label", "--prompts", str(prompts), "--config", str(cfg), "--out",
                 str(tmp_path / "b.jsonl"), "--grader", "number", "--models", "small,large",
                 "--quiet"]) == 0
    a, b = rows(tmp_path / "a.jsonl"), rows(tmp_path / "b.jsonl")
    assert [r["scores"] for r in a] == [r["scores"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["costs"] == pytest.approx(rb["costs"])
    assert server.calls("small") == 6


def test_transient_failures_are_retried_with_backoff(own, tmp_path):
    server, cfg = own
    server.control("medium", fail="503", fail_times=2)
    server.control("large", fail="429", fail_times=1)
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    assert label(tmp_path, cfg, prompts, "--grader", "number", "--models", ",".join(MODELS),
                 "--concurrency", "1") == 0
    assert server.calls("medium") == 4 + 2 and server.calls("large") == 4 + 1
    assert all(None not in r["scores"].values() for r in rows(tmp_path / "labels.jsonl"))


def test_failing_judge_keeps_the_paid_answers(own, tmp_path, capsys):
    server, cfg = own
    server.control("judge", fail="500")
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    assert label(tmp_path, cfg, prompts, "--grader", "judge:judge", "--retries", "0",
                 "--max-backend-failures", "2", "--concurrency", "1") == 1
    assert "backend 'judge' stopped" in capsys.readouterr().err
    data = rows(tmp_path / "labels.jsonl")
    assert all(set(r["responses"]) == set(MODELS) for r in data)  # every answer kept
    assert all(s is None for r in data for s in r["scores"].values())
    before = {m: server.calls(m) for m in MODELS}
    server.control("judge", fail=None)
    assert label(tmp_path, cfg, prompts, "--grader", "judge:judge") == 0
    assert {m: server.calls(m) for m in MODELS} == before  # no answer bought twice
    assert all(None not in r["scores"].values() for r in rows(tmp_path / "labels.jsonl"))


def test_ctrl_c_writes_the_dataset_and_resumes(own, tmp_path):
    server, cfg = own
    server.control("*", latency_ms=40)
    prompts = write_prompts(tmp_path / "p.jsonl", 30)
    out, journal = tmp_path / "labels.jsonl", tmp_path / "labels.jsonl.journal"
    cmd = [sys.executable, "-m", "router", "data", "label", "--prompts", str(prompts),
           "--config", str(cfg), "--out", str(out), "--grader", "number", "--quiet",
           "--models", ",".join(MODELS), "--concurrency", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT at its default in the child even when pytest itself runs as a background job
    # (a shell starts those with SIGINT ignored, which the child would inherit)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (journal.exists()
                                               and len(journal_answers(journal)) >= 10):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "rerun the same command" in err
    paid = journal_answers(journal)
    kept = {(r["id"], m) for r in rows(out) for m, s in r["scores"].items() if s is not None}
    assert kept == paid and 10 <= len(paid) < 90
    server.control("*", latency_ms=0)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sum(server.calls(m) for m in MODELS) <= 90 + 2  # the 2 in flight at the interrupt
