"""Prompt files for ``router data label`` and ``router calibrate``: JSONL, CSV or plain text.

* ``.jsonl`` / ``.ndjson``: one JSON object per line with ``prompt`` (or ``question``) and
  optionally ``id``, ``task``, ``answer`` (or ``reference``: the reference answer the
  ``exact``/``mc``/``number`` graders compare with) and ``grader`` (this prompt's grader);
  other fields are ignored (named once in a warning);
* ``.csv``: a header row with a ``prompt`` (or ``question``) column and optionally the same
  other columns;
* anything else (``.txt``): one prompt per line, blank lines skipped.

Ids default to ``line<N>`` (JSONL, text) or ``row<N>`` (CSV). Every problem raises
:class:`PromptFileError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

PROMPT_FIELDS = ("prompt", "question")
ANSWER_FIELDS = ("answer", "reference")
KNOWN_FIELDS = {"id", "task", "grader", *PROMPT_FIELDS, *ANSWER_FIELDS}


class PromptFileError(ValueError):
    """A malformed prompt file (the message names the file and the line)."""


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    task: str | None = None
    reference: str | None = None
    grader: str | None = None


def read_prompts(path: str | Path) -> list[PromptItem]:
    """The prompts of ``path`` (format from the extension; see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        items = _jsonl(path, text)
    elif suffix == ".csv":
        items = _csv(path, text)
    else:
        items = [PromptItem(f"line{i}", line.strip())
                 for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not items:
        raise PromptFileError(f"{path}: no prompts in the file")
    seen: dict[str, int] = {}
    for n, item in enumerate(items, 1):
        if item.id in seen:
            raise PromptFileError(f"{path}: id {item.id!r} of prompt {n} is already used by "
                                  f"prompt {seen[item.id]}")
        seen[item.id] = n
    return items


def _field(rec: dict, names: tuple[str, ...], where: str) -> str | None:
    for name in names:
        value = rec.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise PromptFileError(f"{where}: field {name!r} must be a string, got "
                                  f"{type(value).__name__}")
        return str(value)
    return None


def _item(rec: dict, default_id: str, where: str) -> PromptItem:
    prompt = rec.get("prompt", rec.get("question"))
    if not isinstance(prompt, str) or not prompt.strip():
        got = "missing" if prompt is None else f"{type(prompt).__name__} {str(prompt)[:40]!r}"
        raise PromptFileError(f"{where}: needs a non-empty string 'prompt' (or 'question'), "
                              f"got {got}")
    return PromptItem(
        id=_field(rec, ("id",), where) or default_id,
        prompt=prompt,
        task=_field(rec, ("task",), where),
        reference=_field(rec, ANSWER_FIELDS, where),
        grader=_field(rec, ("grader",), where),
    )


def _warn_unknown(path: Path, unknown: set[str]) -> None:
    if unknown:
        warnings.warn(f"{path}: ignoring field(s) {sorted(unknown)} (known: "
                      f"{sorted(KNOWN_FIELDS)})", stacklevel=3)


def _jsonl(path: Path, text: str) -> list[PromptItem]:
    items, unknown = [], set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})"
                                  ) from None
        if not isinstance(rec, dict):
            raise PromptFileError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        unknown |= set(rec) - KNOWN_FIELDS
        items.append(_item(rec, f"line{lineno}", where))
    _warn_unknown(path, unknown)
    return items


def _csv(path: Path, text: str) -> list[PromptItem]:
    reader = csv.DictReader(text.splitlines(keepends=True), strict=True)
    try:
        header = reader.fieldnames
    except csv.Error as exc:
        raise PromptFileError(f"{path}: line 1: malformed CSV header ({exc})") from None
    if not header:
        raise PromptFileError(f"{path}: empty CSV file")
    if not any(h in PROMPT_FIELDS for h in header):
        raise PromptFileError(f"{path}: line 1: no 'prompt' (or 'question') column; the "
                              f"header has {header}")
    _warn_unknown(path, set(header) - KNOWN_FIELDS)
    items = []
    try:
        for n, row in enumerate(reader, 1):
            where = f"{path}: row {n} (line {reader.line_num})"
            if None in row:
                raise PromptFileError(f"{where}: more cells than the header's {len(header)}")
            items.append(_item(row, f"row{n}", where))
    except csv.Error as exc:
        raise PromptFileError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    return items
