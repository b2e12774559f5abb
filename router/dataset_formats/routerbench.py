"""RouterBench readers: the ``.csv`` export and the original pandas pickle.

Both hold the same columns (``sample_id``, ``prompt``, ``eval_name``, one quality column per
model, ``<model>|total_cost``, ``<model>|model_response``, ``oracle_model_to_route_to``) and
go through one frame parser, :func:`_from_frame`.
"""

from __future__ import annotations

import ast
import csv
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from router.dataset import RoutingDataset
from router.dataset_formats.validation import Builder, Label, task_from_filename

_META_COLUMNS = {"sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}
_SUFFIX_COST = "total_cost"
_SUFFIX_RESPONSE = "model_response"


def _literal_text(value: Any) -> str:
    """A RouterBench prompt/response cell -> text (ValueError when it is not a literal)."""
    if isinstance(value, list | tuple):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise ValueError("not a Python literal (expected e.g. ['text'])") from None
    else:
        raise ValueError(f"expected a list literal string, got {type(value).__name__}")
    if isinstance(parsed, str):
        return parsed
    if isinstance(parsed, list | tuple) and all(isinstance(x, str) for x in parsed):
        return "\n".join(parsed)
    raise ValueError(f"literal is a {type(parsed).__name__}, not a list of strings")


def load_csv(p: Path, b: Builder, responses: bool) -> RoutingDataset:
    """A RouterBench ``.csv`` (errors name the row and the line it starts on)."""
    import pandas as pd

    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise b.fail("", "file is empty") from None
    except pd.errors.ParserError as exc:
        raise b.fail("", f"malformed CSV: {str(exc).strip()}") from None
    except UnicodeDecodeError as exc:
        raise b.fail("", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    starts: list[int] = []

    def label(i: int) -> str:
        if not starts:
            starts.extend(_csv_row_start_lines(p))
        line = starts[i + 1] if i + 1 < len(starts) else None
        return f"row {i + 1}" + (f" (line {line})" if line else "")

    index_col = str(df.columns[0]) if len(df.columns) else None
    skip = {index_col} if index_col in ("", "Unnamed: 0") else set()
    return _from_frame(df, b, label, skip, responses)


def _csv_row_start_lines(p: Path) -> list[int]:
    """1-based line on which each CSV record starts (record 0 is the header)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    starts: list[int] = []
    with p.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        prev = 0
        for _ in reader:
            starts.append(prev + 1)
            prev = reader.line_num
    return starts


def load_pickle(p: Path, b: Builder, responses: bool) -> RoutingDataset:
    """RouterBench's pickled DataFrame (unpickling runs code from the file)."""
    import pandas as pd

    try:
        df = pd.read_pickle(p)
    except Exception as exc:  # unpickling can fail in arbitrary ways
        raise b.fail("", f"cannot read the pickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(df, pd.DataFrame):
        raise b.fail("", f"the pickle holds a {type(df).__name__}, not a pandas DataFrame")
    df = df.copy()
    df.columns = [str(c) for c in df.columns]
    index = df.index

    def label(i: int) -> str:
        return f"row {i + 1} (index {index[i]!r})"

    return _from_frame(df, b, label, set(), responses)


def _from_frame(df: Any, b: Builder, label: Label, skip: set[str],
                want_responses: bool) -> RoutingDataset:
    columns = [str(c) for c in df.columns]
    if "prompt" not in columns:
        raise b.fail("header", f"missing required column 'prompt' (columns: {columns[:8]}...)")
    siblings: dict[str, dict[str, str]] = {}
    unknown: list[str] = []
    plain: list[str] = []
    for c in columns:
        if c in skip or c in _META_COLUMNS:
            continue
        if "|" in c:
            base, suffix = c.rsplit("|", 1)
            if suffix in (_SUFFIX_COST, _SUFFIX_RESPONSE):
                siblings.setdefault(base, {})[suffix] = c
            else:
                unknown.append(c)
        else:
            plain.append(c)
    n = len(df)
    values = {c: df[c].tolist() for c in columns}
    models: list[str] = []
    for c in plain:
        if c in siblings:
            models.append(c)
        elif _looks_like_quality(values[c]):
            models.append(c)  # a quality-only model column: priced by the catalogue
        else:
            unknown.append(c)
    orphans = [c for base, sib in siblings.items() if base not in models for c in sib.values()]
    if orphans:
        missing = sorted({c.rsplit("|", 1)[0] for c in orphans})
        raise b.fail("header", f"missing required quality column(s) {missing} for {orphans}")
    b.unknown("columns", unknown, "expected sample_id, prompt, eval_name, <model>, "
              "<model>|total_cost, <model>|model_response, oracle_model_to_route_to")

    prompts: list[str] = []
    for i, v in enumerate(values["prompt"]):
        try:
            text = _literal_text(v)
        except ValueError as exc:
            raise b.fail(label(i), f"prompt is {exc}") from None
        prompts.append(text)
    if "eval_name" in columns:
        tasks = ["" if _is_empty(t) else str(t) for t in values["eval_name"]]
        empty = [i for i, t in enumerate(tasks) if not t]
        if empty:
            raise b.fail(label(empty[0]), "empty eval_name (task)")
    else:
        tasks = [task_from_filename(b.path)] * n
    if "sample_id" in columns:
        ids = [str(s) for s in values["sample_id"]]
    else:
        ids = [f"{b.path.stem}:{i}" for i in range(n)]

    m = len(models)
    quality = np.full((n, m), np.nan)
    cost = np.full((n, m), np.nan)
    given: set[str] = set()
    # responses are parsed when wanted, and always where they size a catalogue cost estimate
    parse = [_SUFFIX_RESPONSE in siblings.get(x, {})
             and (want_responses or _SUFFIX_COST not in siblings[x]) for x in models]
    resp: list[list[str | None]] | None = [[None] * m for _ in range(n)] if any(parse) else None
    for j, model in enumerate(models):
        quality[:, j] = _floats(values[model], b, label, model, "quality")
        sib = siblings.get(model, {})
        if _SUFFIX_COST in sib:
            given.add(model)
            cost[:, j] = _floats(values[sib[_SUFFIX_COST]], b, label, model, "cost")
        if resp is not None and parse[j]:
            rcol = values[sib[_SUFFIX_RESPONSE]]
            for i in range(n):
                v = rcol[i]
                if _is_empty(v):
                    continue
                try:
                    resp[i][j] = _literal_text(v)
                except ValueError as exc:
                    if b.strict:
                        raise b.fail(label(i), f"{model}|model_response is {exc}") from None
                    resp[i][j] = str(v)
    b.fill_costs(prompts, models, cost, given, resp)
    return b.dataset(prompts, tasks, models, quality, cost, ids, resp if want_responses else None)


def _is_empty(v: Any) -> bool:
    """None, blank text, NaN or pandas' NA."""
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, float | np.floating):
        return bool(math.isnan(v))
    return type(v).__name__ in ("NAType", "NaTType")


def _floats(col: list[Any], b: Builder, label: Label, model: str, kind: str) -> np.ndarray:
    """A quality or cost column as floats (empty -> NaN); errors name the first bad row."""
    out = np.full(len(col), np.nan)
    for i, v in enumerate(col):
        if _is_empty(v):
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise b.fail(label(i), f"{kind} for {model!r} is not a number: {v!r}") from None
    with np.errstate(invalid="ignore"):
        bad = (out < 0) | (out > 1) if kind == "quality" else (out < 0) | np.isinf(out)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rule = "is outside [0, 1]" if kind == "quality" else "must be a finite number >= 0"
        raise b.fail(label(i), f"{kind} {col[i]!r} for {model!r} {rule}")
    return out


def _looks_like_quality(col: list[Any]) -> bool:
    """True when every non-empty cell is a number in [0, 1]."""
    seen = False
    for v in col:
        if _is_empty(v):
            continue
        if isinstance(v, bool):
            return False
        try:
            x = float(v)
        except (TypeError, ValueError):
            return False
        if not 0.0 <= x <= 1.0:
            return False
        seen = True
    return seen
