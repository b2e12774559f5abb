"""``router logs export``: write the gateway's outcome records as JSONL.

The store is the one a gateway config names (``--config``: ``state.dir`` / ``state.redis_url``)
or given directly (``--state-dir``, ``--redis-url``). With Redis, events still buffered on
disk (written while Redis was down) are included. One line per request, feedback merged in.
"""

from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="logs_command", metavar="ACTION")
    exp = sub.add_parser("export", help="write outcome records as JSONL",
                         description="write outcome records as JSONL (one line per request)")
    exp.add_argument("--out", required=True, help="output file (.jsonl), or - for stdout")
    exp.add_argument("--config", help="gateway config whose state: section names the store")
    exp.add_argument("--state-dir", help="embedded state dir (default .costroute)")
    exp.add_argument("--redis-url", help="read the Redis outcome stream instead")
    exp.add_argument("--stream", default=None, help="Redis stream name "
                                                    "(default costroute:outcomes)")
    exp.add_argument("--since", type=float, help="only records with ts >= this Unix time")


def run(args: argparse.Namespace) -> int:
    from router.cli import CLIError

    if getattr(args, "logs_command", None) != "export":
        raise CLIError("give an action: router logs export --out FILE.jsonl")
    from router.proxy.config import ConfigError, StateConfig, load_config
    from router.state.outcome_store import StoreUnavailable, open_outcome_store

    state = StateConfig()
    if args.config:
        try:
            state = load_config(args.config).state
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    state_dir = args.state_dir or state.dir
    redis_url = args.redis_url or state.redis_url
    stream = args.stream or state.outcome_stream
    if redis_url is None:
        from pathlib import Path

        from router.state.outcome_store import DB_NAME

        if not (Path(state_dir) / DB_NAME).is_file():
            raise CLIError(f"no outcome store in {state_dir!r} (no {DB_NAME}); give "
                           "--state-dir, --redis-url or --config")
    store = open_outcome_store(state_dir, redis_url, stream)
    try:
        records = store.records()
    except StoreUnavailable as exc:
        raise CLIError(f"cannot read outcomes: {exc}") from None
    finally:
        store.close()
    if args.since is not None:
        records = [r for r in records if (r.get("ts") or 0) >= args.since]
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
