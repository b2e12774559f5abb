"""`router eval`'s outputs: results.json's content, report.md and the plots.

Split from :mod:`eval.cli`.
"""

from __future__ import annotations

import time
from typing import Any

from eval.context import EvalContext


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    from router import __version__

    found: dict[str, str | None] = {"costroute": __version__}
    for dist in ("numpy", "faiss-cpu", "torch", "sentence-transformers"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def _encoder_config(encoder) -> dict[str, Any] | None:
    return None if encoder is None else encoder.config()


def results_json(ctx: EvalContext, evaluation, scores: dict[str, Any]) -> dict[str, Any]:
    from eval.compare import requirement

    test_tasks = {t: int((evaluation.tasks == t).sum()) for t in evaluation.task_names}
    ref = evaluation.ref
    return {
        "dataset": {
            "name": ctx.test.name,
            "source": ctx.data_source,
            "n_train": len(ctx.train),
            "n_test": len(ctx.test),
            "models": evaluation.models,
            "test_tasks": test_tasks,
        },
        "seed": ctx.args.seed,
        "bootstrap": ctx.args.bootstrap,
        "ci_level": 0.95,
        "cost_unit": "USD per query (mean over test queries)",
        "lams": [float(v) for v in ctx.lams],
        "encoder": _encoder_config(ctx.encoder),
        "versions": _versions(),
        "strong": ref.models[ref.strong],
        "weak": ref.models[ref.weak],
        "best_single": ref.models[ref.best],
        "reference": evaluation.reference_json(),
        "policies": scores,
        "skipped": dict(ctx.skipped),
        "vs_task_static": requirement(scores, evaluation.baseline_label()),
    }


def write_outputs(ctx: EvalContext, results: dict[str, Any]) -> None:
    from eval.report import write_report

    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_report(results, ctx.out / "report.md")
    if not ctx.args.no_plots:
        from eval.plots import plot_pareto, plot_per_task

        plot_pareto(results, ctx.out / "pareto.png")
        plot_per_task(results, ctx.out / "per_task.png")
    ctx.timings["outputs_s"] = time.perf_counter() - t0
