"""The append-only journal of ``router data label``: every paid call, fsynced as it returns.

One JSON object per line, each fsynced before its cell counts as done (concurrent cells
share one fsync):

* ``{"t": "answer", "id", "ph", "model", "response", "cost", "pt", "ct", "est", "ts"}``:
  a model's answer to prompt ``id`` (``ph``: the prompt text's hash, so an edited prompt is
  asked again), its real cost from the returned usage (``est``: usage was estimated);
* ``{"t": "grade", "id", "ph", "model", "grader", "score", "cost", "verdict", "ts"}``: a
  judge's verdict on that answer (``score`` null when the verdict did not parse);
* ``{"t": "error", "id", "ph", "model", "stage", "kind", "status", "message", "ts"}``: a
  call that failed after its retries (kept for the report; the cell is tried again on the
  next run).

A run killed at any moment leaves at worst a torn last line, which loading skips; every
line before it is a paid answer that the next run does not pay for again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class Journal:
    """Answers and judge grades already paid for, and the spend they cost."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.answers: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.grades: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.spent = 0.0
        self.skipped_lines = 0
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0
        self._synced = 0
        self._f = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    self.skipped_lines += 1  # a torn line from a killed run
                    continue
                if isinstance(rec, dict):
                    self._index(rec)

    def _index(self, rec: dict[str, Any]) -> None:
        kind = rec.get("t")
        if kind == "answer":
            self.answers[(rec["id"], rec["ph"], rec["model"])] = rec
            self.spent += float(rec.get("cost") or 0.0)
        elif kind == "grade":
            self.grades[(rec["id"], rec["ph"], rec["model"], rec["grader"])] = rec
            self.spent += float(rec.get("cost") or 0.0)
        elif kind == "error":
            self.errors.append(rec)

    def append(self, rec: dict[str, Any]) -> None:
        """Write one record and fsync it before returning."""
        self._sync(self._write(rec))

    async def append_async(self, rec: dict[str, Any]) -> None:
        """:meth:`append` for the event loop: the fsync runs in a thread, and one fsync
        covers every record written before it (group commit of concurrent cells)."""
        import asyncio

        seq = self._write(rec)
        await asyncio.to_thread(self._sync, seq)

    def _write(self, rec: dict[str, Any]) -> int:
        rec = {**rec, "ts": round(time.time(), 3)}
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                torn = _ends_torn(self.path)
                self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
                if torn:
                    self._f.write("\n")  # a torn last line stays on a line of its own
            self._f.write(line)
            self._f.flush()
            self._index(rec)
            self._written += 1
            return self._written

    def _sync(self, seq: int) -> None:
        """Return once record ``seq`` is on disk (an fsync, unless one already covered it)."""
        with self._sync_lock:
            if self._synced >= seq:
                return
            with self._lock:
                upto = self._written
                fd = self._f.fileno()
            os.fsync(fd)
            self._synced = upto

    def answer(self, pid: str, ph: str, model: str) -> dict[str, Any] | None:
        return self.answers.get((pid, ph, model))

    def grade(self, pid: str, ph: str, model: str, grader: str) -> dict[str, Any] | None:
        return self.grades.get((pid, ph, model, grader))

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


def _ends_torn(path: Path) -> bool:
    """True when ``path`` is non-empty and does not end with a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False
