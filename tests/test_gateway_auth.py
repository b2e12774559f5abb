"""With keys configured, every route but the probes needs a key; no key is ever written down."""

from __future__ import annotations

import hashlib
import sqlite3

import httpx
import openai
import pytest

from tests.upstream import backend_entry

ALICE = "sk-alice-auth-7f3a9c"
MASTER = "sk-master-auth-55e1d2"
WRONG = "sk-wrong-auth-0b8e44"
SECRETS = (ALICE, MASTER, WRONG)

PROTECTED = [("GET", "/v1/models"), ("GET", "/v1/router/usage"), ("GET", "/metrics"),
             ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/no/such/path"),
             ("POST", "/v1/chat/completions"), ("POST", "/chat/completions"),
             ("POST", "/v1/feedback")]


@pytest.fixture
def gateway(upstream, replica_factory):
    config = {
        "model_list": [backend_entry("cheap", upstream.base, 1e-6, 2e-6),
                       backend_entry("strong", upstream.base, 1e-5, 2e-5)],
        "routing": {"lam": 0.0, "fallback": ["cheap", "strong"]},
        "keys": {"keys": [{"name": "alice", "key": ALICE, "budget_usd": 1.0}]},
        "general_settings": {"master_key": MASTER},
    }
    proc = replica_factory(config, "auth", log_level="debug")
    proc.config_path.write_text(proc.config_path.read_text()
                                + f"state: {{dir: {proc.workdir / 'state'}}}\n")
    return proc.start()


def test_every_route_but_the_probes_refuses_a_missing_or_wrong_key(gateway):
    for headers in ({}, {"authorization": f"Bearer {WRONG}"}, {"x-api-key": WRONG},
                    {"authorization": "Basic abc"}):
        for method, path in PROTECTED:
            r = httpx.request(method, gateway.url + path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.status_code)
            err = r.json()["error"]
            assert err["type"] == "authentication_error" and err["message"]
    for path in ("/health", "/ready"):
        assert httpx.get(gateway.url + path).status_code == 200
    for key in (ALICE, MASTER):
        ok = {"authorization": f"Bearer {key}"}
        assert httpx.get(gateway.url + "/v1/models", headers=ok).status_code == 200
        assert httpx.get(gateway.url + "/metrics", headers=ok).status_code == 200
        assert httpx.get(gateway.url + "/openapi.json", headers=ok).status_code == 200


def test_no_key_reaches_logs_records_or_metrics(gateway):
    for key in (ALICE, MASTER):
        client = openai.OpenAI(base_url=gateway.base, api_key=key, max_retries=0)
        client.chat.completions.create(model="router-auto",
                                       messages=[{"role": "user", "content": "hi"}])
        stream = client.chat.completions.create(
            model="cheap", stream=True, messages=[{"role": "user", "content": "hello"}])
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base, api_key=WRONG, max_retries=0).chat.completions \
            .create(model="cheap", messages=[{"role": "user", "content": "x"}])
    metrics = httpx.get(gateway.url + "/metrics",
                        headers={"authorization": f"Bearer {MASTER}"}).text
    gateway.stop()  # drains the outcome writer
    texts = {"metrics": metrics, "log": gateway.log_path.read_text(errors="replace")}
    for path in (gateway.workdir / "state").rglob("*"):
        if path.is_file() and path.suffix in (".sqlite", ".jsonl", ".json", ".npz", ""):
            texts[str(path)] = path.read_bytes().decode("latin-1")
    db = gateway.workdir / "state" / "outcomes.sqlite"
    with sqlite3.connect(db) as con:
        rows = [r[0] for r in con.execute("SELECT * FROM sqlite_master")]
        assert rows  # the outcome store exists and was read
        texts["outcome rows"] = "\n".join(
            str(row) for table in con.execute("SELECT name FROM sqlite_master WHERE "
                                              "type='table'").fetchall()
            for row in con.execute(f"SELECT * FROM {table[0]}"))
    assert hashlib.sha256(ALICE.encode()).hexdigest()[:16] in texts["outcome rows"]
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} found in {where}"
        assert "Bearer " not in text, f"an Authorization header value in {where}"
