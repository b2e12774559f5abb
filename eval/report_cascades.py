"""report.md's section on answer-aware policies (cascades): their comparison with the best
prompt-only policy, the plans chosen on the train split per lam, and skipped policies."""

from __future__ import annotations

from typing import Any


def cascade_section(results: dict[str, Any]) -> list[str]:
    """Markdown lines ([] when no cascade was asked for)."""
    from eval.report import _signed_ci, _table, per_1k

    aware = {k: p for k, p in results["policies"].items() if p.get("answer_aware")}
    skipped = results.get("skipped") or {}
    if not aware and not skipped:
        return []
    lines = ["## Cascades (answer-aware)", "",
             "Cascades call cheap models first and escalate when their answers disagree; "
             "they are replayed over the recorded test responses (cost: every call made; "
             "quality: the returned answer's). Plans are chosen on the train split only; "
             "see eval/README.md.", ""]
    for label, why in skipped.items():
        lines += [f"* {label}: skipped: {why}."]
    if skipped:
        lines += [""]
    rows = []
    for label, p in aware.items():
        cmp = p.get("vs_best_prompt_only")
        if cmp is None:
            rows.append([label, "no prompt-only learned policy was evaluated", "-", "-"])
            continue
        rows.append([label, cmp["baseline"], _signed_ci(cmp["aiq_diff"], cmp["aiq_diff_ci"]),
                     cmp["verdict"]])
    if rows:
        lines += _table(["cascade", "best prompt-only policy (test AIQ)",
                         "AIQ difference [paired 95% CI]", "matched-cost verdict"], rows)
    for label, p in aware.items():
        cmp = p.get("vs_best_prompt_only")
        if cmp:
            lines += ["", f"* {label} vs {cmp['baseline']}: {cmp['summary']}."]
        info = p.get("cascade") or {}
        plans, curve = info.get("plans") or [], p["curve"]
        calls = info.get("mean_calls") or [None] * len(plans)
        seen: list[list[str]] = []
        for point, plan, n_calls in zip(curve, plans, calls, strict=False):
            text = "; ".join(f"{k}: {v}" for k, v in plan.items())
            if seen and seen[-1][0] == text:
                continue
            seen.append([text, f"{point['lam']:.3g}", f"{point['quality']:.3f}",
                         per_1k(point["cost"]),
                         "-" if n_calls is None else f"{n_calls:.2f}"])
        if seen:
            lines += ["", f"Plans of {label} along the lam sweep (first lam of each; test "
                      "quality, $/1k and calls per query):", ""]
            lines += _table(["plans per answer kind", "from lam", "quality", "$/1k",
                             "calls"], [[r[0], *r[1:]] for r in seen])
        lines += budget_lines(label, info.get("budget_sweep") or [])
    return [*lines, ""]


def budget_lines(label: str, sweep: list[dict[str, Any]]) -> list[str]:
    """The budget mode's table: per budget the train mix (expected train $/1k and
    quality, which kind mixes two plans and how) and the test replay's figures."""
    from eval.report import _table, per_1k

    if not sweep:
        return []
    rows = [[per_1k(r["budget"]), per_1k(r["train_cost"]), f"{r['train_quality']:.3f}",
             ", ".join(f"{k} {v:.0%}" for k, v in r["shares"].items()) or "-",
             per_1k(r["cost"]), f"{r['quality']:.3f}", f"{r['mean_calls']:.2f}"]
            for r in sweep]
    return ["", f"Budget mode of {label} (each budget spent on train: one kind mixes two "
            "adjacent train plans by a hash of the prompt; eval/README.md):", "",
            *_table(["budget $/1k", "train $/1k", "train quality",
                     "mixed kind (dearer plan's share)", "test $/1k", "test quality",
                     "calls"], rows)]
