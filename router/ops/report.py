"""``router logs report``: report.md, summary.json and PNG plots from outcome records."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PLOTS = ("requests_over_time.png", "spend_over_time.png", "model_mix.png",
         "latency_by_backend.png", "rewards_by_backend.png", "savings.png")


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:,.4f}"


def _num(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def write_plots(s: Mapping[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths: list[Path] = []
    tl = s["timeline"]

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    for key, name, ylabel in (("requests", "requests_over_time.png", "requests per bucket"),
                              ("spend_usd", "spend_over_time.png", "USD per bucket")):
        fig, ax = plt.subplots(figsize=(8, 3.6))
        series = tl[key]
        if series:
            width = tl["bucket_seconds"] or 1.0
            x = np.arange(len(next(iter(series.values())))) * width / 60.0
            ax.stackplot(x, *series.values(), labels=list(series), alpha=0.85)
            ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax.set_xlabel(f"minutes since {_when(tl['start'])}")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{'Requests' if key == 'requests' else 'Spend'} over time by backend")
        save(fig, name)

    mixes = [("policy", m) for m in s["mix_by_policy"].items()] + [
        ("key", m) for m in s["mix_by_key"].items()]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(1, len(mixes))))
    backends = sorted({b for _, (_, mix) in mixes for b in mix})
    left = np.zeros(len(mixes))
    for b in backends:
        share = np.array([mix.get(b, 0) / max(1, sum(mix.values())) for _, (_, mix) in mixes])
        ax.barh(range(len(mixes)), share, left=left, label=b)
        left += share
    ax.set_yticks(range(len(mixes)), [f"{kind}: {name}" for kind, (name, _) in mixes])
    ax.set_xlabel("share of answered requests")
    ax.set_title("Model mix per policy and per key")
    if backends:
        ax.legend(fontsize=7, loc="lower right")
    save(fig, "model_mix.png")

    names = list(s["backends"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for j, (q, lab) in enumerate((("latency_p50_ms", "p50"), ("latency_p90_ms", "p90"),
                                  ("latency_p99_ms", "p99"))):
        vals = [s["backends"][b][q] or 0.0 for b in names]
        ax.bar(np.arange(len(names)) + (j - 1) * 0.27, vals, width=0.27, label=lab)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title("Latency by backend (answered requests)")
    ax.legend(fontsize=7)
    save(fig, "latency_by_backend.png")

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for j, (q, lab) in enumerate((("feedback_mean", "feedback (API)"),
                                  ("auto_reward_mean", "automatic (cascade agreement)"))):
        vals = [s["backends"][b][q] if s["backends"][b][q] is not None else np.nan
                for b in names]
        ax.bar(np.arange(len(names)) + (j - 0.5) * 0.4, vals, width=0.4, label=lab)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean reward")
    ax.set_title("Rewards by backend")
    ax.legend(fontsize=7)
    save(fig, "rewards_by_backend.png")

    sv = s["savings"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if sv.get("counterfactual_usd") is not None:
        ax.bar(["routed (measured)", f"always {sv['reference']}\n(estimated)"],
               [sv["actual_usd"], sv["counterfactual_usd"]], color=["tab:green", "tab:gray"])
        ax.set_title(f"Spend: saved {_usd(sv['saved_usd'])} "
                     f"({100 * (sv['saved_share'] or 0):.1f}%)")
    ax.set_ylabel("USD")
    save(fig, "savings.png")
    return paths


def markdown(s: Mapping[str, Any], source: str) -> str:
    sv = s["savings"]
    w = s["window"]
    lines = [
        "# costroute: what the router did", "",
        f"Outcome records from {source}, {_when(w['from_ts'])} to {_when(w['to_ts'])}.", "",
        "**Measured** (from the records): requests, answers, errors, fallbacks, spend (each "
        "answered call's reported cost), tokens, latency and feedback. **Estimated**: the "
        "counterfactual spend and the policy's quality estimates (see *Savings*).", "",
        "## Traffic", "",
        f"- requests: {s['requests']}, answered: {s['answered']}, errors: "
        + (", ".join(f"{k} {v}" for k, v in s["errors"].items()) or "none"),
        f"- spend: {_usd(s['spend_usd'])}",
        f"- requests that fell back to another backend: {s['requests_with_fallback']}"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in s["fallbacks"].items()) + ")"
           if s["fallbacks"] else ""), "",
        "![requests](requests_over_time.png)", "", "![spend](spend_over_time.png)", "",
        "## By backend", "",
        "| backend | answered | spend | prompt / completion tokens | p50 / p90 / p99 ms | "
        "feedback (n) | automatic reward (n) |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, d in s["backends"].items():
        lines.append(
            f"| {b} | {d['requests']} | {_usd(d['spend_usd'])} | {d['prompt_tokens']} / "
            f"{d['completion_tokens']} | {_num(d['latency_p50_ms'], 1)} / "
            f"{_num(d['latency_p90_ms'], 1)} / {_num(d['latency_p99_ms'], 1)} | "
            f"{_num(d['feedback_mean'])} ({d['feedback_n']}) | "
            f"{_num(d['auto_reward_mean'])} ({d['auto_reward_n']}) |")
    lines += ["", "![latency](latency_by_backend.png)", "", "![rewards](rewards_by_backend.png)",
              "", "## Model mix", "", "| policy or key | answered per backend |", "|---|---|"]
    for kind, mixes in (("policy", s["mix_by_policy"]), ("key", s["mix_by_key"])):
        for name, mix in mixes.items():
            total = max(1, sum(mix.values()))
            lines.append(f"| {kind}: {name} | " + ", ".join(
                f"{b} {n} ({100 * n / total:.0f}%)" for b, n in sorted(mix.items())) + " |")
    lines += ["", "![mix](model_mix.png)", "", "## Savings (estimated)", ""]
    if sv.get("counterfactual_usd") is None:
        lines.append(f"Not computed: {sv.get('note')}.")
    else:
        lines += [
            f"Counterfactual: every answered request sent to **{sv['reference']}**, priced at its "
            f"per-token prices ({sv.get('reference_price_source')}) from the same token counts "
            f"({sv['priced_requests']} requests; a cascade's request counts one mean call).", "",
            "| | spend | estimated quality (policy, n) | mean feedback (n) |",
            "|---|---|---|---|",
            f"| routed (measured spend) | {_usd(sv['actual_usd'])} | "
            f"{_num(sv['estimated_quality_served'])} ({sv['estimated_quality_n']}) | "
            f"{_num(sv['feedback_mean_served'])} ({sv['feedback_n_served']}) |",
            f"| always {sv['reference']} (estimated) | {_usd(sv['counterfactual_usd'])} | "
            f"{_num(sv['estimated_quality_reference'])} ({sv['estimated_quality_n']}) | "
            f"{_num(sv['feedback_mean_reference'])} ({sv['feedback_n_reference']}, where it "
            "served) |", "",
            f"**Saved: {_usd(sv['saved_usd'])} ({100 * (sv['saved_share'] or 0):.1f}% of the "
            "counterfactual).** The quality columns are the routing policy's own estimates "
            "recorded with each decision (both backends' estimates for the same requests) and "
            "feedback where clients sent it; neither is a measurement of the counterfactual.",
            "", "![savings](savings.png)"]
    lines += ["", "## Prices used", "", "| backend | input $/1M | output $/1M | source |",
              "|---|---|---|---|"]
    for b, p in s["prices"].items():
        lines.append(f"| {b} | {p['input_per_1m']:.4g} | {p['output_per_1m']:.4g} | "
                     f"{p['source']} |")
    return "\n".join(lines) + "\n"


def write_report(records: list[Mapping[str, Any]], out: str | Path, source: str,
                 configured: Mapping[str, tuple[float, float]] | None = None,
                 reference: str | None = None) -> dict[str, Any]:
    """Write report.md, summary.json and the plots; returns the summary."""
    from router.ops.summary import price_book, summarize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(list(records), price_book(list(records), configured), reference)
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    write_plots(s, out)
    (out / "report.md").write_text(markdown(s, source))
    return s
