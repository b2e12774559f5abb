"""``router data label``'s engine: every prompt to every backend, graded, journaled, capped.

Backends are the gateway's own (:func:`router.proxy.backends.make_backend`: the pooled-HTTP
fast path for OpenAI-compatible ones, litellm for the rest), so a label costs what the same
call through ``router serve`` costs: the price is applied to the usage the provider returns.

* **Cells** (prompt, model) run prompt by prompt (all models of a prompt before the next),
  ``concurrency`` at a time; a judge grade follows its answer in the same cell.
* **Retries**: a retryable failure (timeout, connection, 429, 5xx, bad JSON) is retried
  ``retries`` times with exponential backoff and jitter (``backoff`` seconds doubling, at
  most 30 s). Authentication failures (401/403) and ``max_backend_failures`` failed cells in
  a row stop a backend: its remaining cells are skipped (and asked on the next run).
* **Spend cap**: a call starts only when the spend so far (the journal's, previous runs
  included) plus what running calls may cost plus its own upper bound (prompt estimate and
  ``max_tokens`` at the backend's prices) stays within ``max_usd``; otherwise no new call
  starts, the running ones finish, and the report says the cap was reached.
* **Resume**: every answer and verdict is fsynced to the :class:`~router.label_journal.Journal`
  as it returns; cells found there are not asked again.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from router.graders import GraderSpec, judge_messages, parse_verdict
from router.label_journal import Journal, text_hash
from router.prompt_file import PromptItem

BACKOFF_CAP = 30.0
FATAL_STATUS = (401, 403)


@dataclass
class LabelReport:
    """What a run did (figures of this run; ``spent_total`` includes earlier runs)."""

    cells: int = 0
    answered: int = 0  # answers paid in this run
    reused: int = 0  # answers found in the journal
    judged: int = 0
    judge_unparsable: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # backend -> failed cells
    skipped: Counter[str] = field(default_factory=Counter)  # backend -> cells not tried
    stopped_backends: dict[str, str] = field(default_factory=dict)  # backend -> why
    budget_stop: bool = False
    calls: int = 0  # upstream calls made, retries included
    spent_run: float = 0.0
    spent_total: float = 0.0
    left: int = 0  # cells without an answer (or a wanted verdict) at the end

    @property
    def complete(self) -> bool:
        return self.left == 0


@dataclass
class _Cell:
    item: PromptItem
    ph: str
    model: str
    grader: GraderSpec


class _Spend:
    """Spend so far plus reservations of running calls, against a hard cap."""

    def __init__(self, spent: float, cap: float | None) -> None:
        self.spent = spent
        self.cap = cap
        self.reserved = 0.0
        self.stopped = False

    def reserve(self, amount: float) -> bool:
        if self.stopped:
            return False
        if self.cap is not None and self.spent + self.reserved + amount > self.cap + 1e-12:
            self.stopped = True
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual


class Labeler:
    """Runs the cells of ``items`` x ``models`` through ``backends`` (name -> Backend)."""

    def __init__(self, items: list[PromptItem], models: list[str], graders: list[GraderSpec],
                 backends: dict[str, Any], journal: Journal, *, concurrency: int = 8,
                 retries: int = 4, backoff: float = 0.5, max_usd: float | None = None,
                 max_tokens: int = 1024, judge_max_tokens: int = 16,
                 temperature: float | None = None, max_backend_failures: int = 5,
                 progress: bool = True) -> None:
        self.items = items
        self.models = models
        self.graders = graders
        self.backends = backends
        self.journal = journal
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_tokens = int(max_tokens)
        self.judge_max_tokens = int(judge_max_tokens)
        self.temperature = temperature
        self.max_backend_failures = max(1, int(max_backend_failures))
        self.progress = progress
        self.spend = _Spend(journal.spent, max_usd)
        self.report = LabelReport()
        self._fails_in_row: Counter[str] = Counter()
        self._bar: Any = None

    # ---- planning ----------------------------------------------------------------------
    def cells(self) -> list[_Cell]:
        out = []
        for item, grader in zip(self.items, self.graders, strict=True):
            ph = text_hash(item.prompt)
            out.extend(_Cell(item, ph, m, grader) for m in self.models)
        return out

    def _done(self, cell: _Cell) -> bool:
        ans = self.journal.answer(cell.item.id, cell.ph, cell.model)
        if ans is None:
            return False
        if cell.grader.kind != "judge":
            return True
        return self.journal.grade(cell.item.id, cell.ph, cell.model, str(cell.grader)) is not None

    # ---- running -----------------------------------------------------------------------
    async def run(self) -> LabelReport:
        cells = self.cells()
        self.report.cells = len(cells)
        todo = [c for c in cells if not self._done(c)]
        self.report.reused = sum(
            1 for c in cells if self.journal.answer(c.item.id, c.ph, c.model) is not None)
        queue: asyncio.Queue[_Cell] = asyncio.Queue()
        for c in todo:
            queue.put_nowait(c)
        self._bar = _progress(len(todo), self.progress)
        self._show_spend()
        try:
            workers = [asyncio.create_task(self._worker(queue))
                       for _ in range(min(self.concurrency, max(1, len(todo))))]
            await asyncio.gather(*workers)
        finally:
            if self._bar is not None:
                self._bar.close()
        self.report.spent_total = self.journal.spent
        self.report.left = sum(1 for c in cells if not self._done(c))
        self.report.budget_stop = self.spend.stopped
        return self.report

    async def _worker(self, queue: asyncio.Queue[_Cell]) -> None:
        while not queue.empty():
            cell = queue.get_nowait()
            if cell.model in self.report.stopped_backends or self.spend.stopped:
                self.report.skipped[cell.model] += 1
                self._tick()
                continue
            await self._cell(cell)
            self._tick()

    async def _cell(self, cell: _Cell) -> None:
        ans = self.journal.answer(cell.item.id, cell.ph, cell.model)
        if ans is None:
            messages = [{"role": "user", "content": cell.item.prompt}]
            comp = await self._call(cell, cell.model, messages, self.max_tokens, "answer")
            if comp is None:
                return
            response = _content(comp.body)
            ans = {"t": "answer", "id": cell.item.id, "ph": cell.ph, "model": cell.model,
                   "response": response, "cost": comp.cost, "pt": comp.prompt_tokens,
                   "ct": comp.completion_tokens,
                   "est": bool(comp.extra.get("usage_estimated"))}
            await self.journal.append_async(ans)
            self.report.answered += 1
        if cell.grader.kind != "judge":
            return
        if self.journal.grade(cell.item.id, cell.ph, cell.model, str(cell.grader)) is not None:
            return
        judge = str(cell.grader.backend)
        if judge in self.report.stopped_backends:
            self.report.skipped[judge] += 1
            return
        messages = judge_messages(cell.item.prompt, ans.get("response") or "",
                                  cell.item.reference)
        comp = await self._call(cell, judge, messages, self.judge_max_tokens, "judge")
        if comp is None:
            return
        verdict = _content(comp.body)
        score = parse_verdict(verdict)
        await self.journal.append_async({"t": "grade", "id": cell.item.id, "ph": cell.ph,
                             "model": cell.model, "grader": str(cell.grader), "score": score,
                             "cost": comp.cost, "verdict": (verdict or "")[:500]})
        self.report.judged += 1
        if score is None:
            self.report.judge_unparsable += 1

    async def _call(self, cell: _Cell, name: str, messages: list[dict[str, Any]],
                    max_tokens: int, stage: str):
        """One paid call with retries; None when it failed, was capped or stopped."""
        from router.proxy.backends import BackendError
        from router.proxy.wire import estimate_prompt_tokens

        backend = self.backends[name]
        payload: dict[str, Any] = {"model": name, "messages": messages, "max_tokens": max_tokens}
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        bound = backend.max_cost(estimate_prompt_tokens(messages), max_tokens)
        last: BackendError | None = None
        for attempt in range(self.retries + 1):
            if name in self.report.stopped_backends:
                return None
            if not self.spend.reserve(bound):
                self.report.skipped[name] += 1
                return None
            self.report.calls += 1
            try:
                comp = await backend.complete(payload)
            except BackendError as exc:
                self.spend.settle(bound, 0.0)
                last = exc
                if exc.status in FATAL_STATUS:
                    self._stop_backend(name, f"authentication failed ({exc.status}: "
                                             f"{exc.message[:200]})")
                    break
                if not exc.retryable or attempt == self.retries:
                    break
                await asyncio.sleep(self._delay(attempt))
                continue
            self.spend.settle(bound, comp.cost)
            self.report.spent_run += comp.cost
            self._fails_in_row[name] = 0
            self._show_spend()
            return comp
        assert last is not None
        await self.journal.append_async({"t": "error", "id": cell.item.id, "ph": cell.ph,
                             "model": cell.model, "stage": stage, "backend": name,
                             "kind": last.kind, "status": last.status,
                             "message": last.message[:300]})
        self.report.failed[name] += 1
        self._fails_in_row[name] += 1
        if self._fails_in_row[name] >= self.max_backend_failures:
            self._stop_backend(name, f"{self._fails_in_row[name]} cells in a row failed after "
                                     f"{self.retries} retries (last: {last.kind}"
                                     f"{' ' + str(last.status) if last.status else ''}: "
                                     f"{last.message[:200]})")
        return None

    def _delay(self, attempt: int) -> float:
        base = min(BACKOFF_CAP, self.backoff * (2 ** attempt))
        return base * (0.5 + random.random() / 2)

    def _stop_backend(self, name: str, why: str) -> None:
        self.report.stopped_backends.setdefault(name, why)

    def _tick(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _show_spend(self) -> None:
        if self._bar is not None:
            cap = "" if self.spend.cap is None else f" of ${self.spend.cap:.4f}"
            self._bar.set_postfix_str(f"spent ${self.spend.spent:.4f}{cap}", refresh=False)


def _content(body: dict[str, Any]) -> str:
    for ch in body.get("choices") or ():
        msg = ch.get("message") or {} if isinstance(ch, dict) else {}
        if isinstance(msg.get("content"), str):
            return msg["content"]
    return ""


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="labelling", unit="cell", dynamic_ncols=True)


# ---- the dataset -------------------------------------------------------------------------
def dataset_records(items: list[PromptItem], models: list[str], graders: list[GraderSpec],
                    journal: Journal, default_task: str) -> tuple[list[dict[str, Any]], int]:
    """Generic-JSONL records (data/README.md) of the journal's cells, and the count of
    answered cells without a grade (unparsable or missing verdicts)."""
    from router.graders import grade_reference

    out, ungraded = [], 0
    for item, grader in zip(items, graders, strict=True):
        ph = text_hash(item.prompt)
        scores: dict[str, float | None] = {}
        costs: dict[str, float] = {}
        responses: dict[str, str] = {}
        for m in models:
            ans = journal.answer(item.id, ph, m)
            scores[m] = None
            if ans is None:
                continue
            costs[m] = float(ans.get("cost") or 0.0)
            responses[m] = ans.get("response") or ""
            if grader.kind == "judge":
                g = journal.grade(item.id, ph, m, str(grader))
                score = None if g is None else g.get("score")
            else:
                score = grade_reference(grader.kind, responses[m], item.reference or "")
            if score is None or not math.isfinite(float(score)):
                ungraded += 1
                continue
            scores[m] = float(score)
        rec: dict[str, Any] = {"id": item.id, "prompt": item.prompt,
                               "task": item.task or default_task, "scores": scores}
        if costs:
            rec["costs"] = costs
        if responses:
            rec["responses"] = responses
        out.append(rec)
    return out, ungraded
