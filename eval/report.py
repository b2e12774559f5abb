"""report.md from an evaluation's results dict (the content of results.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.report_cascades import cascade_section


def per_1k(cost: float | None) -> str:
    """USD per query -> '$ per 1k queries' text with 3 significant digits."""
    if cost is None:
        return "never"
    v = cost * 1000.0
    return f"{v:.3g}" if v >= 0.001 else f"{v:.2e}"


def _q(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _pct(value: float | None) -> str:
    return "never" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _ranked(policies: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(policies.items(), key=lambda kv: (-kv[1]["aiq"], kv[0]))


def main_table(results: dict[str, Any]) -> list[str]:
    """The table a person reads first: one row per policy, best AIQ first."""
    ref = results["reference"]
    best = results["best_single"]
    best_q = ref["models"][best]["quality"]
    header = [
        "policy", "AIQ [95% CI]", "max quality @ $/1k",
        f"$/1k to match best single ({best}, {best_q:.3f})", "APGR [95% CI]",
        "CPT(50%)", "CPT(80%)", "AIQ RouterBench-style [95% CI]",
    ]
    rows = []
    for label, p in _ranked(results["policies"]):
        rows.append([
            label,
            f"{p['aiq']:.3f}{_ci(p.get('aiq_ci'))}",
            f"{p['max_quality']:.3f} @ {per_1k(p['cost_at_max_quality'])}",
            per_1k(p["cost_at_best_single_quality"]),
            "n/a" if p["apgr"] is None else f"{p['apgr']:.3f}{_ci(p.get('apgr_ci'))}",
            "n/a" if p["apgr"] is None else _pct(p["cpt50"]),
            "n/a" if p["apgr"] is None else _pct(p["cpt80"]),
            _aiq_rb(p),
        ])
    return _table(header, rows)


def _aiq_rb(p: dict[str, Any]) -> str:
    value = p.get("aiq_routerbench")
    return "-" if value is None else f"{value:.3f}{_ci(p.get('aiq_routerbench_ci'))}"


def summary_lines(results: dict[str, Any]) -> list[str]:
    """What `router eval` prints: the main table and the verdicts against task-static."""
    d = results["dataset"]
    req = results.get("vs_task_static") or {}
    return [
        f"{d['name']}: {d['n_test']} test queries, costs in $ per 1k queries",
        *main_table(results),
        *(f"vs {req['baseline']}: {label}: {line}" for label, line in
          (req.get("summaries") or {}).items()),
    ]


def _signed_ci(value: float, ci: list[float] | None) -> str:
    return f"{value:+.3f}" + ("" if not ci else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]")


def baseline_section(results: dict[str, Any]) -> list[str]:
    """Every learned policy against task-static at matched costs (eval/compare.py)."""
    req = results.get("vs_task_static") or {}
    base, learned = req.get("baseline"), req.get("learned") or []
    if base is None or not learned:
        why = "task-static was not evaluated" if base is None else "no learned policy"
        return ["## Against task-static", "", f"Not compared: {why}.", ""]
    beat = [label for label in learned if req["verdicts"].get(label) == "beats"]
    met = "met" if req["all_beat"] else "NOT met"
    lines = [
        "## Against task-static (requirement: every learned policy beats it across the "
        "cost range)",
        "",
        f"Requirement {met}: {len(beat)} of {len(learned)} learned policies beat {base} "
        "(better at some compared cost, worse at none)"
        + (f": {', '.join(beat)}" if beat else "") + "; "
        + ("none is significantly worse anywhere" if req["all_never_significantly_worse"]
           else "some are significantly worse somewhere")
        + ". Compared: the quality of the two hulls at matched "
        "costs (the baseline's hull vertices plus 20 costs spread over the common range), "
        "with paired bootstrap 95% intervals per cost (no multiplicity correction); "
        "definition: eval/README.md.",
        "",
    ]
    rows = []
    for label in learned:
        c = results["policies"][label]["vs_task_static"]
        w = c["worst"]
        rows.append([
            label, f"{c['better']} / {c['tied']} / {c['worse']} of {c['n_points']}",
            str(c["significantly_better"]), str(c["significantly_worse"]),
            _signed_ci(c["mean_diff"], c["mean_diff_ci"]),
            f"{_signed_ci(w['diff'], w['ci'])} @ {per_1k(w['cost'])}", c["verdict"],
        ])
    lines += _table(["policy", "better / tied / worse", "signif. better", "signif. worse",
                     "mean diff [CI]", "worst diff [CI] @ $/1k", "verdict"], rows)
    lines += ["", *(f"* {label}: {req['summaries'][label]}." for label in learned), ""]
    return lines


def reference_table(ref: dict[str, Any]) -> list[str]:
    rows = [
        [m, f"{v['quality']:.3f}", per_1k(v["cost"])]
        for m, v in sorted(ref["models"].items(), key=lambda kv: kv[1]["cost"])
    ]
    rows.append(["**oracle**", f"{ref['oracle']['quality']:.3f}", per_1k(ref["oracle"]["cost"])])
    return _table(["model", "quality", "$/1k"], rows)


def budget_table(results: dict[str, Any]) -> list[str]:
    policies = _ranked(results["policies"])
    if not policies or not policies[0][1]["quality_at_cost"]:
        return []
    budgets = [item["cost"] for item in policies[0][1]["quality_at_cost"]]
    rows = []
    for label, p in policies:
        cells = [
            "-" if it["quality"] is None else f"{it['quality']:.3f}{_ci(it.get('ci'))}"
            for it in p["quality_at_cost"]
        ]
        rows.append([label, *cells])
    return _table(["policy", *(f"${per_1k(b)}/1k" for b in budgets)], rows)


def task_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    tasks = results["reference"]["per_task"]
    for task, ref in tasks.items():
        best = ref["best_single"]
        best_q = ref["models"][best]["quality"]
        n = results["dataset"]["test_tasks"].get(task, "?")
        lines += [
            "", f"### {task} ({n} test queries)", "",
            f"Best single model: {best} ({best_q:.3f} at ${per_1k(ref['models'][best]['cost'])}"
            f"/1k); oracle {ref['oracle']['quality']:.3f} at ${per_1k(ref['oracle']['cost'])}/1k;"
            f" single-model hull AIQ {ref['zero_router']['aiq']:.3f}.", "",
        ]
        rows = []
        ranked = sorted(
            results["policies"].items(), key=lambda kv: (-kv[1]["per_task"][task]["aiq"], kv[0])
        )
        for label, p in ranked:
            t = p["per_task"][task]
            rows.append([
                label, f"{t['aiq']:.3f}", _q(t.get("aiq_routerbench")),
                f"{t['max_quality']:.3f} @ {per_1k(t['cost_at_max_quality'])}",
                per_1k(t["cost_at_best_single_quality"]),
                "n/a" if t["apgr"] is None else f"{t['apgr']:.3f}",
            ])
        lines += _table(
            ["policy", "AIQ", "AIQ RB-style", "max quality @ $/1k", f"$/1k to match {best}",
             "APGR"], rows
        )
    return lines


def _flat_cost_note(ref: dict[str, Any]) -> list[str]:
    lo, hi = ref["cost_range"]
    if hi - lo > 1e-12 * max(1.0, hi):
        return []
    return [
        f"All single models have the same mean cost on this test split (${per_1k(hi)}/1k), so "
        "this is a quality-only comparison: AIQ is the quality at that cost and APGR/CPT are "
        "undefined.",
        "",
    ]


def render(results: dict[str, Any]) -> str:
    d = results["dataset"]
    ref = results["reference"]
    tasks = ", ".join(f"{t} {n}" for t, n in d["test_tasks"].items())
    boot = results["bootstrap"]
    enc = results.get("encoder") or {}
    lines = [
        f"# Routing evaluation: {d['name']}",
        "",
        f"Test split: {d['n_test']} queries ({tasks}); train split: {d['n_train']} queries; "
        f"{len(d['models'])} models; {len(results['lams'])} lam values per policy. "
        f"Costs are $ per 1k queries; quality is the mean per query (missing counts 0).",
        "",
        f"Intervals: {boot} bootstrap resamples of the test queries (seed {results['seed']}), "
        f"95% percentile intervals. APGR/CPT: weak {results['weak']}, strong "
        f"{results['strong']}" + (f" ({ref['apgr_undefined']})" if ref["apgr_undefined"] else "")
        + f". Encoder: {enc.get('model_id') or 'none (no policy reads embeddings)'}.",
        "",
        *_flat_cost_note(ref),
        "## Policies",
        "",
        *main_table(results),
        "",
        f"AIQ: area under the non-decreasing convex hull of the (cost, quality) curve over "
        f"[${per_1k(ref['cost_range'][0])}, ${per_1k(ref['cost_range'][1])}]/1k (cheapest to "
        f"dearest single model) divided by that range; the single-model hull ('zero router') "
        f"scores {ref['zero_router']['aiq']:.3f}. AIQ RouterBench-style: as RouterBench's own "
        f"evaluation code computes it, the hull integrated from its cheapest point to the "
        f"largest cost of all curves (${per_1k(ref.get('aiq_routerbench_cost_top'))}/1k) and "
        f"divided by that cost, so the stretch from 0 to the hull's cheapest point counts as 0 "
        f"(compare this one with published RouterBench figures; zero router "
        f"{_q(ref['zero_router'].get('aiq_routerbench'))}). CPT: cost-equivalent share of strong-model "
        f"calls needed to recover 50%/80% of the weak-strong gap. Definitions: eval/README.md.",
        "",
        *baseline_section(results),
        *cascade_section(results),
        "## References (test split)",
        "",
        *reference_table(ref),
    ]
    budget = budget_table(results)
    if budget:
        lines += ["", "## Quality at a fixed cost ($ per 1k queries, hull)", "", *budget]
    lines += ["", "## Per task", *task_tables(results), ""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render(results))
    return path
