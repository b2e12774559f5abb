"""Gateway outcome logs plus feedback -> a routing dataset of partially observed cells.

Each answered request (``status`` ok, a backend ``model`` and a ``cost``) with a reward
(``POST /v1/feedback``, an automatic reward with source ``auto``, or a replay backend's
grade, source ``replay``) is one observed cell: (prompt, the backend that answered) ->
(reward, real cost). Requests for the same prompt (same ``prompt_hash``) are one row; a
model seen several times on it gets the mean reward and mean cost; every other model's cell
is missing. The prompt text is the record's ``prompt`` when the gateway logged it
(``state.log_prompts``), else the prompt of a ``--prompts`` file with the same hash (the
gateway hashes the last user message, :func:`router.proxy.outcomes.prompt_hash`).

Which feedback counts: per request the latest event among the allowed ``sources`` (default
all); a request without one is not an observation.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from router.proxy.outcomes import prompt_hash
from router.state.outcome_store import merge_events


@dataclass
class FromLogsReport:
    requests: int = 0
    used: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> requests
    rows: int = 0
    per_model: Counter[str] = field(default_factory=Counter)


def select_feedback(events: Iterable[dict[str, Any]], sources: set[str] | None
                    ) -> list[dict[str, Any]]:
    """Outcome records (first-seen order, deduplicated) with the latest allowed feedback;
    feedback for a request without an outcome event is dropped."""
    return [rec for rec in merge_events(events, sources) if not rec.get("outcome_missing")]


def filter_records(records: Iterable[dict[str, Any]], sources: set[str] | None
                   ) -> list[dict[str, Any]]:
    """Exported records (``router logs export``): drop feedback of other sources."""
    out = []
    for rec in records:
        fb = rec.get("feedback")
        if fb is not None and sources is not None and fb.get("source", "api") not in sources:
            rec = {k: v for k, v in rec.items() if k != "feedback"}
        out.append(rec)
    return out


def build_rows(records: Iterable[dict[str, Any]], prompts: dict[str, tuple[str, str | None]],
               default_task: str = "logs") -> tuple[list[dict[str, Any]], FromLogsReport]:
    """Generic-JSONL rows (data/README.md) and what was used or skipped, and why.

    ``prompts``: prompt hash -> (prompt text, task or None), from a prompt file.
    """
    report = FromLogsReport()
    rows: dict[str, dict[str, Any]] = {}
    obs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for rec in records:
        if rec.get("outcome_missing"):
            report.skipped["feedback for an unknown request"] += 1
            continue
        report.requests += 1
        reason = _unusable(rec)
        if reason:
            report.skipped[reason] += 1
            continue
        text = rec.get("prompt")
        task = rec.get("task")
        ph = rec.get("prompt_hash") or (prompt_hash(text) if isinstance(text, str) else None)
        if not isinstance(text, str):
            known = prompts.get(ph) if ph else None
            if known is None:
                report.skipped["prompt text unknown (log prompts, or give --prompts)"] += 1
                continue
            text, task = known[0], task or known[1]
        if ph not in rows:
            rows[ph] = {"id": ph, "prompt": text, "task": task or default_task}
            obs[ph] = {}
        model = str(rec["model"])
        reward = float(rec["feedback"]["reward"])
        obs[ph].setdefault(model, []).append((reward, float(rec["cost"])))
        report.used += 1
        report.per_model[model] += 1
    out = []
    for ph, row in rows.items():
        cells = obs[ph]
        row["scores"] = {m: sum(r for r, _ in v) / len(v) for m, v in cells.items()}
        row["costs"] = {m: sum(c for _, c in v) / len(v) for m, v in cells.items()}
        out.append(row)
    report.rows = len(out)
    return out, report


def _unusable(rec: dict[str, Any]) -> str | None:
    if rec.get("status") != "ok" or not rec.get("model"):
        return "not answered (error)"
    fb = rec.get("feedback")
    if not isinstance(fb, dict):
        return "no feedback"
    reward = fb.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, int | float) or not (
            math.isfinite(reward) and 0 <= reward <= 1):
        return "reward outside [0, 1]"
    cost = rec.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not (
            math.isfinite(cost) and cost >= 0):
        return "no cost"
    return None


def prompt_index(items: Iterable[Any]) -> dict[str, tuple[str, str | None]]:
    """Hash -> (text, task) of prompt-file items, under both the raw and stripped text."""
    out: dict[str, tuple[str, str | None]] = {}
    for item in items:
        for text in (item.prompt, item.prompt.strip()):
            out.setdefault(prompt_hash(text), (item.prompt, item.task))
    return out
