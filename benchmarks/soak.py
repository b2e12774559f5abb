"""Soak: sustained load on `router serve` while upstreams fail and hang, Redis goes away and a
replica is SIGKILLed; then check that nothing that was answered or paid for was forgotten.

Two set-ups, each on loopback only, bounded and self-stopping:

* ``replicas``: two ``router serve`` subprocesses on one real Redis (AOF), behind a tiny
  client-side balancer (round robin; a request cut by a dead replica is retried once on the
  other, like nginx's ``proxy_next_upstream ... non_idempotent``);
* ``embedded``: one ``router serve`` with the embedded default (no Redis). One process
  cannot answer while it restarts, so this set-up skips the Redis and SIGKILL faults.

The driver sends requests at a fixed rate (open loop: a slow gateway does not slow the
offered load) for a fixed time, to a LinUCB policy over the local upstream
(tests/upstream.py, run as a subprocess), with feedback on a third of the routed answers,
sent to the *other* replica. Fault schedule (fractions of ``--seconds``):

==========  =============================================================================
always      10% of upstream calls fail with 503 (seeded)
0.15-0.35   backend ``strong`` hangs 5 s, past its 1 s timeout (fallback to ``cheap``)
0.40-0.55   Redis is killed, then restarted on the same directory (replicas only)
0.70        replica B is SIGKILLed, and started again at 0.72 (replicas only)
==========  =============================================================================

Report: requests sent / answered / refused with a clear error (an OpenAI-style error body) /
unanswered; p50/p99 latency per phase; fallbacks; outcome records stored vs answered;
bandit updates applied vs feedback accepted; the key's spend in the store vs the sum of the
answered costs. Exit status 1 when anything is lost: an unanswered request, an answered
request without its outcome record, accepted feedback without its bandit update, or
answered spend missing from the store.

    python benchmarks/soak.py                       # defaults: 200 req/s, 60 s, both set-ups
    python benchmarks/soak.py --rate 50 --seconds 10 --setup replicas
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.conftest import RedisServer, ReplicaProcess, free_port  # noqa: E402
from tests.upstream import MATH, POEM, backend_entry, linucb_artifact  # noqa: E402

KEY = "sk-soak-key"
KEY_HASH = hashlib.sha256(KEY.encode()).hexdigest()
AUTH = {"authorization": f"Bearer {KEY}"}
POLICY = "linucb"
#: (name, start, end) as fractions of the run
PHASES = [("steady", 0.0, 0.15), ("strong-hangs", 0.15, 0.35), ("recovered", 0.35, 0.40),
          ("redis-down", 0.40, 0.55), ("redis-back", 0.55, 0.70), ("replica-killed", 0.70, 1.0)]


def phase_at(frac: float) -> str:
    for name, lo, hi in PHASES:
        if lo <= frac < hi:
            return name
    return PHASES[-1][0]


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    refused: Counter = field(default_factory=Counter)  # status -> count (clear error body)
    unanswered: Counter = field(default_factory=Counter)  # reason -> count
    rerouted: int = 0  # refused by a dead replica's port, sent to the other
    cut: int = 0  # dropped mid-request by a dying replica, retried on the other
    fallbacks: int = 0
    cost: float = 0.0
    answered_ids: set[str] = field(default_factory=set)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    fb_sent: int = 0
    fb_ok: int = 0
    fb_queued: int = 0  # answered 202: deferred by the gateway (during/after the outage)
    fb_other: Counter = field(default_factory=Counter)  # "phase status" -> count
    phase_of: dict[str, str] = field(default_factory=dict)  # answered request id -> phase
    send_lag: list[float] = field(default_factory=list)  # how late each request was sent
    load_s: float = 0.0  # the sending itself
    drain_s: float = 0.0  # after the last send, until every answer and feedback was in


class Upstream:
    """tests/upstream.py as a subprocess, steered through /_control."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(workdir / "upstream.log", "ab")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.upstream", "--port", str(self.port),
             "--latency-ms", "20"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/_stats", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("upstream did not start")

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def control(self, **knobs: Any) -> None:
        httpx.post(self.url + "/_control", json=knobs, timeout=5).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def gateway_config(up: Upstream, artifact: Path, state_dir: Path,
                   redis_url: str | None) -> dict[str, Any]:
    return {
        "model_list": [backend_entry("cheap", up.base, 1e-6, 2e-6),
                       backend_entry("strong", up.base, 1e-5, 2e-5)],
        "routing": {"artifact": str(artifact), "lam": 10.0, "fallback": ["cheap", "strong"],
                    "max_fallback_tries": 3, "timeouts": {"strong": 1.0, "cheap": 5.0},
                    "cooldown_seconds": 1.0, "allowed_fails": 3},
        "state": {"dir": str(state_dir), "redis_url": redis_url, "sync_outcomes": True,
                  "flush_interval_seconds": 0.2},
        "keys": {"keys": [{"name": "soak", "key": KEY, "budget_usd": 1000.0}]},
    }


class Balancer:
    """Round robin over replicas; a connection cut by a dead replica is retried once.

    The driver is one ``aiohttp`` session (one event loop, one process): httpx's pool scans
    every pooled connection on each request, so with hundreds in flight the driver itself
    became the bottleneck (earlier runs: 100% CPU for minutes after the load, the measured
    latency its own backlog). ``slots`` bounds the requests in flight; a request waiting
    for a slot is timed from its due time, so the wait counts as latency (no coordinated
    omission)."""

    def __init__(self, urls: list[str], session: Any, tally: Tally, slots: asyncio.Semaphore
                 ) -> None:
        self.urls = urls
        self.session = session
        self.tally = tally
        self.slots = slots

    async def post(self, i: int, path: str, body: dict[str, Any]
                   ) -> tuple[int, dict[str, str], Any] | str:
        import aiohttp

        last = "no replica"
        async with self.slots:
            for attempt in range(min(2, len(self.urls))):
                url = self.urls[(i + attempt) % len(self.urls)]
                try:
                    async with self.session.post(url + path, json=body) as r:
                        raw = await r.read()
                        try:
                            data = json.loads(raw)
                        except ValueError:
                            data = None
                        return r.status, dict(r.headers), data
                except TimeoutError:
                    return "timeout"
                except aiohttp.ClientConnectorError as exc:
                    last = type(exc).__name__
                    if attempt == 0 and len(self.urls) > 1:
                        self.tally.rerouted += 1
                except aiohttp.ClientError as exc:  # cut mid-request (server disconnected)
                    last = type(exc).__name__
                    if attempt == 0 and len(self.urls) > 1:
                        self.tally.cut += 1
        return last


def clear_error(data: Any) -> bool:
    try:
        err = data["error"]
        return bool(err["message"]) and isinstance(err["type"], str)
    except (KeyError, TypeError):
        return False


async def one_request(i: int, lb: Balancer, tally: Tally, phase: str, due: float,
                      feedback: list[asyncio.Task]) -> None:
    text = (MATH if i % 2 else POEM).format(i)
    model = "cheap" if i % 10 == 0 else "router-auto"
    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    tally.sent += 1
    r = await lb.post(i, "/v1/chat/completions", body)
    if isinstance(r, str):
        tally.unanswered[r] += 1
        return
    tally.latency[phase].append(time.perf_counter() - due)
    status, headers, data = r
    if status != 200:
        if clear_error(data):
            tally.refused[status] += 1
        else:
            tally.unanswered[f"{status} without an error body"] += 1
        return
    info = (data or {}).get("router") or {}
    rid = headers["x-router-request-id"]
    tally.answered += 1
    tally.answered_ids.add(rid)
    tally.phase_of[rid] = phase
    tally.cost += float(headers["x-router-cost"])
    if len(info.get("attempts") or []) > 1:
        tally.fallbacks += 1
    if model == "router-auto" and i % 3 == 0:
        reward = 1.0 if headers["x-router-model"] == "strong" else 0.3
        feedback.append(asyncio.create_task(send_feedback(i + 1, lb, tally, rid, reward, phase)))


async def send_feedback(i: int, lb: Balancer, tally: Tally, rid: str, reward: float,
                        phase: str) -> None:
    tally.fb_sent += 1
    r = await lb.post(i, "/v1/feedback", {"request_id": rid, "reward": reward})
    if isinstance(r, str):
        tally.fb_other[f"{phase} {r}"] += 1
    elif r[0] in (200, 202):
        tally.fb_ok += 1
        tally.fb_queued += r[0] == 202
    else:
        tally.fb_other[f"{phase} {r[0]}"] += 1


async def drive(rate: float, seconds: float, lb: Balancer, tally: Tally,
                schedule: list[tuple[float, Any]]) -> None:
    """Open-loop load at ``rate`` for ``seconds``; ``schedule`` runs (fraction, fn) faults."""
    n = int(rate * seconds)
    tasks: set[asyncio.Task] = set()
    feedback: list[asyncio.Task] = []
    pending: list[asyncio.Future] = []
    todo = sorted(schedule, key=lambda s: s[0])
    t0 = time.perf_counter()
    loop = asyncio.get_running_loop()
    faults = ThreadPoolExecutor(1)  # one fault at a time, in schedule order
    for i in range(n):
        due = t0 + i / rate
        while todo and todo[0][0] * seconds <= due - t0:
            _, fn = todo.pop(0)
            pending.append(loop.run_in_executor(faults, fn))  # beside the load
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.send_lag.append(time.perf_counter() - due)
        phase = phase_at((due - t0) / seconds)
        task = asyncio.create_task(one_request(i, lb, tally, phase, due, feedback))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    tally.load_s = time.perf_counter() - t0
    for _, fn in todo:
        pending.append(loop.run_in_executor(faults, fn))
    await asyncio.gather(*pending)
    faults.shutdown()
    await asyncio.gather(*tasks)
    await asyncio.gather(*feedback)
    tally.drain_s = time.perf_counter() - t0 - tally.load_s


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    p = lambda q: v[min(len(v) - 1, int(math.ceil(q * len(v))) - 1)] * 1000  # noqa: E731
    return f"{p(0.5):.1f} / {p(0.99):.1f} ms"


def stored_outcomes(setup: str, state_dirs: list[Path], redis_url: str | None
                    ) -> tuple[set[str], float]:
    """Request ids of the outcome records the store holds, and the sum of their costs
    (answered ones, and ones whose answer a dying replica never sent: paid all the same)."""
    from router.state.outcome_store import open_outcome_store

    ids: set[str] = set()
    cost = 0.0
    for d in state_dirs if setup == "embedded" else state_dirs[:1]:
        store = open_outcome_store(d, redis_url, "costroute:outcomes")
        for r in store.records():
            if r.get("event", "outcome") == "outcome" and r.get("request_id"):
                ids.add(r["request_id"])
                cost += float(r.get("cost") or 0.0)
    return ids, cost


def bandit_version(setup: str, state_dir: Path, redis_url: str | None) -> int:
    """How many outcomes the shared (or embedded) bandit has folded in (its version;
    the Redis log itself is trimmed at each compaction)."""
    if redis_url:
        import redis

        return int(redis.Redis.from_url(redis_url).get(f"costroute:bandit:{POLICY}:ver") or 0)
    from router.state.bandit_store import EmbeddedBanditStore

    store = EmbeddedBanditStore(state_dir / f"bandit-{POLICY}.npz")
    return max(0, int(store.version()))


def key_spend(setup: str, state_dir: Path, redis_url: str | None) -> tuple[float, float]:
    """(spent, reserved) of the soak key in the store, after every replica stopped."""
    if redis_url:
        import redis

        spent, reserved = redis.Redis.from_url(redis_url).hmget(
            f"costroute:key:{KEY_HASH}", "spent", "reserved")
        return float(spent or 0.0), float(reserved or 0.0)
    import sqlite3

    with sqlite3.connect(state_dir / "keys.sqlite") as con:
        row = con.execute("SELECT spent FROM spend WHERE key_hash = ?", (KEY_HASH,)).fetchone()
    return (float(row[0]) if row else 0.0), 0.0  # embedded: reservations die with the process


def run(setup: str, rate: float, seconds: float, workdir: Path, max_inflight: int = 256
        ) -> dict[str, Any]:
    """One soak run; returns the report (``lost`` lists what went missing).

    ``max_inflight`` bounds the driver's requests in flight (and its connections)."""
    workdir.mkdir(parents=True, exist_ok=True)
    up = Upstream(workdir)
    up.control(model="*", fail="503", fail_rate=0.10)
    artifact = linucb_artifact(workdir / "artifact")
    redis_srv = RedisServer(workdir / "redis", aof=True).start() if setup == "replicas" else None
    url = redis_srv.url if redis_srv else None
    names = ["a", "b"] if setup == "replicas" else ["a"]
    reps = [ReplicaProcess(gateway_config(up, artifact, workdir / f"state-{n}", url),
                           workdir / f"replica-{n}") for n in names]
    for r in [r.launch() for r in reps]:
        r.wait_ready(90)
    version0 = bandit_version(setup, workdir / "state-a", url) if url else 0
    tally = Tally()
    restarted: dict[str, float] = {}

    def restart_b() -> None:
        t = time.perf_counter()
        reps[1].launch().wait_ready(90)
        restarted["b"] = time.perf_counter() - t

    schedule: list[tuple[float, Any]] = [
        (0.15, lambda: up.control(model="strong", fail="timeout", fail_rate=1.0,
                                  hang_seconds=5.0)),
        (0.35, lambda: up.control(model="strong", fail="503", fail_rate=0.10)),
    ]
    if setup == "replicas":
        schedule += [(0.40, redis_srv.stop), (0.55, redis_srv.start),
                     (0.70, reps[1].kill), (0.72, restart_b)]

    async def main() -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=max_inflight, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=30.0)
        async with aiohttp.ClientSession(headers=AUTH, connector=connector,
                                         timeout=timeout) as session:
            lb = Balancer([r.url for r in reps], session, tally, asyncio.Semaphore(max_inflight))
            await drive(rate, seconds, lb, tally, schedule)

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    time.sleep(1.5)  # feedback contexts / outcome writer flush interval
    for r in reps:
        r.stop()  # graceful: drains outcome writers, persists spend
    stored, stored_cost = stored_outcomes(setup, [workdir / f"state-{n}" for n in names], url)
    updates = bandit_version(setup, workdir / "state-a", url) - version0
    spend, reserved = key_spend(setup, workdir / "state-a", url)
    up.stop()
    if redis_srv:
        redis_srv.stop()
    lost_records = len(tally.answered_ids - stored)
    tol = 1e-9 * max(1.0, tally.cost)
    report = {
        "setup": setup, "rate": rate, "seconds": seconds, "wall_s": round(wall, 1),
        "sent": tally.sent, "answered": tally.answered, "refused": dict(tally.refused),
        "unanswered": dict(tally.unanswered), "rerouted": tally.rerouted, "cut": tally.cut,
        "fallbacks": tally.fallbacks,
        "latency_p50_p99": {p: percentiles(tally.latency[p]) for p, _, _ in PHASES
                            if tally.latency[p]},
        "records_stored_of_answered": f"{tally.answered - lost_records} / {tally.answered}",
        "feedback": {"sent": tally.fb_sent, "accepted": tally.fb_ok,
                     "deferred_202": tally.fb_queued, "other": dict(tally.fb_other),
                     "bandit_updates": updates},
        "spend": {"store": spend, "answered_sum": tally.cost,
                  "difference": spend - tally.cost, "records_sum": stored_cost,
                  "reserved_left": reserved},
        "send_lag_p99_ms": round(sorted(tally.send_lag)[int(0.99 * (len(tally.send_lag) - 1))]
                                 * 1000, 1) if tally.send_lag else None,
        "load_s": round(tally.load_s, 1), "drain_s": round(tally.drain_s, 1),
        "replica_b_restart_s": round(restarted.get("b", 0.0), 2) or None,
    }
    lost = []
    if tally.unanswered:
        lost.append(f"{sum(tally.unanswered.values())} unanswered requests")
    if lost_records:
        lost.append(f"{lost_records} answered requests without an outcome record")
    if updates < tally.fb_sent:
        lost.append(f"{tally.fb_sent - updates} feedback sent without a bandit update "
                    f"({dict(tally.fb_other) or 'all accepted'})")
    if spend < tally.cost - tol:
        lost.append(f"${tally.cost - spend:.9f} of answered spend missing from the store")
    if abs(spend - stored_cost) > tol:
        lost.append(f"key spend ${spend:.9f} differs from the recorded calls' "
                    f"${stored_cost:.9f}")
    if reserved > tol:
        lost.append(f"${reserved:.9f} still reserved on the key after every replica stopped")
    report["lost"] = lost
    return report


def print_report(rep: dict[str, Any]) -> None:
    print(f"\n== {rep['setup']}: {rep['rate']:g} req/s for {rep['seconds']:g} s "
          f"(wall {rep['wall_s']} s)")
    print(f"sent {rep['sent']}, answered {rep['answered']}, refused with a clear error "
          f"{sum(rep['refused'].values())} {rep['refused']}, unanswered "
          f"{sum(rep['unanswered'].values())} {rep['unanswered']}")
    print(f"fallbacks {rep['fallbacks']}; to the killed replica: {rep['cut']} cut mid-request "
          f"and {rep['rerouted']} refused at connect, each retried once on the other; "
          f"replica B back in {rep['replica_b_restart_s']} s")
    for phase, lat in rep["latency_p50_p99"].items():
        print(f"  {phase:<15} p50 / p99 {lat}")
    fb = rep["feedback"]
    print(f"outcome records stored / answered: {rep['records_stored_of_answered']}")
    print(f"feedback sent {fb['sent']}, accepted {fb['accepted']} (of which deferred, 202: "
          f"{fb['deferred_202']}; other {fb['other']}), bandit updates applied "
          f"{fb['bandit_updates']}")
    s = rep["spend"]
    print(f"key spend in the store ${s['store']:.9f} vs answered costs ${s['answered_sum']:.9f} "
          f"(difference {s['difference']:+.2e}: calls whose answer a killed replica never "
          f"sent); vs all recorded calls ${s['records_sum']:.9f}; still reserved "
          f"${s['reserved_left']:.3g}")
    print(f"driver: sending {rep['load_s']} s (send lag p99 {rep['send_lag_p99_ms']} ms), "
          f"drain {rep['drain_s']} s")
    print("LOST: " + "; ".join(rep["lost"]) if rep["lost"] else "nothing lost")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--setup", choices=["replicas", "embedded", "both"], default="both")
    p.add_argument("--keep", metavar="DIR", help="keep logs and state here")
    p.add_argument("--json", metavar="FILE", help="write the reports as JSON")
    args = p.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.rate * args.seconds > 200_000:
        p.error("--rate and --seconds must be > 0 (and at most 200,000 requests)")
    if args.setup != "embedded" and shutil.which("redis-server") is None:
        p.error("the replicas set-up needs redis-server on PATH")
    setups = ["replicas", "embedded"] if args.setup == "both" else [args.setup]
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        for setup in setups:
            rep = run(setup, args.rate, args.seconds, root / setup)
            print_report(rep)
            reports.append(rep)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 1 if any(r["lost"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
