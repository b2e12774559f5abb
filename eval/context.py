"""One `router eval` run's context and data: the splits, the lam grid, embeddings, timings.

Split from :mod:`eval.cli` (which re-exports :class:`EvalContext` and
:func:`default_data_path`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_SUBSET = Path("..") / "shared" / "datasets" / "routerbench-subset"


@dataclass
class EvalContext:
    """What an evaluation run has at hand; also what ``eval.online.run_online`` gets."""

    args: argparse.Namespace
    data_source: str
    train: Any  # RoutingDataset
    test: Any  # RoutingDataset
    lams: np.ndarray
    out: Path
    encoder: Any = None  # router.encoding.encoder.Encoder or None
    X_train: np.ndarray | None = None
    X_test: np.ndarray | None = None
    artifact_X: dict[int, np.ndarray] = field(default_factory=dict)  # own-encoder test X
    skipped: dict[str, str] = field(default_factory=dict)  # policy label -> why
    timings: dict[str, float] = field(default_factory=dict)

    def say(self, msg: str) -> None:
        print(f"router eval: {msg}", file=sys.stderr)


def default_data_path() -> Path | None:
    """../shared/datasets/routerbench-subset from the CWD, else from the repo root."""
    for base in (Path.cwd(), REPO_ROOT):
        candidate = base / SHARED_SUBSET
        if candidate.is_dir():
            return candidate.resolve()
    return None


def load_data(args: argparse.Namespace, out: Path) -> EvalContext:
    import router.datasets as D
    from eval import harness as H
    from router.cli import CLIError
    from router.dataset import DatasetSplit

    if args.data is None:
        path = default_data_path()
        if args.test is not None:
            raise CLIError("--test needs --data")
        args.data = str(path) if path is not None else D.DEMO
        print(f"router eval: using data {args.data}"
              + (" (the generated demo dataset)" if path is None else ""), file=sys.stderr)
    if args.data == D.DEMO and not Path(args.data).exists():
        source = D.DEMO
        split = D.load_split(D.DEMO, test_fraction=args.test_fraction, seed=args.seed)
    else:
        if not Path(args.data).exists():
            raise CLIError(f"--data {args.data}: no such file or directory")
        source = str(Path(args.data).resolve())
        if args.test is not None:
            if not Path(args.test).exists():
                raise CLIError(f"--test {args.test}: no such file or directory")
            split = DatasetSplit(D.load_dataset(args.data), D.load_dataset(args.test))
            source += f" + {Path(args.test).resolve()}"
        else:
            split = D.load_split(args.data, test_fraction=args.test_fraction, seed=args.seed)
    train, test = split.train, align_models(split.test, split.train.models)
    if len(test) == 0:
        raise CLIError(f"{test.name}: the test split is empty")
    _, train_cost = train.eval_matrices()
    lams = H.lam_grid(args.lams, train_cost if len(train) else test.eval_matrices()[1])
    return EvalContext(args=args, data_source=source, train=train, test=test, lams=lams, out=out)


def align_models(test, models: list[str]):
    """``test`` with its model columns in ``models`` order (same model set required)."""
    from router.cli import CLIError
    from router.dataset import RoutingDataset

    if list(test.models) == list(models):
        return test
    if set(test.models) != set(models):
        only_train = sorted(set(models) - set(test.models))
        only_test = sorted(set(test.models) - set(models))
        raise CLIError(
            f"train and test model sets differ: only in train {only_train}, "
            f"only in test {only_test}"
        )
    perm = [test.models.index(m) for m in models]
    responses = None
    if test.responses is not None:
        responses = [[row[j] for j in perm] for row in test.responses]
    return RoutingDataset(
        name=test.name, prompts=test.prompts, tasks=test.tasks, models=list(models),
        quality=test.quality[:, perm], cost=test.cost[:, perm], ids=test.ids,
        responses=responses,
    )
