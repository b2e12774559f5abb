"""Routing datasets: load a file or a directory (train/test pairs), split, join, save.

The file formats (RouterBench CSV or pickle, RouterDC JSON, generic JSONL) and their
validation live in :mod:`router.dataset_formats`; the generated demo data in
:mod:`router.demo_dataset` (``load_dataset("demo")``).
"""


from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from router.dataset import DatasetSplit, RoutingDataset
from router.dataset_formats import SPLIT_TOKEN, DatasetError, read_file

if TYPE_CHECKING:
    from router.catalogue import ModelCatalogue

FORMATS = ("routerbench", "routerbench-pickle", "routerdc", "jsonl")
DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".ndjson", ".pkl", ".pickle")
DEMO = "demo"  # load_dataset("demo") / load_split("demo") give the generated demo dataset


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------
def load_dataset(path: str | Path, *, source: str | None = None, strict: bool = True,
                 catalogue: ModelCatalogue | None = None,
                 responses: bool = True) -> RoutingDataset:
    """Load one routing dataset file, or every data file of a directory concatenated.

    ``source`` forces a format (one of :data:`FORMATS`); ``strict=False`` warns about and
    ignores unknown columns/fields instead of raising; ``catalogue`` prices models the file
    has no costs for (default: :meth:`ModelCatalogue.load`); ``responses=False`` skips parsing
    model responses (faster on the full RouterBench pickle). The path ``"demo"`` (when no
    such file exists) gives :func:`generate_demo_dataset`.

    Security: ``.pkl``/``.pickle`` files are read with :func:`pandas.read_pickle`, which can
    execute code stored in the file. Only load pickles from sources you trust.
    """
    p = Path(path)
    if str(path) == DEMO and not p.exists():
        from router.demo_dataset import generate_demo_dataset

        return generate_demo_dataset()
    if source is not None and source not in FORMATS:
        raise DatasetError(f"{p}: unknown source {source!r} (choose from {', '.join(FORMATS)})")
    if p.is_dir():
        files = _data_files(p)
        if not files:
            subdirs = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            hint = f"; subdirectories: {', '.join(subdirs)}" if subdirs else ""
            raise DatasetError(f"{p}: no data files ({', '.join(DATA_SUFFIXES)}) in the "
                               f"directory{hint}")
        parts = [read_file(f, source, strict, catalogue, responses) for f in files]
        return concat_datasets(parts, name=p.name)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    return read_file(p, source, strict, catalogue, responses)


def load_split(path: str | Path, test_fraction: float = 0.3, seed: int = 0, *,
               source: str | None = None, strict: bool = True,
               catalogue: ModelCatalogue | None = None, responses: bool = True) -> DatasetSplit:
    """Train/test data: ``*_train*``/``*_test*`` file pairs of a directory, else a seeded split.

    A directory holding pairs (``x_train.csv``/``x_test.csv`` or ``x-train.json``/``x-test.json``)
    loads every pair and concatenates the train halves and the test halves over tasks. A single
    file, or a directory without such names, is loaded whole and split by
    :meth:`RoutingDataset.split` (seeded, deterministic, stratified by task).
    """
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    p = Path(path)
    kw: dict[str, Any] = dict(source=source, strict=strict, catalogue=catalogue,
                              responses=responses)
    if p.is_dir():
        pairs = find_pairs(p)
        if pairs:
            train = concat_datasets([read_file(tr, source, strict, catalogue, responses)
                                     for _, tr, _ in pairs], name=p.name)
            test = concat_datasets([read_file(te, source, strict, catalogue, responses)
                                    for _, _, te in pairs], name=p.name)
            models = list(train.models) + [m for m in test.models if m not in train.models]
            return DatasetSplit(align_models(train, models), align_models(test, models))
    ds = load_dataset(p, **kw)
    train, test = ds.split(test_fraction, seed)
    return DatasetSplit(train, test)


def find_pairs(directory: str | Path) -> list[tuple[str, Path, Path]]:
    """``(key, train_file, test_file)`` for each ``<key>_train*``/``<key>_test*`` pair.

    Returns ``[]`` when the directory has no train/test names. Raises :class:`DatasetError`
    for a train file without its test file (or the reverse), or two files for one half.
    Files named ``dev``/``val`` and other data files are ignored with a warning.
    """
    d = Path(directory)
    halves: dict[str, dict[str, Path]] = {}
    others: list[str] = []
    for f in _data_files(d):
        stem = f.name[: -len(f.suffix)] if f.suffix else f.name
        matches = list(SPLIT_TOKEN.finditer(stem))
        match = matches[-1] if matches else None
        if match is None or match.group(1).lower() not in ("train", "test"):
            others.append(f.name)
            continue
        key = stem[: match.start()] + stem[match.end():]
        half = match.group(1).lower()
        slot = halves.setdefault(key, {})
        if half in slot:
            raise DatasetError(f"{d}: two {half} files for {key!r}: {slot[half].name}, {f.name}")
        slot[half] = f
    if not halves:
        return []
    unpaired = sorted(s[h].name for s in halves.values() for h in s if len(s) == 1)
    if unpaired:
        raise DatasetError(f"{d}: train/test files without their other half: {', '.join(unpaired)}")
    if others:
        warnings.warn(f"{d}: ignoring data files that are neither train nor test: "
                      f"{', '.join(others)}", stacklevel=2)
    return [(k, halves[k]["train"], halves[k]["test"]) for k in sorted(halves)]



def concat_datasets(parts: Sequence[RoutingDataset], name: str | None = None) -> RoutingDataset:
    """Rows of ``parts`` one after another; models are the union (absent cells are NaN)."""
    if not parts:
        raise DatasetError("nothing to concatenate")
    if len(parts) == 1:
        ds = parts[0]
        return ds if name is None or name == ds.name else _renamed(ds, name)
    models: list[str] = []
    for ds in parts:
        models.extend(m for m in ds.models if m not in models)
    for ds in parts:
        lacking = [m for m in models if m not in ds.models]
        if lacking:
            warnings.warn(f"{ds.name}: no data for models {lacking}; their cells are missing",
                          stacklevel=2)
    aligned = [align_models(ds, models) for ds in parts]
    has_resp = any(ds.responses is not None for ds in aligned)
    return RoutingDataset(
        name=name or parts[0].name,
        prompts=[p for ds in aligned for p in ds.prompts],
        tasks=[t for ds in aligned for t in ds.tasks],
        models=models,
        quality=np.vstack([ds.quality for ds in aligned]),
        cost=np.vstack([ds.cost for ds in aligned]),
        ids=[i for ds in aligned for i in ds.ids],
        responses=[row for ds in aligned for row in (
            ds.responses if ds.responses is not None else [[None] * len(models)] * len(ds))]
        if has_resp else None,
    )


def align_models(ds: RoutingDataset, models: Sequence[str]) -> RoutingDataset:
    """``ds`` with columns in ``models`` order; models it lacks get NaN cells."""
    models = list(models)
    if list(ds.models) == models:
        return ds
    extra = [m for m in ds.models if m not in models]
    if extra:
        raise DatasetError(f"{ds.name}: models {extra} are not in the target model list")
    n = len(ds)
    quality = np.full((n, len(models)), np.nan)
    cost = np.full((n, len(models)), np.nan)
    responses = None if ds.responses is None else [[None] * len(models) for _ in range(n)]
    for j, m in enumerate(models):
        if m in ds.models:
            k = ds.models.index(m)
            quality[:, j] = ds.quality[:, k]
            cost[:, j] = ds.cost[:, k]
            if responses is not None:
                for i in range(n):
                    responses[i][j] = ds.responses[i][k]  # type: ignore[index]
    return RoutingDataset(ds.name, list(ds.prompts), list(ds.tasks), models, quality, cost,
                          list(ds.ids), responses)


def save_jsonl(ds: RoutingDataset, path: str | Path) -> Path:
    """Write ``ds`` in the generic JSONL format (missing cells are left out)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for i in range(len(ds)):
            rec: dict[str, Any] = {"id": ds.ids[i], "prompt": ds.prompts[i], "task": ds.tasks[i]}
            rec["scores"] = {m: float(q) for m, q in zip(ds.models, ds.quality[i], strict=True)
                             if not math.isnan(q)}
            costs = {m: float(c) for m, c in zip(ds.models, ds.cost[i], strict=True)
                     if not math.isnan(c)}
            if costs:
                rec["costs"] = costs
            if ds.responses is not None:
                resp = {m: r for m, r in zip(ds.models, ds.responses[i], strict=True)
                        if r is not None}
                if resp:
                    rec["responses"] = resp
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return p




def _data_files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir()
                  if f.is_file() and f.suffix.lower() in DATA_SUFFIXES and not f.name.startswith("."))


def _renamed(ds: RoutingDataset, name: str) -> RoutingDataset:
    return RoutingDataset(name, ds.prompts, ds.tasks, ds.models, ds.quality, ds.cost, ds.ids,
                          ds.responses)
