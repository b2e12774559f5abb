"""Schema fuzzing of the gateway's HTTP API (schemathesis), benchmark size.

Starts the local upstream and the real gateway (keys on, a kNN artifact, a streaming-capable
backend pair), fetches ``/openapi.json`` and sends ``--cases`` generated requests per
operation over loopback HTTP: positive bodies (valid under the schema, with existing model
names) and negative ones (bodies that break it). Every answer must be a 2xx or a documented
4xx with an OpenAI-style error body; it exits 1 on any 5xx, undocumented status, malformed
error, unterminated stream or hang.

    python benchmarks/fuzz_api.py --cases 600     # ~1,200 cases over chat + feedback
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.fuzz import fuzz  # noqa: E402
from tests.upstream import GatewayServer, UpstreamServer, gateway_config, tiny_artifact  # noqa: E402

KEY = "sk-fuzz-bench"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=600, help="generated cases per operation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=15.0, help="seconds before a hang")
    args = p.parse_args()
    headers = {"authorization": f"Bearer {KEY}"}
    with tempfile.TemporaryDirectory() as tmp:
        up = UpstreamServer().start()
        cfg = gateway_config(up.base, tiny_artifact(Path(tmp) / "artifact"), Path(tmp) / "st",
                             keys={"keys": [{"name": "fuzz", "key": KEY, "budget_usd": 1e6}]})
        gw = GatewayServer(cfg).start()
        try:
            doc = httpx.get(gw.url + "/openapi.json", headers=headers).json()
            models = [m["id"] for m in
                      httpx.get(gw.base + "/models", headers=headers).json()["data"]]
            report = fuzz(gw.url, doc, cases_per_operation=args.cases, headers=headers,
                          models=models, timeout=args.timeout, seed=args.seed)
        finally:
            gw.stop()
            up.stop()
    print(report.summary())
    for f in report.failures[:20]:
        print(f"FAIL {f['operation']}: {f['problem']}\n     {str(f['case'])[:300]}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
