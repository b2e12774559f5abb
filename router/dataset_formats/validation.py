"""Shared validation and cost filling for every dataset reader, and the error they raise.

:class:`Builder` checks quality and cost values, reports unrecognised columns or fields
(:class:`DatasetError`, or a warning with ``strict=False``), prices from the model catalogue
every model the file gives no cost for, and assembles the :class:`RoutingDataset`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router.dataset import RoutingDataset

if TYPE_CHECKING:
    from router.catalogue import ModelCatalogue

_CHARS_PER_TOKEN = 4
SPLIT_TOKEN = re.compile(r"(?:^|[_\-.])(train|test|dev|val|valid|validation)(?=$|[_\-.])", re.I)


class DatasetError(ValueError):
    """A routing dataset that cannot be read: names the file and the row/line and problem."""


Label = Callable[[int], str]


def task_from_filename(path: str | Path) -> str:
    """``mmlu_train.json`` -> ``mmlu``, ``gsm8k-test.json`` -> ``gsm8k``."""
    p = Path(path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    task = SPLIT_TOKEN.sub("", stem).strip("_-.")
    return task or stem


class Builder:
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
