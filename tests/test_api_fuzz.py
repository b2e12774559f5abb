"""Schema fuzzing over real HTTP: every generated request gets a documented 4xx or a 2xx.

A few hundred cases here (``benchmarks/fuzz_api.py`` runs 1,000 or more); the gateway runs
with keys (so auth is on the path), a kNN artifact and the local upstream.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.fuzz import fuzz
from tests.upstream import GatewayServer, gateway_config, tiny_artifact

KEY = "sk-fuzz-key-1"


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    art = tiny_artifact(tmp_path_factory.mktemp("fuzz") / "artifact")
    cfg = gateway_config(upstream.base, art, tmp_path_factory.mktemp("state"),
                         keys={"keys": [{"name": "fuzz", "key": KEY, "budget_usd": 100.0}]})
    gw = GatewayServer(cfg).start()
    yield gw
    gw.stop()


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"}


def test_the_openapi_schema_is_self_contained(gateway):
    doc = httpx.get(gateway.url + "/openapi.json", headers=auth()).json()
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(doc)))
    assert refs and "#/components/schemas/ChatMessage" in refs
    schemas = doc["components"]["schemas"]
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    props = body["content"]["application/json"]["schema"]["properties"]
    assert {"tools", "response_format", "stream", "messages"} <= set(props)


def test_fuzzed_requests_never_get_a_5xx_or_hang(gateway):
    doc = httpx.get(gateway.url + "/openapi.json", headers=auth()).json()
    models = [m["id"] for m in httpx.get(gateway.base + "/models", headers=auth()).json()["data"]]
    report = fuzz(gateway.url, doc, cases_per_operation=100, headers=auth(), models=models,
                  timeout=15.0)
    assert report.cases >= 200, report.summary()
    assert report.statuses[200] > 20 and sum(v for k, v in report.statuses.items()
                                             if 400 <= k < 500) > 20, report.summary()
    assert not report.failures, report.failures[:5]
