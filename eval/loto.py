"""Leave-one-task-out evaluation (`router eval --leave-one-task-out`).

For each task ``t`` of the dataset every policy is trained on the *train* split of the
other tasks and evaluated on the *test* split of ``t`` (so no row of ``t`` is seen in
training, and the test rows are the same as in the in-distribution run). This is how a
router meets a new kind of traffic. The yardstick is ``best-single``, chosen on the
training tasks: a learned policy must not lose to "always use the best model" there.

Per task and learned policy the headline figure is the difference at best-single's cost:
``H(C_bs) - Q_bs``, the policy's hull (RouterBench's non-decreasing convex hull of its
lam sweep) read at best-single's mean test cost, minus best-single's quality, with a
paired bootstrap interval (resample ``b`` recomputes both from the same resampled test
queries). The mean over tasks has the interval of the per-resample means (the tasks'
test sets are disjoint, so their resamples are independent). Both AIQ conventions are
reported per task too. Definitions: eval/README.md.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from eval import metrics as M

BEST_SINGLE = "best-single"
WITHIN = 0.005  # "within" tolerance of the requirement against best-single


class LotoError(ValueError):
    """A dataset or request leave-one-task-out cannot handle."""


def task_folds(train_tasks, test_tasks) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(task, train rows of the other tasks, test rows of the task) for each task that has
    test rows, sorted by name; LotoError when fewer than two tasks exist."""
    tr, te = np.asarray(train_tasks, dtype=object), np.asarray(test_tasks, dtype=object)
    names = sorted(set(tr.tolist()) | set(te.tolist()))
    if len(names) < 2:
        raise LotoError(f"leave-one-task-out needs at least 2 tasks; the data has {names}")
    folds = []
    for t in names:
        train_rows, test_rows = np.flatnonzero(tr != t), np.flatnonzero(te == t)
        if len(test_rows) and len(train_rows):
            folds.append((t, train_rows, test_rows))
    if not folds:
        raise LotoError("no task has both test rows and other tasks to train on")
    return folds


def versus_best_single(evaluation, label: str, base: str, counts: np.ndarray,
                       level: float = 0.95) -> dict[str, Any]:
    """``label``'s hull at best-single's cost minus best-single's quality, with a paired
    bootstrap interval and the per-resample differences (``"samples"``, dropped later)."""
    res = {r.label: r for r in evaluation.results}
    q, c = evaluation.selected(res[label].choices)  # (L, n)
    bq, bc = evaluation.selected(res[base].choices)
    hull = M.pareto_hull(c.mean(axis=1), q.mean(axis=1))
    # best-single picks one model whatever lam: its first sweep point is the point
    cost_bs, q_bs = float(bc[0].mean()), float(bq[0].mean())
    value = float(M.hull_value(hull, cost_bs))
    n = q.shape[1]
    samples = np.full(counts.shape[0], np.nan)
    if counts.shape[0]:
        cb, qb = counts @ c.T / n, counts @ q.T / n
        bcb, bqb = counts @ bc[0] / n, counts @ bq[0] / n
        for b in range(counts.shape[0]):
            h = M.pareto_hull(cb[b], qb[b])
            samples[b] = float(M.hull_value(h, bcb[b])) - bqb[b]
    diff = value - q_bs
    return {
        "best_single_cost": cost_bs,
        "best_single_quality": q_bs,
        "quality_at_best_single_cost": value,
        "diff": diff,
        "diff_ci": M.percentile_ci(samples, level),
        "verdict": verdict(diff),
        "samples": samples,
    }


def verdict(diff: float) -> str:
    if diff > 1e-9:
        return "above"
    return "within" if diff >= -WITHIN - 1e-12 else "below"


def summarise(per_task: dict[str, dict[str, Any]], learned: list[str],
              level: float = 0.95) -> dict[str, Any]:
    """Mean over tasks per learned policy and whether the requirement holds: on every task
    within :data:`WITHIN` of best-single or above it, and above it on the mean."""
    out: dict[str, Any] = {}
    for label in learned:
        rows = [per_task[t]["vs_best_single"][label] for t in per_task]
        diffs = np.array([r["diff"] for r in rows])
        samples = np.array([r["samples"] for r in rows])  # (tasks, B)
        mean_ci = M.percentile_ci(samples.mean(axis=0), level) if samples.size else None
        worst = int(np.argmin(diffs))
        out[label] = {
            "mean_diff": float(diffs.mean()),
            "mean_diff_ci": mean_ci,
            "mean_quality_at_best_single_cost": float(np.mean(
                [r["quality_at_best_single_cost"] for r in rows])),
            "mean_best_single_quality": float(np.mean([r["best_single_quality"] for r in rows])),
            "worst_task": list(per_task)[worst],
            "worst_diff": float(diffs[worst]),
            "tasks_below": [t for t, r in zip(per_task, rows, strict=True)
                            if r["verdict"] == "below"],
            "met": bool(diffs.mean() > 1e-9 and all(r["verdict"] != "below" for r in rows)),
        }
    return out


def run_loto(ctx, specs, say=print) -> dict[str, Any]:
    """Leave-one-task-out over ``ctx`` (an ``eval.cli.EvalContext`` with both splits and
    their embeddings): per task results and the mean, as a results.json dict."""
    from eval import harness as H
    from eval.cli import EvalContext, _train_and_sweep

    names = [s.name for s in specs]
    if BEST_SINGLE not in names:
        specs = [*specs, H.PolicySpec(BEST_SINGLE, BEST_SINGLE)]
    base = next(s.label for s in specs if s.name == BEST_SINGLE and not s.params)
    args = ctx.args
    folds = task_folds(ctx.train.tasks, ctx.test.tasks)
    per_task: dict[str, dict[str, Any]] = {}
    learned: list[str] = []
    for i, (task, tr, te) in enumerate(folds):
        t0 = time.perf_counter()
        train, test = ctx.train.subset(tr), ctx.test.subset(te)
        lams = H.lam_grid(args.lams, train.eval_matrices()[1])
        fold = EvalContext(
            args=args, data_source=ctx.data_source, train=train, test=test, lams=lams,
            out=ctx.out, encoder=ctx.encoder,
            X_train=None if ctx.X_train is None else ctx.X_train[tr],
            X_test=None if ctx.X_test is None else ctx.X_test[te],
        )
        say(f"leave-one-task-out {i + 1}/{len(folds)}: test on {task} ({len(test)} test "
            f"queries), train on the other tasks ({len(train)} queries)")
        evaluation = H.Evaluation(test, lams, weak=args.weak, strong=args.strong)
        _train_and_sweep(fold, evaluation, specs, [])
        scores = evaluation.score(n_boot=args.bootstrap, seed=args.seed)
        learned = [label for label, p in scores.items() if p["learned"]]
        counts = M.bootstrap_counts(len(test), args.bootstrap, args.seed)
        per_task[task] = {
            "n_train": len(train),
            "n_test": len(test),
            "train_tasks": sorted(set(train.tasks)),
            "best_single": evaluation.models[int(evaluation.results[
                [r.label for r in evaluation.results].index(base)].choices[0, 0])],
            "policies": {label: _brief(p) for label, p in scores.items()},
            "vs_best_single": {label: versus_best_single(evaluation, label, base, counts)
                               for label in learned},
            "backoff": backoff_evidence(train, fold.X_train, fold.X_test),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    summary = summarise(per_task, learned)
    for entry in per_task.values():
        for row in entry["vs_best_single"].values():
            row.pop("samples")
    return {
        "mode": "leave-one-task-out",
        "dataset": {"name": ctx.train.name, "source": ctx.data_source,
                    "n_train": len(ctx.train), "n_test": len(ctx.test),
                    "models": list(ctx.train.models), "tasks": list(per_task)},
        "seed": args.seed,
        "bootstrap": args.bootstrap,
        "ci_level": 0.95,
        "within": WITHIN,
        "baseline": base,
        "learned": learned,
        "cost_unit": "USD per query (mean over test queries)",
        "encoder": None if ctx.encoder is None else ctx.encoder.config(),
        "per_task": per_task,
        "mean": summary,
        "all_met": bool(learned) and all(s["met"] for s in summary.values()),
    }


def backoff_evidence(train, X_train, X_test) -> dict[str, Any] | None:
    """The distance-aware backoff the anchored policies fit on this fold's training tasks
    (:class:`policies._anchor.TaskPrior`, fitted by leaving each training task out) and
    what it does on the left-out task: per training task, the utility gain of the anchor
    over the global prior when that task was left out (the evidence the backoff was chosen
    on), and the mean backoff weight on the left-out test queries (1 = the inferred task's
    means, 0 = the global prior, i.e. best-single). None without embeddings."""
    from policies._anchor import TaskPrior
    from policies._priors import encode_tasks

    if X_train is None or X_test is None or len(train) == 0:
        return None
    names, codes = encode_tasks(list(train.tasks), len(train))
    _, cost = train.eval_matrices()
    prior = TaskPrior.fit(np.asarray(X_train, np.float32), codes, names, train.quality, cost)
    _, _, fam = prior.task_means(np.asarray(X_test, np.float32))
    backoff = prior.backoff
    return {
        "fitted": backoff.fitted,
        "left_out_tasks": backoff.info.get("left_out_tasks", {}),
        "weight_mean": float(prior.weight(fam).mean()) if len(fam) else None,
        "familiarity_quantile_median": (float(np.median(prior.familiarity.quantile(fam)))
                                        if len(fam) else None),
    }


def _brief(p: dict[str, Any]) -> dict[str, Any]:
    """The per-policy figures kept for a left-out task."""
    keys = ("policy", "params", "learned", "aiq", "aiq_ci", "aiq_routerbench",
            "aiq_routerbench_ci", "max_quality", "max_quality_ci", "cost_at_max_quality",
            "cost_at_best_single_quality", "hull", "timings")
    return {k: p.get(k) for k in keys}


# ---- report ------------------------------------------------------------------------------
def _backoff_lines(b: dict[str, Any] | None) -> list[str]:
    """The per-task backoff paragraph of the report (nothing without one)."""
    if not b or b.get("weight_mean") is None:
        return []
    gains = ", ".join(f"{name} {g['anchored_minus_global']:+.4f}"
                      for name, g in b["left_out_tasks"].items())
    return [f"Backoff ({b['fitted']}): mean weight {b['weight_mean']:.2f} on this task's test "
            "queries (1 = the inferred training task's means, 0 = best-single); median "
            f"familiarity quantile {b['familiarity_quantile_median']:.3f}. "
            + (f"Anchor minus global utility when each training task was left out: {gains}."
               if gains else "No training task could be left out."), ""]


def _signed(value: float, ci: list[float] | None) -> str:
    return f"{value:+.4f}" + ("" if not ci else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]")


def render_loto(results: dict[str, Any], summary: bool = False) -> str:
    """report.md of a leave-one-task-out run (``summary``: just the two tables)."""
    from eval.report import _table, per_1k

    per_task, learned, mean = results["per_task"], results["learned"], results["mean"]
    tasks = list(per_task)
    header = ["policy", *(f"{t}" for t in tasks), "mean [95% CI]", "requirement"]
    rows = []
    for label in learned:
        cells = []
        for t in tasks:
            r = per_task[t]["vs_best_single"][label]
            cells.append(f"{_signed(r['diff'], r['diff_ci'])} {r['verdict']}")
        s = mean[label]
        rows.append([label, *cells, _signed(s["mean_diff"], s["mean_diff_ci"]),
                     "met" if s["met"] else "NOT met"])
    within = results["within"]
    lines = [
        f"{results['dataset']['name']}: leave-one-task-out; quality at best-single's cost "
        f"minus best-single's (chosen on the training tasks); 'within' = no more than "
        f"{within} below; requirement: within or above on every task, above on the mean: "
        + ("met by every learned policy" if results["all_met"] else "NOT met by all"),
        *_table(header, rows),
    ]
    if summary:
        return "\n".join(lines)
    boot = results["bootstrap"]
    out = [
        f"# Leave-one-task-out evaluation: {results['dataset']['name']}",
        "",
        f"Tasks: {', '.join(tasks)}. For each task, every policy is trained on the train "
        "split of the *other* tasks and tested on the task's test split; best-single is "
        "the best model on those training tasks. Intervals: paired bootstrap, "
        f"{boot} resamples of the left-out task's test queries (seed {results['seed']}), "
        "95% percentile; the mean's interval is that of the per-resample means. "
        "Definitions: eval/README.md.",
        "",
        "## Against best-single at its cost",
        "",
        *lines,
        "",
        "## Per task",
    ]
    for t in tasks:
        e = per_task[t]
        any_row = next(iter(e["vs_best_single"].values()), None)
        bs = ("" if any_row is None else
              f"{any_row['best_single_quality']:.4f} at ${per_1k(any_row['best_single_cost'])}/1k")
        out += ["", f"### {t} (left out; {e['n_test']} test queries, trained on "
                f"{', '.join(e['train_tasks'])}: {e['n_train']} queries)", "",
                f"Best single model on the training tasks: {e['best_single']} ({bs} here).", ""]
        out += _backoff_lines(e.get("backoff"))
        trows = []
        for label, p in sorted(e["policies"].items(), key=lambda kv: -kv[1]["aiq"]):
            v = e["vs_best_single"].get(label)
            trows.append([
                label, f"{p['aiq']:.3f}", f"{p['aiq_routerbench']:.3f}",
                f"{p['max_quality']:.3f} @ {per_1k(p['cost_at_max_quality'])}",
                "-" if v is None else f"{v['quality_at_best_single_cost']:.4f}",
                "-" if v is None else _signed(v["diff"], v["diff_ci"]),
            ])
        out += _table(["policy", "AIQ", "AIQ RB-style", "max quality @ $/1k",
                       "quality at best-single's cost", "diff [95% CI]"], trows)
    return "\n".join(out) + "\n"
