"""``router logs export`` and ``router logs report``: the gateway's outcome records.

The store is the one a gateway config names (``--config``: ``state.dir`` / ``state.redis_url``)
or given directly (``--state-dir``, ``--redis-url``). With Redis, events still buffered on
disk (written while Redis was down) are included. One record per request, feedback merged in.

``export`` writes them as JSONL; ``report`` writes report.md, summary.json and PNG plots
(router/ops/report.py): traffic and spend over time by backend, model mix per policy and per
key, latency, rewards, fallbacks and errors, and the estimated savings against always calling
the priciest (or ``--reference``) backend.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from typing import Any


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="gateway config whose state: section names the store "
                                    "(and, for report, the backends' prices)")
    p.add_argument("--state-dir", help="embedded state dir (default .costroute)")
    p.add_argument("--redis-url", help="read the Redis outcome stream instead")
    p.add_argument("--stream", default=None, help="Redis stream name "
                                                  "(default costroute:outcomes)")
    p.add_argument("--since", help="only records from then on: a Unix time, an ISO date or "
                                   "time (2026-12-01, 2026-12-01T08:00), or an age (90m, 24h, 7d)")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="logs_command", metavar="ACTION")
    exp = sub.add_parser("export", help="write outcome records as JSONL",
                         description="write outcome records as JSONL (one line per request)")
    exp.add_argument("--out", required=True, help="output file (.jsonl), or - for stdout")
    _store_args(exp)
    rep = sub.add_parser("report", help="report.md and plots: traffic, spend, savings",
                         description="report.md, summary.json and PNG plots of what the router "
                                     "did and what it saved")
    rep.add_argument("--out", required=True, help="output directory")
    rep.add_argument("--reference", metavar="BACKEND",
                     help="counterfactual backend (default: the priciest priced one)")
    _store_args(rep)


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """A Unix time from a number, an ISO date/time (UTC unless it says) or an age."""
    from router.cli import CLIError

    if text is None:
        return None
    text = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (time.time() if now is None else now) - float(m.group(1)) * unit
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise CLIError(f"--since {text!r}: not a Unix time, an ISO date/time or an age "
                       "such as 24h") from None
    if dt.tzinfo is None:
        from datetime import UTC

        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def read_records(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str, Any]:
    """The records (since ``--since``), a description of the store, and the config if any."""
    from router.cli import CLIError
    from router.proxy.config import ConfigError, StateConfig, load_config
    from router.state.outcome_store import StoreUnavailable, open_outcome_store

    state, cfg = StateConfig(), None
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
        state = cfg.state
    state_dir = args.state_dir or state.dir
    redis_url = args.redis_url or state.redis_url
    stream = args.stream or state.outcome_stream
    if redis_url is None:
        from pathlib import Path

        from router.state.outcome_store import DB_NAME

        if not (Path(state_dir) / DB_NAME).is_file():
            raise CLIError(f"no outcome store in {state_dir!r} (no {DB_NAME}); give "
                           "--state-dir, --redis-url or --config")
    since = parse_since(args.since)
    store = open_outcome_store(state_dir, redis_url, stream)
    try:
        records = store.records()
    except StoreUnavailable as exc:
        raise CLIError(f"cannot read outcomes: {exc}") from None
    finally:
        store.close()
    if since is not None:
        records = [r for r in records if (r.get("ts") or 0) >= since]
    where = f"Redis stream {stream}" if redis_url else f"{state_dir}"
    return records, where, cfg


def configured_prices(cfg: Any) -> dict[str, tuple[float, float]]:
    """Per-token prices of the config's backends (config, litellm table or catalogue)."""
    if cfg is None:
        return {}
    from router.proxy.backends import resolve_price

    out = {}
    for entry in cfg.model_list:
        p_in, p_out, source = resolve_price(entry)
        if source not in ("unknown", "replay"):
            out[entry.model_name] = (p_in, p_out)
    return out


def run(args: argparse.Namespace) -> int:
    from router.cli import CLIError

    action = getattr(args, "logs_command", None)
    if action not in ("export", "report"):
        raise CLIError("give an action: router logs export --out FILE.jsonl, or "
                       "router logs report --out DIR")
    records, where, cfg = read_records(args)
    if action == "report":
        if not records:
            raise CLIError(f"no outcome records in {where}"
                           + (f" since {args.since}" if args.since else ""))
        from router.ops.report import write_report

        try:
            s = write_report(records, args.out, where, configured_prices(cfg), args.reference)
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {exc.strerror}") from None
        sv = s["savings"]
        print(f"wrote {args.out}/report.md, summary.json and plots: {s['requests']} requests, "
              f"spend ${s['spend_usd']:.4f}"
              + (f", saved ${sv['saved_usd']:.4f} against always {sv['reference']} (estimated)"
                 if sv.get("saved_usd") is not None else ""), file=sys.stderr)
        return 0
    lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    if args.out == "-":
        sys.stdout.write(lines)
    else:
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(lines)
        except OSError as exc:
            raise CLIError(f"cannot write {args.out}: {exc.strerror}") from None
        print(f"wrote {len(records)} records to {args.out}", file=sys.stderr)
    return 0
