"""``router data``: inspect routing datasets and write the generated demo dataset.

``router data inspect PATH [--json]`` loads PATH (a file, a directory of ``*_train``/``*_test``
pairs, a directory of data files, or ``demo``) and prints rows, models, rows per task, per-model
mean quality (missing cells count as 0, the evaluation policy; the mean over observed cells
beside it), mean cost per 1k queries and missing cells -- for train and test separately when
PATH is a pair directory. ``router data demo --out PATH`` writes the demo dataset as JSONL.
``router data label`` (:mod:`router.commands.label`) and ``router data from-logs``
(:mod:`router.commands.from_logs`) make datasets of your own models' answers and gateway logs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    ins = sub.add_parser("inspect", help="summarise a routing dataset",
                         description="summarise a routing dataset (train and test separately "
                                     "for a directory of *_train/*_test pairs)")
    ins.add_argument("path", metavar="PATH",
                     help="data file (.csv, .pkl, .json, .jsonl), directory, or 'demo'")
    ins.add_argument("--json", action="store_true", help="print the summary as JSON")
    ins.add_argument("--source", choices=["routerbench", "routerbench-pickle", "routerdc", "jsonl"],
                     help="force the file format (default: detect)")
    ins.add_argument("--lenient", action="store_true",
                     help="warn about and ignore unknown columns/fields instead of failing")
    ins.add_argument("--catalogue", metavar="YAML",
                     help="model catalogue for data without costs (default: data/models.yaml)")
    demo = sub.add_parser("demo", help="write the generated demo dataset as JSONL",
                          description="write the generated demo dataset as JSONL: one file when "
                                      "--out ends in .jsonl, else DIR/demo_train.jsonl and "
                                      "DIR/demo_test.jsonl (seeded split)")
    demo.add_argument("--out", required=True, metavar="PATH", help="FILE.jsonl or a directory")
    demo.add_argument("--n", type=int, default=600, help="number of prompts (default 600)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--test-fraction", type=float, default=0.3,
                      help="test share when writing a train/test pair (default 0.3)")
    from router.commands import from_logs as cmd_from_logs
    from router.commands import label as cmd_label

    label = sub.add_parser("label", help="answer and grade prompts with the config's backends",
                           description=cmd_label.__doc__.split("\n")[0].split(": ", 1)[1])
    cmd_label.configure(label)
    logs = sub.add_parser("from-logs", help="gateway outcome logs + feedback -> a dataset",
                          description=cmd_from_logs.__doc__.split("\n")[0].split(": ", 1)[1])
    cmd_from_logs.configure(logs)


def run(args: argparse.Namespace) -> int:
    from router.cli import CLIError

    action = getattr(args, "data_command", None)
    if action is None:
        raise CLIError("give an action: router data inspect PATH | router data demo --out PATH")
    if action == "label":
        from router.commands import label as cmd_label

        return cmd_label.run(args)
    if action == "from-logs":
        from router.commands import from_logs as cmd_from_logs

        return cmd_from_logs.run(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = _inspect(args) if action == "inspect" else _demo(args)
    for w in caught:
        print(f"router data: warning: {w.message}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
def summarize(ds: Any) -> dict[str, Any]:
    """JSON-ready summary of a :class:`~router.dataset.RoutingDataset`."""
    quality, cost = ds.eval_matrices()
    mask = ds.mask
    tasks: dict[str, int] = {}
    for t in ds.tasks:
        tasks[t] = tasks.get(t, 0) + 1
    per_model = []
    for j, m in enumerate(ds.models):
        observed = ds.quality[mask[:, j], j]
        per_model.append({
            "model": m,
            "mean_quality": _num(quality[:, j].mean()) if len(ds) else None,
            "observed_quality": _num(observed.mean()) if observed.size else None,
            "cost_per_1k": _num(cost[:, j].mean() * 1000) if len(ds) else None,
            "missing": int((~mask[:, j]).sum()),
            "missing_cost": int(np.isnan(ds.cost[:, j]).sum()),
        })
    oracle = None
    if len(ds) and ds.n_models:
        best = quality.max(axis=1, keepdims=True)
        cheapest = np.where(quality >= best, cost, np.inf).min(axis=1)
        oracle = {"mean_quality": _num(best.mean()), "cost_per_1k": _num(cheapest.mean() * 1000)}
    return {
        "name": ds.name,
        "rows": len(ds),
        "n_models": ds.n_models,
        "models": list(ds.models),
        "tasks": dict(sorted(tasks.items())),
        "missing_cells": int((~mask).sum()),
        "missing_cost_cells": int(np.isnan(ds.cost).sum()),
        "per_model": per_model,
        "oracle": oracle,
    }


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _load(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from router.cli import CLIError
    from router.datasets import DEMO, DatasetError, find_pairs, load_dataset, load_split

    path = Path(args.path)
    if str(args.path) != DEMO and not path.exists():
        raise CLIError(f"{args.path}: no such file or directory")
    catalogue = None
    if args.catalogue:
        from router.catalogue import CatalogueError, ModelCatalogue

        try:
            catalogue = ModelCatalogue.load(args.catalogue)
        except CatalogueError as exc:
            raise CLIError(str(exc)) from None
    kw: dict[str, Any] = dict(source=args.source, strict=not args.lenient, catalogue=catalogue,
                              responses=False)
    try:
        if path.is_dir() and find_pairs(path):
            split = load_split(path, **kw)
            return {"train": summarize(split.train), "test": summarize(split.test)}, "pair"
        return {"all": summarize(load_dataset(args.path, **kw))}, "single"
    except DatasetError as exc:
        raise CLIError(str(exc)) from None


def _inspect(args: argparse.Namespace) -> int:
    splits, kind = _load(args)
    if args.json:
        print(json.dumps({"path": str(args.path), "kind": kind, "splits": splits}, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped: do not squeeze model names into 80 columns
        console = Console(width=120)
    for split_name, s in splits.items():
        title = s["name"] if split_name == "all" else f"{s['name']} [{split_name}]"
        tasks = ", ".join(f"{t} {n}" for t, n in s["tasks"].items())
        console.print(f"[bold]{escape(title)}[/bold]: {s['rows']} rows, {s['n_models']} models, "
                      f"{len(s['tasks'])} tasks ({escape(tasks)}); {s['missing_cells']} missing "
                      f"quality cells, {s['missing_cost_cells']} missing cost cells")
        table = Table(show_header=True, header_style="bold")
        table.add_column("model", no_wrap=True)
        table.add_column("quality", justify="right")
        table.add_column("observed", justify="right")
        table.add_column("$ / 1k queries", justify="right")
        table.add_column("missing", justify="right")
        for row in s["per_model"]:
            table.add_row(escape(row["model"]), _fmt(row["mean_quality"], 3),
                          _fmt(row["observed_quality"], 3), _fmt(row["cost_per_1k"], 3),
                          str(row["missing"]))
        if s["oracle"]:
            table.add_row("[italic]oracle[/italic]", _fmt(s["oracle"]["mean_quality"], 3), "",
                          _fmt(s["oracle"]["cost_per_1k"], 3), "")
        console.print(table)
    console.print("quality: mean with missing cells as 0 (evaluation policy); observed: mean "
                  "over observed cells only", style="dim")
    return 0


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _demo(args: argparse.Namespace) -> int:
    from router.cli import CLIError
    from router.datasets import DatasetError, save_jsonl
    from router.demo_dataset import generate_demo_dataset

    if args.n < 2:
        raise CLIError(f"--n must be >= 2, got {args.n}")
    if not 0 < args.test_fraction < 1:
        raise CLIError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    out = Path(args.out)
    try:
        ds = generate_demo_dataset(n=args.n, seed=args.seed)
        if out.suffix.lower() == ".jsonl":
            if out.is_dir():
                raise CLIError(f"--out {out}: is a directory")
            written = [save_jsonl(ds, out)]
        else:
            if out.exists() and not out.is_dir():
                raise CLIError(f"--out {out}: exists and is not a directory (use a .jsonl name "
                               "for a single file)")
            train, test = ds.split(args.test_fraction, args.seed)
            written = [save_jsonl(train, out / "demo_train.jsonl"),
                       save_jsonl(test, out / "demo_test.jsonl")]
    except (DatasetError, OSError) as exc:
        raise CLIError(f"--out {out}: {exc}") from None
    for p in written:
        print(f"wrote {p}")
    return 0
