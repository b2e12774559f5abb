"""The gateway's recent outcome records in memory, for the live page (``GET /ui``).

The outcome logger taps every event it is given into a :class:`LiveWindow`: outcome records
are kept (compacted to what :func:`router.ops.summary.summarize` reads) for ``seconds``, at
most ``max_records``; feedback events are merged into their record. So the page's figures
are the report's, over the last hour, without reading the outcome store on each refresh.
This is one replica's view: behind a load balancer each replica shows its own traffic.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

KEEP = ("request_id", "ts", "status", "http_status", "error_code", "kind", "policy", "model",
        "prompt_tokens", "completion_tokens", "cost", "latency_ms", "key_name", "key_id",
        "lam", "explored")


def compact(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: rec[k] for k in KEEP if k in rec}
    out["attempts"] = [{k: a.get(k) for k in ("model", "error", "cost") if k in a}
                       for a in rec.get("attempts") or [] if isinstance(a, Mapping)]
    out["candidates"] = [{"model": c.get("model"), "quality": c.get("quality")}
                         for c in rec.get("candidates") or [] if isinstance(c, Mapping)]
    cascade = rec.get("cascade")
    if isinstance(cascade, Mapping):
        out["cascade"] = {"labels": dict(cascade.get("labels") or {})}
    if isinstance(rec.get("feedback"), Mapping):
        out["feedback"] = dict(rec["feedback"])
    return out


class LiveWindow:
    """The last ``seconds`` of outcome records (thread-safe; O(1) per event)."""

    def __init__(self, seconds: float = 3600.0, max_records: int = 200_000) -> None:
        self.seconds = seconds
        self.max_records = max_records
        self._recs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, event: Mapping[str, Any]) -> None:
        rid = event.get("request_id")
        if not rid:
            return
        with self._lock:
            if event.get("event") == "feedback":
                rec = self._recs.get(rid)
                if rec is not None and event.get("reward") is not None:
                    rec["feedback"] = {"reward": float(event["reward"]),
                                       "source": event.get("source", "api")}
                return
            self._recs[rid] = compact(event)
            self._recs.move_to_end(rid)
            while len(self._recs) > self.max_records:
                self._recs.popitem(last=False)

    def records(self, window: float | None = None, now: float | None = None
                ) -> list[dict[str, Any]]:
        """Records of the last ``window`` seconds (at most the kept ``seconds``)."""
        now = time.time() if now is None else now
        keep_from = now - self.seconds
        since = now - min(window or self.seconds, self.seconds)
        with self._lock:
            while self._recs:
                first = next(iter(self._recs.values()))
                if (first.get("ts") or now) >= keep_from:
                    break
                self._recs.popitem(last=False)
            return [dict(r) for r in self._recs.values() if (r.get("ts") or now) >= since]
