"""The live page (GET /ui) in a real headless Chromium against a demo gateway with traffic.

The page's figures (requests, spend, per-backend answers) must be the gateway's own
(``/v1/router/usage`` for the key's spend, the requests the test sent); a screenshot is
saved as a test artifact (``$COSTROUTE_TEST_ARTIFACTS``, default ``out/test-artifacts``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from router.datasets import load_split, save_jsonl
from router.demo_dataset import generate_demo_dataset
from router.proxy.config import KeyEntry, KeysConfig
from tests.upstream import GatewayServer

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-ui-operator-3c1f"
AUTH = {"authorization": f"Bearer {KEY}"}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")


class Figures(HTMLParser):
    """Text of the elements with an id, and the per-backend table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, dict[str, str]] = {}
        self._stack: list[tuple[str | None, str | None, str | None]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        row = a.get("data-backend") or (self._stack[-1][2] if self._stack else None)
        self._stack.append((a.get("id"), a.get("class"), row))

    def handle_endtag(self, tag):
        if self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if not self._stack or not data.strip():
            return
        ident, cls, row = self._stack[-1]
        if ident:
            self.by_id[ident] = self.by_id.get(ident, "") + data.strip()
        elif cls and row:
            self.rows.setdefault(row, {})[cls] = data.strip()


@pytest.fixture(scope="module")
def demo_gateway(tmp_path_factory):
    from router.proxy.replay import build_demo

    tmp = tmp_path_factory.mktemp("ui")
    ds = generate_demo_dataset(n=200, seed=5)
    ds.responses = [[f"{m} answers {ds.ids[i]}" for m in ds.models] for i in range(len(ds))]
    data = save_jsonl(ds, tmp / "demo.jsonl")
    demo = build_demo(tmp / "state", policy_name="linucb", latency_ms=1, dataset=str(data),
                      encoder="hashing")
    demo["config"].keys = KeysConfig(keys=[KeyEntry(name="ops", key=KEY)])
    gw = GatewayServer(demo["config"], policies=demo["policies"],
                       default_policy=demo["default_policy"], replay=demo["replay"]).start()
    test = load_split(str(data)).test
    client = gw.openai(api_key=KEY)
    sent = 0
    for i in range(24):
        model = "router-auto" if i % 4 else test.models[0]
        comp = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": test.prompts[i]}])
        sent += 1
        if i % 3 == 0:
            httpx.post(gw.base + "/feedback", headers=AUTH, json={
                "request_id": comp.model_extra["router"]["request_id"], "reward": 1.0})
    yield gw, sent
    gw.stop()


def test_the_page_needs_the_key_for_its_figures(demo_gateway):
    gw, _ = demo_gateway
    assert httpx.get(gw.url + "/ui").status_code == 200  # the shell: no data in it
    assert httpx.get(gw.url + "/ui/app.js").status_code == 200
    r = httpx.get(gw.base + "/router/summary")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(gw.base + "/router/summary", headers=AUTH,
                     params={"reference": "nope"}).status_code == 400


def test_live_page_in_chromium_shows_the_gateways_figures(demo_gateway, tmp_path):
    gw, sent = demo_gateway
    browser = chromium()
    usage = httpx.get(gw.base + "/router/usage", headers=AUTH).json()
    summary = httpx.get(gw.base + "/router/summary", headers=AUTH).json()
    url = f"{gw.url}/ui#key={KEY}"
    common = [browser, "--headless=new", "--no-sandbox", "--disable-gpu",
              "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
              "--virtual-time-budget=8000", "--window-size=1280,1700"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert 'data-loaded="1"' in dom.stdout, dom.stderr[-2000:]
    fig = Figures()
    fig.feed(dom.stdout)
    assert int(fig.by_id["requests"]) == sent == summary["requests"]
    assert int(fig.by_id["answered"]) == sent
    shown = float(fig.by_id["spend"].lstrip("$").replace(",", ""))
    assert shown == pytest.approx(usage["spent_usd"], abs=5e-5)  # shown with 4 decimals
    assert usage["spent_usd"] > 0
    saved = re.fullmatch(r"\$(-?[\d.,]+) \((-?[\d.]+)%\)", fig.by_id["saved"])
    assert saved, fig.by_id["saved"]  # (a replayed answer's recorded cost may beat the table)
    assert float(saved.group(1)) == pytest.approx(summary["savings"]["saved_usd"], abs=5e-5)
    answered = {b: int(r["answered"]) for b, r in fig.rows.items() if "answered" in r}
    assert answered == {b: d["requests"] for b, d in summary["backends"].items()
                        if d["requests"]}
    assert sum(answered.values()) == sent
    out = Path(os.environ.get("COSTROUTE_TEST_ARTIFACTS", REPO / "out" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "ui-live-page.png"
    subprocess.run(common + [f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
