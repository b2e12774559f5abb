"""Schema fuzzing of the gateway's HTTP API with schemathesis (used by tests and benchmarks).

Every operation of the app's OpenAPI schema gets generated requests, both *positive*
(bodies valid under the schema) and *negative* (bodies that break it), sent over real HTTP.
A case passes when the answer is a 2xx, or a 4xx the operation documents with an
OpenAI-style error body; a 5xx, an undocumented status, a malformed error body, a stream
that does not end, or no answer within ``timeout`` seconds is a failure.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class FuzzReport:
    cases: int = 0
    by_operation: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.by_operation.items()))
        sts = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (f"{self.cases} cases in {self.seconds:.1f}s ({ops}); statuses {sts}; "
                f"{len(self.failures)} failures")


def _check(case: Any, resp: httpx.Response, body: bytes, documented: set[str]) -> str | None:
    status = resp.status_code
    if status >= 500:
        return f"server error {status}"
    if str(status) not in documented and f"{str(status)[0]}XX" not in documented:
        return f"undocumented status {status}"
    if 400 <= status < 500:
        try:
            err = json.loads(body)["error"]
            assert isinstance(err["message"], str) and err["message"]
            assert isinstance(err["type"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return f"{status} without an OpenAI-style error body: {body[:200]!r}"
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        text = body.decode("utf-8", "replace")
        if "data: [DONE]" not in text and "event: error" not in text and '"error"' not in text:
            return f"stream ended without [DONE] or an error event: {text[-200:]!r}"
    return None


def _send(client: httpx.Client, case: Any, base_url: str, headers: dict[str, str] | None,
          timeout: float) -> tuple[httpx.Response | None, bytes, dict[str, Any]]:
    kwargs = case.as_transport_kwargs(base_url=base_url)
    send = {k: kwargs[k] for k in ("method", "url", "params", "cookies", "json")
            if kwargs.get(k) is not None}
    if kwargs.get("data") is not None:
        data = kwargs["data"]
        send["content"] = data if isinstance(data, bytes | str) else str(data)
    hdrs = {**(kwargs.get("headers") or {}), **(headers or {})}
    try:
        with client.stream(headers=hdrs, **send) as resp:
            return resp, resp.read(), send
    except httpx.TimeoutException:
        return None, b"", send


def fuzz(base_url: str, openapi: dict[str, Any], cases_per_operation: int = 50,
         headers: dict[str, str] | None = None, timeout: float = 10.0, seed: int = 0,
         negative_share: float = 0.3, only: set[str] | None = None,
         models: list[str] | None = None) -> FuzzReport:
    """Send generated requests for every operation (or those in ``only``, "METHOD /path").

    ``models`` (the gateway's ``/v1/models`` ids) narrows the chat body's ``model`` to names
    that exist, so positive cases reach routing and the backends instead of all ending in
    404 ``model_not_found``; negative cases still break the field.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    if models:
        openapi = copy.deepcopy(openapi)
        body = openapi["paths"]["/v1/chat/completions"]["post"]["requestBody"]
        props = body["content"]["application/json"]["schema"]["properties"]
        props["model"] = {"type": "string", "enum": list(models)}
    schema = schemathesis.openapi.from_dict(openapi)
    report = FuzzReport()
    t0 = time.perf_counter()

    def check_one(client: httpx.Client, case: Any, label: str, documented: set[str]) -> None:
        report.cases += 1
        report.by_operation[label] += 1
        resp, body, sent = _send(client, case, base_url, headers, timeout)
        if resp is None:
            report.failures.append({"operation": label, "case": sent,
                                    "problem": f"no answer within {timeout}s"})
            return
        report.statuses[resp.status_code] += 1
        problem = _check(case, resp, body, documented)
        if problem:
            report.failures.append({"operation": label, "problem": problem, "case": sent})

    def checker(client: httpx.Client, label: str, documented: set[str]):
        def test(case: Any) -> None:
            check_one(client, case, label, documented)
        return test

    with httpx.Client(timeout=timeout) as client:
        for result in schema.get_all_operations():
            op = result.ok()
            label = f"{op.method.upper()} {op.path}"
            if only is not None and label not in only:
                continue
            documented = {str(code) for code in op.definition.raw.get("responses", {})}
            for mode, share in ((GenerationMode.POSITIVE, 1.0 - negative_share),
                                (GenerationMode.NEGATIVE, negative_share)):
                n = int(round(cases_per_operation * share))
                if n <= 0:
                    continue
                run = hseed(seed)(settings(
                    max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )(given(op.as_strategy(generation_mode=mode))(
                    checker(client, label, documented))))
                with contextlib.suppress(Unsatisfiable):  # nothing to break without inputs
                    run()
    report.seconds = time.perf_counter() - t0
    return report
