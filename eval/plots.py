"""pareto.png and per_task.png from an evaluation's results dict (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402


def short_name(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _label_points(ax: Axes, points: list[tuple[str, float, float]], fontsize: float) -> None:
    """Single-model labels, nudged apart vertically when they would collide."""
    placed: list[tuple[float, float]] = []
    ylo, yhi = ax.get_ylim()
    span = yhi - ylo
    log = ax.get_xscale() == "log"

    def pos(v: float) -> float:
        return math.log10(v) if log else v

    xlo, xhi = (pos(v) for v in ax.get_xlim())
    near = 0.35 if log else 0.06 * (xhi - xlo)
    for name, x, y in sorted(points, key=lambda p: p[2]):
        ty = y
        for px, py in placed:
            if abs(pos(px) - pos(x)) < near and abs(py - ty) < 0.035 * span:
                ty = py + 0.035 * span
        placed.append((x, ty))
        left = (pos(x) - xlo) / ((xhi - xlo) or 1.0) > 0.8  # near the right edge
        style = {"fontsize": fontsize, "color": "0.25", "va": "center",
                 "ha": "right" if left else "left"}
        if ty == y:
            ax.annotate(short_name(name), (x, y), xytext=(-5 if left else 5, 0),
                        textcoords="offset points", **style)
        else:
            shift = (xhi - xlo) * 0.01
            tx = (x / 1.1 if left else x * 1.1) if log else (x - shift if left else x + shift)
            ax.annotate(short_name(name), (x, y), xytext=(tx, ty), **style,
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})


def _draw(ax: Axes, policies: dict[str, Any], ref: dict[str, Any], task: str | None,
          colors: dict[str, Any], fontsize: float, raw: bool) -> None:
    for label, p in policies.items():
        src = p if task is None else p["per_task"][task]
        hx = [h["cost"] * 1000 for h in src["hull"]]
        hy = [h["quality"] for h in src["hull"]]
        color = colors[label]
        aware = bool(p.get("answer_aware"))  # cascades: dash-dot, thicker
        if len(hx) == 1:
            ax.plot(hx, hy, "s", color=color, ms=8, mfc="none", mew=2, zorder=7, label=label)
        else:
            ax.plot(hx, hy, "-." if aware else "-", color=color, lw=2.4 if aware else 1.8,
                    label=f"{label} (answer-aware)" if aware else label)
        if raw and task is None:
            ax.plot([c["cost"] * 1000 for c in p["curve"]], [c["quality"] for c in p["curve"]],
                    ".", color=color, ms=3, alpha=0.45)
    zr = ref["zero_router"]["hull"]
    ax.plot([h["cost"] * 1000 for h in zr], [h["quality"] for h in zr], "--", color="0.6",
            lw=1, label="single-model hull")
    pts = [(m, v["cost"] * 1000, v["quality"]) for m, v in ref["models"].items()]
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], color="0.3", s=22, zorder=5,
               label="single models")
    o = ref["oracle"]
    ax.scatter([o["cost"] * 1000], [o["quality"]], marker="*", color="gold", edgecolor="k",
               s=160, zorder=6, label="oracle (reference)")
    xs = [p[1] for p in pts] + [o["cost"] * 1000]
    if min(xs) > 0:  # a log axis, unless some model is free
        ax.set_xscale("log")
        _expand_x(ax, xs)
    _label_points(ax, pts, fontsize)
    ax.annotate("oracle", (o["cost"] * 1000, o["quality"]), xytext=(6, 4),
                textcoords="offset points", fontsize=fontsize)
    ax.grid(True, which="major", alpha=0.3)
    scale = ", log scale" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(f"cost ($ per 1k queries{scale})")
    ax.set_ylabel("quality (mean per query)")


def _expand_x(ax: Axes, xs: list[float]) -> None:
    positive = [x for x in xs if x > 0]
    if positive:
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, min(positive) / 1.5), max(hi, max(positive) * 2.2))


def plot_pareto(results: dict[str, Any], path: str | Path) -> Path:
    """All policies' hulls (lines) and sweep points (dots), single models and oracle."""
    policies = results["policies"]
    colors = dict(zip(policies, _colors(len(policies)), strict=True))
    fig, ax = plt.subplots(figsize=(11.5, 6.5))
    _draw(ax, policies, results["reference"], None, colors, 8, raw=True)
    d = results["dataset"]
    ax.set_title(f"{d['name']}: cost vs quality on {d['n_test']} test queries "
                 "(lines: hulls, dots: lam sweep)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_per_task(results: dict[str, Any], path: str | Path) -> Path:
    """One panel per task: hulls on that task's queries, its single models and oracle."""
    policies = results["policies"]
    tasks = list(results["reference"]["per_task"])
    colors = dict(zip(policies, _colors(len(policies)), strict=True))
    ncols = min(2, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 5.2 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        _draw(ax, policies, results["reference"]["per_task"][task], task, colors, 7, raw=False)
        n = results["dataset"]["test_tasks"].get(task, "?")
        ax.set_title(f"{task} ({n} test queries)")
    spare = list(axes.flat)[len(tasks):]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if spare:  # the legend fills the first empty panel
        spare[0].legend(handles, labels, loc="center", fontsize=10, frameon=False)
        fig.tight_layout()
    else:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
        rows = math.ceil(len(labels) / 6)
        fig.tight_layout(rect=(0, min(0.2, (0.03 + 0.025 * rows) / nrows), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
