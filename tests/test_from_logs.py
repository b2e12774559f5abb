"""`router data from-logs`: real gateway requests (the local upstream playing three scripted
models) with feedback -> a dataset with one observed model per request -> `router train`."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from router.cli import main
from tests.own_models import OWN_MODELS, own_answer, own_prompts, play_own_models
from tests.upstream import GatewayServer, UpstreamServer

MODELS = list(OWN_MODELS)


@pytest.fixture(scope="module")
def own_upstream():
    server = UpstreamServer().start()
    play_own_models(server)
    yield server
    server.stop()


def gateway(upstream, state_dir, **state):
    from router.proxy.config import parse_config
    from tests.upstream import backend_entry

    cfg = parse_config({
        "model_list": [backend_entry(m, upstream.base, *OWN_MODELS[m]) for m in MODELS],
        "state": {"dir": str(state_dir), "flush_interval_seconds": 0.05, **state},
    }, source="test")
    return GatewayServer(cfg).start()


def traffic(gw, n: int, seed: int = 0, feedback: str = "api") -> list[tuple[str, str]]:
    """``n`` requests to random backends by name; a reward for each (the scripted truth)."""
    rng = np.random.default_rng(seed)
    prompts = own_prompts(60)
    sent = []
    with httpx.Client(base_url=gw.base, timeout=30) as client:
        for _ in range(n):
            p = prompts[int(rng.integers(len(prompts)))]
            model = MODELS[int(rng.integers(len(MODELS)))]
            r = client.post("/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": p["prompt"]}]})
            assert r.status_code == 200, r.text
            reward = float(own_answer(model, p["prompt"]).endswith(f" {p['answer']}."))
            if feedback == "api":
                fb = client.post("/feedback", json={
                    "request_id": r.headers["x-router-request-id"], "reward": reward})
                assert fb.status_code == 200, fb.text
            sent.append((p["id"], model))
    return sent


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logged_prompts_to_dataset_to_trained_router(own_upstream, tmp_path, capsys):
    gw = gateway(own_upstream, tmp_path / "state", log_prompts=True)
    try:
        sent = traffic(gw, 150)
        with httpx.Client(base_url=gw.base) as client:  # one request without feedback
            client.post("/chat/completions", json={
                "model": "small", "messages": [{"role": "user", "content": "unrated"}]})
        assert gw.gateway.outcomes.flush()
    finally:
        gw.stop()
    out = tmp_path / "logs.jsonl"
    assert main(["data", "from-logs", "--state-dir", str(tmp_path / "state"),
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 request(s): no feedback" in err and "from 150 of 151 requests" in err
    data = rows(out)
    truth = {p["prompt"]: p for p in own_prompts(60)}
    assert len(data) == len({pid for pid, _ in sent})
    n_cells = 0
    for r in data:
        p = truth[r["prompt"]]
        assert set(r["scores"]) <= set(MODELS) and r["task"] == "logs"
        for m, s in r["scores"].items():
            assert s == float(own_answer(m, p["prompt"]).endswith(f" {p['answer']}."))
            assert r["costs"][m] > 0
            n_cells += 1
    assert n_cells == len(set(sent))

    from router.datasets import load_dataset

    ds = load_dataset(out)
    assert ds.mask.mean() < 0.75  # partially observed: most prompts seen on one model
    art = tmp_path / "art"
    assert main(["train", "--policy", "knn", "--data", str(out), "--out", str(art),
                 "--encoder", "hashing:256", "--test-fraction", "0", "--quiet",
                 "--param", "k=10", "--param", "alpha=1", "--param", "temperature=0.05"]) == 0
    from policies import load_policy
    from router.proxy.routing import load_encoder

    policy = load_policy(str(art))
    enc = load_encoder(policy.meta_["encoder"])
    fresh = own_prompts(90, start=500)
    est = policy.predict(enc.encode([p["prompt"] for p in fresh]))
    large = policy.models_.index("large")
    hard = [i for i, p in enumerate(fresh) if p["prompt"].startswith("Hard")]
    easy = [i for i, p in enumerate(fresh) if p["prompt"].startswith("Quick")]
    small = policy.models_.index("small")
    # learned from one-model-per-request logs: small is good on easy, bad on hard questions
    assert est.quality[easy, small].mean() > 0.8 > 0.2 > est.quality[hard, small].mean()
    assert est.quality[hard, large].mean() > 0.8


def test_hashed_logs_join_a_prompt_file_and_exported_logs(own_upstream, tmp_path, capsys):
    gw = gateway(own_upstream, tmp_path / "state")  # prompts not logged: hashes only
    try:
        traffic(gw, 40, seed=1)
        assert gw.gateway.outcomes.flush()
    finally:
        gw.stop()
    out = tmp_path / "logs.jsonl"
    assert main(["data", "from-logs", "--state-dir", str(tmp_path / "state"),
                 "--out", str(out)]) == 2
    assert "no usable request among 40 logged" in capsys.readouterr().err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({**p, "task": "arith"}) + "\n"
                               for p in own_prompts(60)))
    assert main(["data", "from-logs", "--state-dir", str(tmp_path / "state"),
                 "--prompts", str(prompts), "--out", str(out)]) == 0
    joined = rows(out)
    assert joined and all(r["task"] == "arith" for r in joined)
    # no task labels: k-means clusters of the prompts stand in (one per question template)
    clustered = tmp_path / "clustered.jsonl"
    assert main(["data", "from-logs", "--state-dir", str(tmp_path / "state"), "--prompts",
                 str(prompts), "--out", str(clustered), "--cluster-tasks", "3",
                 "--encoder", "hashing:256"]) == 0
    by_template: dict[str, set[str]] = {}
    for r in rows(clustered):
        by_template.setdefault(r["prompt"].split(" ", 1)[0], set()).add(r["task"])
    assert len(by_template) == 3 and all(len(t) == 1 for t in by_template.values())
    assert len(set().union(*by_template.values())) == 3
    # the same through `router logs export`, and a source filter
    exported = tmp_path / "export.jsonl"
    assert main(["logs", "export", "--state-dir", str(tmp_path / "state"),
                 "--out", str(exported)]) == 0
    out2 = tmp_path / "logs2.jsonl"
    assert main(["data", "from-logs", "--logs", str(exported), "--prompts", str(prompts),
                 "--out", str(out2)]) == 0
    assert rows(out2) == joined
    assert main(["data", "from-logs", "--logs", str(exported), "--prompts", str(prompts),
                 "--sources", "auto", "--out", str(out2)]) == 2
    assert "no usable request" in capsys.readouterr().err
    assert main(["data", "from-logs", "--logs", str(exported), "--sources", "human",
                 "--out", str(out2)]) == 2
    assert "unknown source(s) ['human']" in capsys.readouterr().err


def test_latest_allowed_feedback_wins():
    from router.from_logs import build_rows, select_feedback

    events = [
        {"event": "outcome", "request_id": "a", "status": "ok", "model": "m1", "cost": 0.1,
         "prompt": "p", "ts": 1},
        {"event": "feedback", "request_id": "a", "reward": 0.0, "source": "auto", "ts": 2},
        {"event": "feedback", "request_id": "a", "reward": 1.0, "source": "api", "ts": 3},
        {"event": "outcome", "request_id": "b", "status": "ok", "model": "m2", "cost": 0.2,
         "prompt": "p", "ts": 4},
        {"event": "feedback", "request_id": "b", "reward": 0.5, "source": "auto", "ts": 5},
        {"event": "outcome", "request_id": "c", "status": "error", "prompt": "p", "ts": 6},
        {"event": "outcome", "request_id": "d", "status": "ok", "model": "m1", "cost": 0.3,
         "prompt": "p", "ts": 7},
        {"event": "feedback", "request_id": "d", "reward": 0.0, "source": "api", "ts": 8},
    ]
    data, report = build_rows(select_feedback(events, None), {})
    assert data == [{"id": data[0]["id"], "prompt": "p", "task": "logs",
                     "scores": {"m1": 0.5, "m2": 0.5}, "costs": {"m1": 0.2, "m2": 0.2}}]
    assert report.skipped["not answered (error)"] == 1
    only_auto, _ = build_rows(select_feedback(events, {"auto"}), {})
    assert only_auto[0]["scores"] == {"m1": 0.0, "m2": 0.5}


def test_orphan_feedback_dropped_and_store_filters_sources():
    from router.from_logs import select_feedback
    from router.state.outcome_store import merge_events

    events = [
        {"event": "outcome", "request_id": "a", "status": "ok", "model": "m1", "cost": 0.1,
         "prompt": "p", "ts": 1},
        {"event": "feedback", "request_id": "a", "reward": 1.0, "source": "replay", "ts": 2},
        {"event": "feedback", "request_id": "a", "reward": 0.0, "ts": None},  # api, no ts
        {"event": "feedback", "request_id": "ghost", "reward": 1.0, "source": "api", "ts": 3},
    ]
    merged = merge_events(events)
    assert [r["request_id"] for r in merged] == ["a", "ghost"]
    assert merged[1]["outcome_missing"] is True
    assert merged[0]["feedback"]["reward"] == 1.0  # the later ts wins over a missing one
    assert merge_events(events, {"api"})[0]["feedback"] == {"reward": 0.0, "ts": None}
    assert "feedback" not in merge_events(events, {"auto"})[0]
    picked = select_feedback(events, {"replay"})
    assert [r["request_id"] for r in picked] == ["a"]
    assert picked[0]["feedback"]["source"] == "replay"
