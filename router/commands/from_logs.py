"""``router data from-logs``: gateway outcome records with feedback -> a routing dataset.

    router data from-logs --config config.yaml --prompts prompts.jsonl --out logs.jsonl
    router data from-logs --logs outcomes.jsonl --out logs.jsonl   # a `router logs export`

Reads the outcome store a config names (``state.dir`` / ``state.redis_url``, or
``--state-dir`` / ``--redis-url``), or an exported JSONL (``--logs``), keeps the answered
requests that got a reward (``--sources``: api, auto, replay; default all) and writes one
row per distinct prompt with the observed model's reward and cost (other models missing),
the generic JSONL of data/README.md, ready for ``router train --test-fraction 0``
(:mod:`router.from_logs`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DATASET.jsonl", help="dataset to write")
    parser.add_argument("--logs", metavar="FILE", help="records from `router logs export` "
                                                       "instead of the store")
    parser.add_argument("--config", help="gateway config whose state: section names the store")
    parser.add_argument("--state-dir", help="embedded state dir (default .costroute)")
    parser.add_argument("--redis-url", help="read the Redis outcome stream")
    parser.add_argument("--stream", help="Redis stream name (default costroute:outcomes)")
    parser.add_argument("--prompts", metavar="FILE",
                        help="prompt file (router/prompt_file.py formats) giving the text (and "
                             "task) of logged prompt hashes, when the log holds no text")
    parser.add_argument("--sources", default=None, metavar="A,B",
                        help="feedback sources to use: api, auto, replay (default all)")
    parser.add_argument("--task", default="logs",
                        help="task of prompts without one (default 'logs')")
    parser.add_argument("--since", type=float, help="only requests with ts >= this Unix time")
    parser.add_argument("--cluster-tasks", type=int, metavar="K",
                        help="set each prompt's task to one of K k-means clusters of its "
                             "embedding (for logs without task labels: the policies' task "
                             "priors then have something to anchor on)")
    parser.add_argument("--encoder", metavar="MODEL",
                        help="encoder for --cluster-tasks (default all-MiniLM-L6-v2; "
                             "hashing[:DIM] for the model-free one)")


def _events(args: argparse.Namespace, sources: set[str] | None) -> list[dict]:
    from router.cli import CLIError
    from router.from_logs import filter_records, select_feedback

    if args.logs:
        path = Path(args.logs)
        if not path.is_file():
            raise CLIError(f"--logs {path}: no such file")
        records = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CLIError(f"--logs {path}: line {n}: invalid JSON ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise CLIError(f"--logs {path}: line {n}: expected a JSON object")
                records.append(rec)
        return filter_records(records, sources)
    from router.proxy.config import ConfigError, StateConfig, load_config
    from router.state.outcome_store import DB_NAME, StoreUnavailable, open_outcome_store

    state = StateConfig()
    if args.config:
        try:
            state = load_config(args.config).state
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    state_dir = args.state_dir or state.dir
    redis_url = args.redis_url or state.redis_url
    if redis_url is None and not (Path(state_dir) / DB_NAME).is_file():
        raise CLIError(f"no outcome store in {state_dir!r} (no {DB_NAME}); give --state-dir, "
                       "--redis-url, --config or --logs")
    store = open_outcome_store(state_dir, redis_url, args.stream or state.outcome_stream)
    try:
        return select_feedback(store.events(), sources)
    except StoreUnavailable as exc:
        raise CLIError(f"cannot read outcomes: {exc}") from None
    finally:
        store.close()


def run(args: argparse.Namespace) -> int:
    from router.cli import CLIError
    from router.commands.output import check_out, write_jsonl
    from router.from_logs import build_rows, prompt_index
    from router.prompt_file import PromptFileError, read_prompts

    sources = None
    if args.sources:
        sources = {s.strip() for s in args.sources.split(",") if s.strip()}
        bad = sorted(sources - {"api", "auto", "replay"})
        if bad or not sources:
            raise CLIError(f"--sources: unknown source(s) {bad}; use api, auto, replay")
    out = Path(args.out)
    if why := check_out(out):
        raise CLIError(why)
    if args.cluster_tasks is not None and args.cluster_tasks < 1:
        raise CLIError(f"--cluster-tasks must be >= 1, got {args.cluster_tasks}")
    prompts = {}
    if args.prompts:
        try:
            prompts = prompt_index(read_prompts(args.prompts))
        except PromptFileError as exc:
            raise CLIError(str(exc)) from None
    records = _events(args, sources)
    if args.since is not None:
        records = [r for r in records if (r.get("ts") or 0) >= args.since]
    rows, report = build_rows(records, prompts, args.task)
    for reason, n in report.skipped.most_common():
        print(f"router data from-logs: skipped {n} request(s): {reason}", file=sys.stderr)
    if not rows:
        raise CLIError(f"no usable request among {report.requests} logged: a request needs an "
                       "answer, a reward (POST /v1/feedback) and its prompt text")
    if args.cluster_tasks is not None:
        cluster_tasks(rows, args.cluster_tasks, args.encoder)
    write_jsonl(out, rows)
    mix = ", ".join(f"{m} {n}" for m, n in report.per_model.most_common())
    print(f"router data from-logs: wrote {out}: {report.rows} prompts from {report.used} of "
          f"{report.requests} requests ({mix})", file=sys.stderr)
    return 0


def cluster_tasks(rows: list[dict], k: int, encoder: str | None = None, seed: int = 0) -> None:
    """Replace each row's task by its k-means cluster (``cluster0`` ...) of prompt embeddings."""
    import numpy as np
    from sklearn.cluster import KMeans

    from router.cli import CLIError

    if encoder and encoder.split(":", 1)[0] == "hashing":
        from router.proxy.routing import hashing_encoder_config, load_encoder

        dim = encoder.partition(":")[2] or "256"
        if not dim.isdigit() or int(dim) < 2:
            raise CLIError(f"--encoder {encoder}: expected hashing[:DIM] with DIM >= 2")
        enc = load_encoder(hashing_encoder_config(int(dim)), use_cache=False)
    else:
        from router.encoding.encoder import EncoderError
        from router.encoding.select import default_encoder

        try:
            enc = default_encoder(model_name=encoder) if encoder else default_encoder()
        except EncoderError as exc:
            raise CLIError(f"encoder: {exc}") from None
    X = np.asarray(enc.encode([r["prompt"] for r in rows], progress=False), dtype=np.float64)
    k = min(k, len(rows))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(X)
    for row, label in zip(rows, labels, strict=True):
        row["task"] = f"cluster{int(label)}"
