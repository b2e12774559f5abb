"""What the router did and what it saved, from outcome records (the report and the live page).

Measured (read from the records): requests, answers, errors and fallbacks; spend (the cost
each answered call reported), tokens and latency per backend; feedback rewards (``/v1/feedback``)
and automatic rewards (a cascade's agreement label of each backend it called) per backend.

Estimated (computed, labelled as such): the *counterfactual spend* of sending every answered
request to one reference backend (the priciest configured one, or a named one), priced at
that backend's per-token prices from the same prompt and completion token counts; and the
estimated quality of what was served against the reference, from the routing policy's own
per-backend estimates recorded with each decision (``candidates``), plus the mean feedback
reward of each where feedback exists. A counterfactual is not a measurement: the reference
might have answered with other token counts.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: (USD per prompt token, USD per completion token)
Price = tuple[float, float]


@dataclass(frozen=True)
class PriceBook:
    """Per-token prices per backend, and where each came from (config, fitted)."""

    prices: dict[str, Price]
    source: dict[str, str]

    def cost(self, backend: str, prompt_tokens: float, completion_tokens: float) -> float:
        p_in, p_out = self.prices[backend]
        return p_in * prompt_tokens + p_out * completion_tokens

    def priciest(self) -> str | None:
        """The backend with the highest price for a typical call (500 in, 200 out tokens)."""
        if not self.prices:
            return None
        return max(self.prices, key=lambda b: (self.cost(b, 500, 200), b))


def fit_prices(records: Iterable[Mapping[str, Any]]) -> dict[str, Price]:
    """Per-token prices of each backend fitted to its answered calls' (tokens, cost).

    A least-squares fit of ``cost = a * prompt + b * completion`` (non-negative), used for
    backends the config does not price (or when no config is given). With one token mix
    only, the price per token is the mean cost per token for both."""
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in records:
        if r.get("status") != "ok" or not r.get("model"):
            continue
        p, c, cost = r.get("prompt_tokens"), r.get("completion_tokens"), r.get("cost")
        if p is None or c is None or cost is None:
            continue
        rows[r["model"]].append((float(p), float(c), float(cost)))
    out: dict[str, Price] = {}
    for backend, data in rows.items():
        a = np.asarray(data)
        tokens = a[:, 0] + a[:, 1]
        if np.linalg.matrix_rank(a[:, :2]) < 2:
            per = float(a[:, 2].sum() / max(tokens.sum(), 1.0))
            out[backend] = (per, per)
            continue
        coef, *_ = np.linalg.lstsq(a[:, :2], a[:, 2], rcond=None)
        out[backend] = (max(float(coef[0]), 0.0), max(float(coef[1]), 0.0))
    return out


def table_price(backend: str) -> Price | None:
    """A backend name's per-token price in the catalogue (data/models.yaml) or litellm's table."""
    from router.proxy.backends import catalogue_price, litellm_price

    return catalogue_price(backend) or litellm_price(backend)


def price_book(records: list[Mapping[str, Any]], configured: Mapping[str, Price] | None = None,
               lookup: Any = table_price) -> PriceBook:
    """Configured prices first, then the price tables by backend name, then a fit."""
    prices = dict(configured or {})
    source = {b: "config" for b in prices}
    fitted = fit_prices(records)
    for b, p in fitted.items():
        if b in prices:
            continue
        found = lookup(b) if lookup is not None else None
        if found is not None:
            prices[b], source[b] = (float(found[0]), float(found[1])), "price table"
        else:
            prices[b], source[b] = p, "fitted to the records"
    return PriceBook(prices, source)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _fallbacks(rec: Mapping[str, Any]) -> list[tuple[str, str]]:
    if rec.get("kind") == "cascade":  # a cascade's calls are stages, not fallbacks
        return []
    tried = [a.get("model") for a in rec.get("attempts") or []
             if a.get("error") not in ("budget",)]
    return list(zip(tried, tried[1:], strict=False))


def summarize(records: list[Mapping[str, Any]], prices: PriceBook | None = None,
              reference: str | None = None, buckets: int = 48) -> dict[str, Any]:
    """Every figure of the report and the live page, as JSON-able data."""
    prices = prices or price_book(records)
    ok = [r for r in records if r.get("status") == "ok"]
    errors = Counter(str(r.get("error_code") or r.get("http_status") or "error")
                     for r in records if r.get("status") != "ok")
    spend = float(sum(float(r.get("cost") or 0.0) for r in ok))
    per_backend: dict[str, dict[str, Any]] = {}
    lat: dict[str, list[float]] = defaultdict(list)
    fb: dict[str, list[float]] = defaultdict(list)
    auto: dict[str, list[float]] = defaultdict(list)
    for r in ok:
        b = r["model"]
        d = per_backend.setdefault(b, {"requests": 0, "spend_usd": 0.0, "prompt_tokens": 0,
                                       "completion_tokens": 0})
        d["requests"] += 1
        for backend, usd in _spend_by_backend(r).items():
            per_backend.setdefault(backend, {"requests": 0, "spend_usd": 0.0, "prompt_tokens": 0,
                                             "completion_tokens": 0})["spend_usd"] += usd
        d["prompt_tokens"] += int(r.get("prompt_tokens") or 0)
        d["completion_tokens"] += int(r.get("completion_tokens") or 0)
        if r.get("latency_ms") is not None:
            lat[b].append(float(r["latency_ms"]))
        if isinstance(r.get("feedback"), Mapping) and r["feedback"].get("reward") is not None:
            (auto if r["feedback"].get("source") == "auto" else fb)[b].append(
                float(r["feedback"]["reward"]))
        cascade = r.get("cascade")
        if isinstance(cascade, Mapping):  # agreement labels of every backend a cascade called
            for backend, label in (cascade.get("labels") or {}).items():
                if label is not None:
                    auto[str(backend)].append(float(label))
    for b, d in per_backend.items():
        d.update(latency_p50_ms=_pct(lat[b], 50), latency_p90_ms=_pct(lat[b], 90),
                 latency_p99_ms=_pct(lat[b], 99), feedback_n=len(fb[b]),
                 feedback_mean=_mean(fb[b]), auto_reward_n=len(auto[b]),
                 auto_reward_mean=_mean(auto[b]))
    mix_policy: dict[str, Counter] = defaultdict(Counter)
    mix_key: dict[str, Counter] = defaultdict(Counter)
    for r in ok:
        mix_policy[str(r.get("policy") or f"({r.get('kind') or 'direct'})")][r["model"]] += 1
        mix_key[str(r.get("key_name") or r.get("key_id") or "anonymous")][r["model"]] += 1
    fallbacks = Counter(f"{a} -> {b}" for r in records for a, b in _fallbacks(r))
    return {
        "window": _window(records),
        "requests": len(records), "answered": len(ok), "errors": dict(errors),
        "spend_usd": spend,
        "backends": dict(sorted(per_backend.items())),
        "mix_by_policy": {k: dict(v) for k, v in sorted(mix_policy.items())},
        "mix_by_key": {k: dict(v) for k, v in sorted(mix_key.items())},
        "fallbacks": dict(fallbacks), "requests_with_fallback":
            sum(1 for r in records if _fallbacks(r)),
        "timeline": timeline(records, buckets),
        "savings": savings(ok, prices, reference),
        "prices": {b: {"input_per_1m": p[0] * 1e6, "output_per_1m": p[1] * 1e6,
                       "source": prices.source.get(b)} for b, p in sorted(prices.prices.items())},
    }


def _spend_by_backend(rec: Mapping[str, Any]) -> dict[str, float]:
    """An answered request's cost per backend (a cascade's calls each on their own)."""
    if rec.get("kind") == "cascade":
        out: dict[str, float] = defaultdict(float)
        for a in rec.get("attempts") or []:
            if a.get("cost"):
                out[str(a.get("model"))] += float(a["cost"])
        return dict(out)
    return {rec["model"]: float(rec.get("cost") or 0.0)}


def _calls(rec: Mapping[str, Any]) -> int:
    if rec.get("kind") != "cascade":
        return 1
    return max(1, sum(1 for a in rec.get("attempts") or [] if not a.get("error")))


def _window(records: list[Mapping[str, Any]]) -> dict[str, float | None]:
    ts = [float(r["ts"]) for r in records if r.get("ts") is not None]
    return {"from_ts": min(ts) if ts else None, "to_ts": max(ts) if ts else None}


def timeline(records: list[Mapping[str, Any]], buckets: int = 48) -> dict[str, Any]:
    """Requests and spend per time bucket and backend (answered calls only for spend)."""
    ts = [float(r["ts"]) for r in records if r.get("ts") is not None]
    if not ts:
        return {"start": None, "bucket_seconds": None, "requests": {}, "spend_usd": {}}
    start, end = min(ts), max(ts)
    width = max((end - start) / max(buckets, 1), 1.0)
    n = int(math.floor((end - start) / width)) + 1
    req: dict[str, list[int]] = defaultdict(lambda: [0] * n)
    usd: dict[str, list[float]] = defaultdict(lambda: [0.0] * n)
    for r in records:
        if r.get("ts") is None:
            continue
        i = min(n - 1, int((float(r["ts"]) - start) // width))
        req[r.get("model") or "(none)"][i] += 1
        if r.get("status") == "ok":
            for b, cost in _spend_by_backend(r).items():
                usd[b][i] += cost
    return {"start": start, "bucket_seconds": width, "requests": dict(req),
            "spend_usd": dict(usd)}


def savings(answered: list[Mapping[str, Any]], prices: PriceBook,
            reference: str | None = None) -> dict[str, Any]:
    """Spend against always calling ``reference`` (default: the priciest priced backend)."""
    ref = reference or prices.priciest()
    out: dict[str, Any] = {"reference": ref, "actual_usd": None, "counterfactual_usd": None,
                           "saved_usd": None, "saved_share": None, "priced_requests": 0}
    if ref is None or ref not in prices.prices:
        out["note"] = ("no price for the reference backend" if ref else "no priced backend")
        return out
    actual = cf = 0.0
    n = 0
    est_served: list[float] = []
    est_ref: list[float] = []
    for r in answered:
        p, c = r.get("prompt_tokens"), r.get("completion_tokens")
        if p is None or c is None:
            continue
        n += 1
        actual += float(r.get("cost") or 0.0)
        k = _calls(r)  # a cascade's tokens add up its calls: price one mean call
        cf += prices.cost(ref, float(p) / k, float(c) / k)
        cands = {x.get("model"): x for x in r.get("candidates") or [] if isinstance(x, Mapping)}
        mine, theirs = cands.get(r["model"]), cands.get(ref)
        if mine and theirs and mine.get("quality") is not None and theirs.get(
                "quality") is not None:
            est_served.append(float(mine["quality"]))
            est_ref.append(float(theirs["quality"]))
    fb_all = [float(r["feedback"]["reward"]) for r in answered
              if isinstance(r.get("feedback"), Mapping) and r["feedback"].get("reward") is not None]
    fb_ref = [float(r["feedback"]["reward"]) for r in answered if r.get("model") == ref
              and isinstance(r.get("feedback"), Mapping) and r["feedback"].get("reward") is not None]
    out.update(actual_usd=actual, counterfactual_usd=cf, saved_usd=cf - actual,
               saved_share=(cf - actual) / cf if cf > 0 else None, priced_requests=n,
               reference_price_source=prices.source.get(ref),
               estimated_quality_served=_mean(est_served),
               estimated_quality_reference=_mean(est_ref), estimated_quality_n=len(est_served),
               feedback_mean_served=_mean(fb_all), feedback_n_served=len(fb_all),
               feedback_mean_reference=_mean(fb_ref), feedback_n_reference=len(fb_ref))
    return out
