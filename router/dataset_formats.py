"""Readers for each routing-dataset file format, behind one validating builder.

Formats (``source=None`` detects them from the extension, then the first byte):

* ``routerbench`` -- ``.csv`` with RouterBench's columns: ``sample_id``, ``prompt`` (a Python
  list literal, parsed with :func:`ast.literal_eval`, elements joined by a newline),
  ``eval_name`` (task), one quality column per model, ``<model>|total_cost`` (USD per call),
  ``<model>|model_response`` (list literal) and ``oracle_model_to_route_to`` (ignored: it is
  recomputed from the matrices). An unnamed first column is the row index.
* ``routerbench-pickle`` -- RouterBench's original ``routerbench_0shot.pkl`` (a pandas
  DataFrame with the same columns), read with :func:`pandas.read_pickle`. Unpickling runs
  code from the file: only load pickles you trust.
* ``routerdc`` -- ``.json``: a list of ``{"question", "scores": {model: q}, "cluster_id"?}``;
  the task comes from the file name (``gsm8k-train.json`` -> ``gsm8k``).
* ``jsonl`` -- one record per line: ``{"id"?, "prompt", "task"?, "scores": {model: q},
  "costs"?: {model: usd}, "responses"?: {model: text}}`` (see data/README.md).

Costs: a model whose costs the file gives keeps them, a missing cell stays NaN (evaluation then
uses that model's mean cost). A model the file gives no cost for at all is priced by the model
catalogue: ``price_in * ceil(len(prompt) / 4) + price_out * out_tokens`` where ``out_tokens``
is ``ceil(len(response) / 4)`` when the file has the response, else the catalogue's
``typical_output_tokens``. Missing quality cells are NaN (see :mod:`router.dataset`).

Columns or fields the loader does not recognise raise :class:`DatasetError` listing them;
``strict=False`` turns that into a warning and ignores them. Every problem raises
:class:`DatasetError` naming the file and the row, line or record.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router.dataset import RoutingDataset

if TYPE_CHECKING:
    from router.catalogue import ModelCatalogue

_META_COLUMNS = {"sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}
_SUFFIX_COST = "total_cost"
_SUFFIX_RESPONSE = "model_response"
_RECORD_FIELDS = {"id", "prompt", "question", "task", "scores", "costs", "responses", "cluster_id"}
_CHARS_PER_TOKEN = 4
SPLIT_TOKEN = re.compile(r"(?:^|[_\-.])(train|test|dev|val|valid|validation)(?=$|[_\-.])", re.I)


class DatasetError(ValueError):
    """A routing dataset that cannot be read: names the file and the row/line and problem."""


Label = Callable[[int], str]



def detect_format(path: str | Path) -> str:
    """The loader for ``path``: by extension, then by the first non-blank byte."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return "routerbench"
    if suffix in (".pkl", ".pickle"):
        return "routerbench-pickle"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    head = _head(p)
    if head.startswith(b"\x80"):  # pickle protocol >= 2
        return "routerbench-pickle"
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if not first:
        raise DatasetError(f"{p}: file is empty")
    if first == b"[":
        return "routerdc"
    if first == b"{":
        return "jsonl"
    raise DatasetError(
        f"{p}: unknown format: expected .csv (RouterBench), .pkl (RouterBench pickle), "
        ".json (RouterDC list of records) or .jsonl (one JSON record per line)"
    )


def _head(p: Path, n: int = 4096) -> bytes:
    try:
        with p.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read: {exc.strerror or exc}") from None



def read_file(p: Path, source: str | None, strict: bool, catalogue: ModelCatalogue | None,
               responses: bool) -> RoutingDataset:
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise DatasetError(f"{p}: file is empty")
    fmt = source or detect_format(p)
    if fmt == "routerbench" and p.suffix.lower() in (".pkl", ".pickle"):
        fmt = "routerbench-pickle"
    builder = _Builder(p, strict, catalogue)
    if fmt == "routerbench":
        return _load_routerbench_csv(p, builder, responses)
    if fmt == "routerbench-pickle":
        return _load_routerbench_pickle(p, builder, responses)
    if fmt == "routerdc":
        return _load_json_list(p, builder, responses)
    return _load_jsonl(p, builder, responses)



def task_from_filename(path: str | Path) -> str:
    """``mmlu_train.json`` -> ``mmlu``, ``gsm8k-test.json`` -> ``gsm8k``."""
    p = Path(path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    task = SPLIT_TOKEN.sub("", stem).strip("_-.")
    return task or stem


class _Builder:
    """Shared validation and cost filling for every loader."""

    def __init__(self, path: Path, strict: bool, catalogue: ModelCatalogue | None) -> None:
        self.path = path
        self.strict = strict
        self._catalogue = catalogue

    def fail(self, where: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}")

    def unknown(self, what: str, names: Iterable[str], hint: str) -> None:
        names = sorted(set(names))
        if not names:
            return
        msg = f"unrecognised {what}: {', '.join(map(repr, names))} ({hint})"
        if self.strict:
            raise self.fail("", msg + "; pass strict=False (CLI: --lenient) to ignore them")
        warnings.warn(f"{self.path}: ignoring {msg}", stacklevel=4)

    def quality(self, value: Any, where: str, model: str) -> float:
        q = self._number(value, where, f"quality for {model!r}")
        if not math.isnan(q) and not 0.0 <= q <= 1.0:
            raise self.fail(where, f"quality {value!r} for {model!r} is outside [0, 1]")
        return q

    def cost(self, value: Any, where: str, model: str) -> float:
        c = self._number(value, where, f"cost for {model!r}")
        if not math.isnan(c) and (c < 0 or math.isinf(c)):
            raise self.fail(where, f"cost {value!r} for {model!r} must be a finite number >= 0")
        return c

    def _number(self, value: Any, where: str, what: str) -> float:
        if value is None:
            return math.nan
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int | float | np.integer | np.floating):
            return float(value)
        if isinstance(value, str):
            if not value.strip():
                return math.nan
            try:
                return float(value)
            except ValueError:
                pass
        raise self.fail(where, f"{what} is not a number: {value!r}")

    def fill_costs(self, prompts: list[str], models: list[str], cost: np.ndarray,
                   given: set[str], responses: list[list[str | None]] | None) -> None:
        """Price, from the catalogue, every model the file gave no cost for (in place)."""
        todo = [j for j, m in enumerate(models) if m not in given]
        if not todo:
            return
        from router.catalogue import CatalogueError, ModelCatalogue

        try:
            cat = self._catalogue or ModelCatalogue.load()
        except CatalogueError as exc:
            raise self.fail("", f"needs catalogue prices but the catalogue failed: {exc}") from None
        in_tok = np.array([math.ceil(len(p) / _CHARS_PER_TOKEN) for p in prompts], dtype=float)
        unpriced = []
        for j in todo:
            m = models[j]
            try:
                p_in, p_out = cat.price(m)
                typical_out = cat.info(m).typical_output_tokens
            except CatalogueError:
                unpriced.append(m)
                continue
            out_tok = np.full(len(prompts), float(typical_out))
            if responses is not None:
                for i, row in enumerate(responses):
                    if row[j] is not None:
                        out_tok[i] = math.ceil(len(row[j]) / _CHARS_PER_TOKEN)
            cost[:, j] = (p_in * in_tok + p_out * out_tok) / 1e6
        if unpriced:
            raise self.fail("", f"no costs in the file and no catalogue price for models "
                                f"{unpriced}: add per-call costs to the data or the models to "
                                f"the catalogue ({cat.source})")

    def dataset(self, prompts: list[str], tasks: list[str], models: list[str],
                quality: np.ndarray, cost: np.ndarray, ids: list[str],
                responses: list[list[str | None]] | None) -> RoutingDataset:
        if not prompts:
            raise self.fail("", "file is empty: a header but no data rows")
        if not models:
            raise self.fail("", "no model columns/scores found")
        name = self.path.name[: -len(self.path.suffix)] if self.path.suffix else self.path.name
        try:
            return RoutingDataset(name, prompts, tasks, models, quality, cost, ids, responses)
        except ValueError as exc:  # pragma: no cover - validated above
            raise self.fail("", str(exc)) from None


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


# ---------------------------------------------------------------------------------------------
# RouterBench (CSV / pickle)
# ---------------------------------------------------------------------------------------------
def _load_routerbench_csv(p: Path, b: _Builder, responses: bool) -> RoutingDataset:
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


def _load_routerbench_pickle(p: Path, b: _Builder, responses: bool) -> RoutingDataset:
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


def _from_frame(df: Any, b: _Builder, label: Label, skip: set[str],
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


def _floats(col: list[Any], b: _Builder, label: Label, model: str, kind: str) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# RouterDC JSON list and generic JSONL
# ---------------------------------------------------------------------------------------------
def _load_json_list(p: Path, b: _Builder, responses: bool) -> RoutingDataset:
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


def _load_jsonl(p: Path, b: _Builder, responses: bool) -> RoutingDataset:
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


def _read_text(p: Path, b: _Builder) -> str:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise b.fail("", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise b.fail("", f"cannot read: {exc.strerror or exc}") from None
    if not text.strip():
        raise b.fail("", "file is empty")
    return text


def _from_records(records: Iterable[tuple[str, int, Any]], b: _Builder,
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
