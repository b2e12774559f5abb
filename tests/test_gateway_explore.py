"""Serving LinUCB on traffic it has never seen, through the real gateway and real HTTP:
exploitation never picks a backend whose posterior mean is below the best one's, and
exploration stays within its configured share (response, outcome record and metric agree)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.upstream import MATH, POEM, GatewayServer, backend_entry, gateway_config

MODELS = ["cheap", "mid", "strong"]
#: prompts that share no word with any training prompt (MATH / POEM): far from all of them
FAR = "zebra quantum volcano {} saxophone orbit"
SHARE = 0.05
N = 1000


def explore_artifact(path: Path, dim: int = 64, n: int = 30) -> Path:
    """LinUCB (alpha 2) over hashing embeddings: 'strong' solves everything, 'cheap' MATH
    only; 'mid' was observed on 6 prompts only, so its optimism bonus is the widest."""
    from policies import make_policy
    from router.proxy.routing import hashing_encoder_config, load_encoder

    enc = load_encoder(hashing_encoder_config(dim), use_cache=False)
    X = enc.encode([MATH.format(i) for i in range(n)] + [POEM.format(i) for i in range(n)])
    quality = np.ones((2 * n, 3))
    quality[n:, 0] = 0.0
    quality[:, 1] = np.nan
    quality[::10, 1] = [1.0, 0.5] * 3
    cost = np.tile([0.001, 0.004, 0.01], (2 * n, 1))
    policy = make_policy("linucb", alpha=2.0, prior_weight=1.0)
    policy.fit(X, quality, cost, MODELS)
    return policy.save(path, meta={"encoder": enc.config()})


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    art = explore_artifact(tmp_path_factory.mktemp("art") / "linucb")
    cfg = gateway_config(
        upstream.base, art, tmp_path_factory.mktemp("state"),
        model_list=[backend_entry("cheap", upstream.base, 1e-6, 2e-6),
                    backend_entry("mid", upstream.base, 4e-6, 8e-6),
                    backend_entry("strong", upstream.base, 1e-5, 2e-5)],
        routing={"lam": 0.0, "fallback": ["cheap", "strong"], "exploration_share": SHARE,
                 "artifacts": {"frozen": str(art)}, "exploration_shares": {"frozen": 0.0}})
    gw = GatewayServer(cfg).start()
    yield gw
    gw.stop()


def ask(client: httpx.Client, model: str, text: str) -> dict:
    r = client.post("/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.json()["router"]


def check_decision(info: dict) -> bool:
    """Whether the decision explored; asserts it is the exploit (or optimistic) choice."""
    cands = [c for c in info["candidates"] if c["quality"] is not None]
    chosen = next(c for c in cands if c["model"] == info["model"])
    for c in cands:
        assert 0.0 <= c["quality"] <= 1.0 and c["bonus"] >= 0.0
    best_mean = max(c["quality"] for c in cands)
    if not info["explored"]:
        # exploitation: never a backend whose posterior mean is below the best one's
        assert chosen["quality"] >= best_mean - 1e-6, info
    else:
        assert chosen["quality"] + chosen["bonus"] >= max(
            c["quality"] + c["bonus"] for c in cands) - 1e-6, info
    return bool(info["explored"])


def metric(gw: GatewayServer, policy: str, explored: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    label = f'{{explored="{explored}",policy="{policy}"}}'
    m = re.search(re.escape("costroute_exploration_decisions_total" + label) + r" (\S+)", text)
    return float(m.group(1)) if m else 0.0


def test_unfamiliar_traffic_exploits_the_mean_and_explores_within_share(gateway):
    explored, wanted, rids = [], 0, {}
    with httpx.Client(base_url=gateway.base, timeout=20) as client:
        for i in range(N):
            info = ask(client, "router-linucb-0", FAR.format(i))
            explored.append(check_decision(info))
            cands = [c for c in info["candidates"] if c["quality"] is not None]
            means = [c["quality"] for c in cands]
            ucbs = [c["quality"] + c["bonus"] for c in cands]
            wanted += int(np.argmax(ucbs) != np.argmax(means))
            rids[info["request_id"]] = info["explored"]
    running = np.cumsum(explored)
    # within the share at every moment, and the share was binding: without the gate the
    # bonus would have sent far more of this unfamiliar traffic elsewhere
    assert (running <= SHARE * np.arange(1, N + 1) + 1e-9).all()
    assert running[-1] == int(SHARE * N)
    assert wanted > 4 * running[-1]
    # the outcome records (written in the background) and the metric say the same
    deadline = time.monotonic() + 10
    recs = {}
    while time.monotonic() < deadline:
        recs = {r["request_id"]: r for r in gateway.gateway.outcome_store.records()
                if r.get("request_id") in rids}
        if len(recs) == N:
            break
        time.sleep(0.1)
    assert len(recs) == N
    assert all(recs[rid]["explored"] is rids[rid] for rid in rids)
    assert all(recs[rid]["familiarity"] == 0.0 for rid in rids)  # far from every train prompt
    assert all(0.0 <= recs[rid]["fallback"] <= 1.0 for rid in rids)
    assert metric(gateway, "linucb", "true") == running[-1]
    assert metric(gateway, "linucb", "false") == N - running[-1]


def test_share_zero_never_explores_and_always_takes_the_best_mean(gateway):
    with httpx.Client(base_url=gateway.base, timeout=20) as client:
        infos = [ask(client, "router-frozen-0", FAR.format(10_000 + i)) for i in range(200)]
    assert not any(check_decision(info) for info in infos)
    assert {info["model"] for info in infos} == {"strong"}
    assert metric(gateway, "frozen", "true") == 0
    text = httpx.get(gateway.url + "/metrics").text
    assert 'costroute_exploration_share{policy="frozen"} 0.0' in text
    assert f'costroute_exploration_share{{policy="linucb"}} {SHARE}' in text


def test_bad_exploration_settings_are_refused(upstream, tmp_path):
    from router.proxy.app import create_app
    from router.proxy.config import ConfigError

    with pytest.raises(ConfigError, match="exploration_share"):
        gateway_config(upstream.base, None, tmp_path, routing={"exploration_share": 1.5})
    with pytest.raises(ConfigError, match="exploration_shares"):
        gateway_config(upstream.base, None, tmp_path, routing={"exploration_shares": {"x": -1}})
    cfg = gateway_config(upstream.base, None, tmp_path,
                         routing={"exploration_shares": {"nosuch": 0.1}})
    with pytest.raises(ConfigError, match="unknown policy name"):
        create_app(cfg)
