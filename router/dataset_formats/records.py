"""Record readers: RouterDC's ``.json`` list of records and the generic ``.jsonl``.

A record is ``{"id"?, "prompt" | "question", "task"?, "scores": {model: q}, "costs"?,
"responses"?, "cluster_id"?}``; both formats go through one record parser,
:func:`_from_records`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from router.dataset import RoutingDataset
from router.dataset_formats.validation import Builder, task_from_filename

_RECORD_FIELDS = {"id", "prompt", "question", "task", "scores", "costs", "responses", "cluster_id"}


def load_json_list(p: Path, b: Builder, responses: bool) -> RoutingDataset:
    """A RouterDC ``.json`` list of records."""
    text = _read_text(p, b)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise b.fail(f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise b.fail("", f"expected a JSON list of records, got a {type(data).__name__}")
    if not data:
        raise b.fail("", "the list of records is empty")
    total = len(data)
    return _from_records(((f"record {i + 1} of {total}", i + 1, r) for i, r in enumerate(data)),
                         b, responses)


def load_jsonl(p: Path, b: Builder, responses: bool) -> RoutingDataset:
    """One JSON record per line (blank lines skipped)."""
    text = _read_text(p, b)

    def records():
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise b.fail(f"line {lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})"
                             ) from None
            yield f"line {lineno}", lineno, rec

    return _from_records(records(), b, responses)


def _read_text(p: Path, b: Builder) -> str:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise b.fail("", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise b.fail("", f"cannot read: {exc.strerror or exc}") from None
    if not text.strip():
        raise b.fail("", "file is empty")
    return text


def _from_records(records: Iterable[tuple[str, int, Any]], b: Builder,
                  want_responses: bool) -> RoutingDataset:
    default_task = task_from_filename(b.path)
    prompts: list[str] = []
    tasks: list[str] = []
    ids: list[str] = []
    rows_q: list[dict[str, float]] = []
    rows_c: list[dict[str, float]] = []
    rows_r: list[dict[str, str]] = []
    models: dict[str, None] = {}
    unknown: set[str] = set()
    for where, number, rec in records:
        if not isinstance(rec, dict):
            raise b.fail(where, f"expected a JSON object, got {type(rec).__name__}")
        unknown.update(k for k in rec if k not in _RECORD_FIELDS)
        if "prompt" in rec and "question" in rec:
            raise b.fail(where, "give 'prompt' or 'question', not both")
        key = "prompt" if "prompt" in rec else "question"
        prompt = rec.get(key)
        if prompt is None:
            raise b.fail(where, "missing required field 'prompt' (or 'question')")
        if not isinstance(prompt, str) or not prompt.strip():
            raise b.fail(where, f"'{key}' must be a non-empty string, got {prompt!r}")
        scores = rec.get("scores")
        if not isinstance(scores, dict) or not scores:
            raise b.fail(where, "missing required field 'scores' (a non-empty {model: quality})")
        q = {str(m): b.quality(v, where, str(m)) for m, v in scores.items()}
        for m in q:
            models.setdefault(m, None)
        c: dict[str, float] = {}
        if rec.get("costs") is not None:
            if not isinstance(rec["costs"], dict):
                raise b.fail(where, "'costs' must be an object {model: usd}")
            c = {str(m): b.cost(v, where, str(m)) for m, v in rec["costs"].items()}
        r: dict[str, str] = {}
        if rec.get("responses") is not None:
            if not isinstance(rec["responses"], dict):
                raise b.fail(where, "'responses' must be an object {model: text}")
            for m, v in rec["responses"].items():
                if v is not None and not isinstance(v, str):
                    raise b.fail(where, f"response for {m!r} must be a string or null")
                if v is not None:
                    r[str(m)] = v
        task = rec.get("task", default_task)
        if not isinstance(task, str) or not task:
            raise b.fail(where, f"'task' must be a non-empty string, got {task!r}")
        rid = rec.get("id")
        if rid is not None and not isinstance(rid, str | int):
            raise b.fail(where, f"'id' must be a string or integer, got {rid!r}")
        prompts.append(prompt)
        tasks.append(task)
        ids.append(str(rid) if rid is not None else f"{b.path.stem}:{number}")
        rows_q.append(q)
        rows_c.append(c)
        rows_r.append(r)
    if not prompts:
        raise b.fail("", "no records")
    b.unknown("fields", unknown, f"expected {', '.join(sorted(_RECORD_FIELDS))}")
    names = list(models)
    stray = sorted({m for row in (*rows_c, *rows_r) for m in row} - set(names))
    if stray:
        raise b.fail("", f"costs/responses for models with no scores anywhere: {stray}")
    col = {m: j for j, m in enumerate(names)}
    n, m = len(prompts), len(names)
    quality = np.full((n, m), np.nan)
    cost = np.full((n, m), np.nan)
    resp: list[list[str | None]] | None = (
        [[None] * m for _ in range(n)] if any(rows_r) else None)
    given: set[str] = set()
    for i in range(n):
        for name, v in rows_q[i].items():
            quality[i, col[name]] = v
        for name, v in rows_c[i].items():
            cost[i, col[name]] = v
            given.add(name)
        if resp is not None:
            for name, v in rows_r[i].items():
                resp[i][col[name]] = v
    b.fill_costs(prompts, names, cost, given, resp)  # responses size the estimates either way
    return b.dataset(prompts, tasks, names, quality, cost, ids, resp if want_responses else None)
