"""`router train`: fit a routing policy on a dataset's train split into an artifact.

    router train --policy knn --data ../shared/datasets/routerbench-subset --out out/knn \
        [--encoder all-MiniLM-L6-v2] [--text-view question] [--param k=20 ...] [--seed 0]

The train split is embedded with the encoder (through its on-disk cache), the policy is
fitted and saved with metadata (encoder config, dataset name, n_train, time, seed), which
`router route` and the gateway use to embed queries the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.cli import CLIError


def configure(parser: argparse.ArgumentParser) -> None:
    from policies import REGISTRY

    parser.add_argument("--policy", required=True, metavar="NAME",
                        help="policy: " + ", ".join(REGISTRY))
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="dataset path (directory with *_train/*_test files, or a file), "
                        "or 'demo' for the generated demo dataset")
    parser.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write")
    parser.add_argument("--encoder", default=None, metavar="MODEL",
                        help="sentence-transformers model (default all-MiniLM-L6-v2), or "
                        "hashing[:DIM] for the model-free hashing encoder (tests, demos)")
    parser.add_argument("--text-view", default=None, metavar="V",
                        help="part of the prompt to embed: full, head:N, tail:N, question[:N]")
    parser.add_argument("--encoder-backend", default=None, metavar="B",
                        help="encoder runtime the artifact is trained (and served) with: "
                        "torch, onnx, onnx-int8, or static (the encoder distilled into a "
                        "static model, sub-millisecond routing); default: static for "
                        "knn, cscr and mlp on the stock model (their routing quality holds on "
                        "it, benchmarks/bench_static.py), else torch")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="policy parameter (JSON value or string); repeatable")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the policy (when it takes one) and any train/test split")
    parser.add_argument("--test-fraction", type=float, default=0.3,
                        help="held-out share when the dataset has no train/test files; 0 "
                        "trains on every row (e.g. `router data label` / `from-logs` output)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache directory")
    parser.add_argument("--device", default=None, help="encoder device (cpu, cuda, ...)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="native (BLAS/OpenMP/torch) threads while fitting; 0 = libraries' "
                        "defaults (small fits run fastest on 1, see eval/README.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["k=20", "weighting=uniform"]`` -> ``{"k": 20, "weighting": "uniform"}``.

    Values are JSON where they parse (numbers, lists, true/false/null), strings otherwise.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or not key.isidentifier():
            raise CLIError(f"--param {pair!r}: expected KEY=VALUE with KEY a parameter name")
        if key in params:
            raise CLIError(f"--param {key} is given twice")
        text = text.strip()
        if text == "":
            raise CLIError(f"--param {key}: empty value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if isinstance(value, float) and not math.isfinite(value):
            raise CLIError(f"--param {key}={text}: value must be finite")
        params[key] = value
    return params


def build_policy(name: str, raw_params: list[str], seed: int):
    """The unfitted policy, with parameters checked before any slow work."""
    from policies import get_policy_class, make_policy

    klass = get_policy_class(name)
    if klass.evaluation_only:
        raise CLIError(
            f"policy {name!r} is evaluation-only (it needs the true outcomes); "
            "use it in `router eval`, not in `router train`"
        )
    params = parse_params(raw_params)
    if "seed" in klass._param_names() and "seed" not in params:
        params["seed"] = seed
    policy = make_policy(name, **params)
    check = getattr(policy, "_check_params", None)
    if callable(check):
        check()
    return policy


def _log(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _encoder(args: argparse.Namespace):
    from router.encoding.encoder import Encoder, EncoderError

    if args.encoder and args.encoder.split(":", 1)[0] == "hashing":
        from router.proxy.routing import hashing_encoder_config, load_encoder

        dim = args.encoder.partition(":")[2] or "256"
        if not dim.isdigit() or int(dim) < 2:
            raise CLIError(f"--encoder {args.encoder}: expected hashing[:DIM] with DIM >= 2")
        return load_encoder(hashing_encoder_config(int(dim)), use_cache=False)

    from router.encoding.select import train_encoder_kwargs

    try:
        kwargs = train_encoder_kwargs(args.encoder, getattr(args, "encoder_backend", None),
                                      args.text_view, args.cache_dir, policy=args.policy)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.device:
        kwargs["device"] = args.device
    try:
        return Encoder(**kwargs)
    except EncoderError as exc:
        raise CLIError(f"encoder: {exc}") from None


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    policy = build_policy(args.policy, args.param, args.seed)
    from router.datasets import DEMO, load_split

    data = Path(args.data)
    if args.data != DEMO and not data.exists():
        raise CLIError(f"--data {data}: no such file or directory")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    if args.threads < 0:
        raise CLIError(f"--threads must be >= 0, got {args.threads}")
    if not 0 <= args.test_fraction < 1:
        raise CLIError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    encoder = _encoder(args)

    _log(args, f"loading {data} ...")
    if args.test_fraction == 0:
        from router.datasets import load_dataset

        train = load_dataset(data)
    else:
        train = load_split(data, test_fraction=args.test_fraction, seed=args.seed).train
    if len(train) == 0:
        raise CLIError(f"--data {data}: the train split is empty")
    n_obs = int(train.mask.sum())
    _log(args, f"  {train.name}: {len(train)} train prompts, {train.n_models} models, "
               f"{len(train.task_names)} tasks, {train.mask.size - n_obs} missing cells")

    from router.encoding.encoder import EncoderError, embed_dataset

    _log(args, f"embedding with {encoder.model_id} ...")
    t0 = time.perf_counter()
    try:
        X = embed_dataset(train, encoder, progress=not args.quiet)
    except EncoderError as exc:
        raise CLIError(f"encoder: {exc}") from None
    _log(args, f"  {X.shape[0]} x {X.shape[1]} embeddings in {time.perf_counter() - t0:.1f}s")

    _log(args, f"fitting {policy!r} ...")
    t0 = time.perf_counter()
    from router.threads import native_threads, preload

    preload()
    with native_threads(args.threads):
        policy.fit_dataset(train, X)  # missing cost -> model mean; missing quality stays NaN
    _log(args, f"  fitted in {time.perf_counter() - t0:.1f}s")
    _, state = policy._get_state()
    learned = {k: v for k, v in state.items() if isinstance(v, int | float | str) and k != "tasks"}
    if learned:
        _log(args, "  learned: " + ", ".join(f"{k}={v}" for k, v in learned.items()))

    meta = {
        "encoder": encoder.config(),
        "dataset": train.name,
        "data_path": str(data),
        "n_train": len(train),
        "tasks": train.task_names,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": args.seed,
    }
    policy.save(out, meta=meta)
    _log(args, f"saved {args.policy} artifact to {out} "
               f"({time.perf_counter() - started:.1f}s in all)")
    return 0
