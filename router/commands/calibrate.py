"""``router calibrate``: pick ``lam`` for a spend or a model share on your own prompts.

    router calibrate --artifact artifacts/knn --prompts sample.jsonl --target-usd-per-1k 0.5
    router calibrate --artifact artifacts/knn --prompts sample.txt --target-share large=0.2

The prompts (any :mod:`router.prompt_file` format; answers are not needed) are embedded
with the artifact's encoder, the policy estimates every model's quality and cost for them,
and :func:`router.calibrate.calibrate` picks the ``lam`` whose expected spend (or share of
the named model) is closest to the target. Prints the expected model mix, $ per 1k queries
and estimated quality, and the ``routing.lam`` to serve with (``--json`` for a machine
readable result, ``--out FILE`` to keep it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", required=True, metavar="DIR",
                        help="trained policy artifact (router train --out)")
    parser.add_argument("--prompts", required=True, metavar="FILE",
                        help="a sample of your prompts (.jsonl, .csv or one per line)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-usd-per-1k", type=float, metavar="X",
                        help="expected spend to aim at, USD per 1000 queries")
    target.add_argument("--target-share", metavar="MODEL=S",
                        help="share of queries (0-1) to send to MODEL")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="use a seeded random sample of N prompts (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", metavar="FILE", help="also write the result as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _target(args: argparse.Namespace):
    from router.cli import CLIError

    if args.target_usd_per_1k is not None:
        if not args.target_usd_per_1k >= 0:
            raise CLIError(f"--target-usd-per-1k must be >= 0, got {args.target_usd_per_1k}")
        return None
    model, sep, share = args.target_share.rpartition("=")
    try:
        value = float(share)
    except ValueError:
        value = None
    if not sep or not model or value is None or not 0 <= value <= 1:
        raise CLIError(f"--target-share {args.target_share!r}: expected MODEL=S with S in [0, 1]")
    return model, value


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from policies import load_policy
    from router.calibrate import calibrate
    from router.cli import CLIError
    from router.prompt_file import PromptFileError, read_prompts

    share = _target(args)
    art = Path(args.artifact)
    if not (art / "config.json").is_file():
        raise CLIError(f"--artifact {art}: not a policy artifact (no config.json)")
    try:
        items = read_prompts(args.prompts)
    except PromptFileError as exc:
        raise CLIError(str(exc)) from None
    if args.sample is not None:
        if args.sample < 1:
            raise CLIError(f"--sample must be >= 1, got {args.sample}")
        if args.sample < len(items):
            idx = np.random.default_rng(args.seed).choice(len(items), args.sample, replace=False)
            items = [items[i] for i in sorted(idx)]
    policy = load_policy(str(art))
    if policy.evaluation_only:
        raise CLIError(f"--artifact {art}: policy {policy.name!r} is evaluation-only")
    from router.proxy.routing import load_encoder

    encoder = load_encoder(policy.meta_.get("encoder"))
    X = encoder.encode([it.prompt for it in items], progress=not args.quiet)
    est = policy.predict(np.asarray(X, dtype=np.float32))
    try:
        best, sweep = calibrate(est.quality, est.cost, list(policy.models_),
                                target_usd_per_1k=args.target_usd_per_1k, target_share=share)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    from router.calibrate import spend_interval

    interval = spend_interval(est.quality, est.cost, best.lam, seed=args.seed)
    result = {
        "artifact": str(art), "policy": policy.name, "prompts": str(args.prompts),
        "n_prompts": len(items),
        "target": ({"usd_per_1k": args.target_usd_per_1k} if share is None
                   else {"model": share[0], "share": share[1]}),
        **best.as_dict(),
        "usd_per_1k_90pct": list(interval),
        "range": {"usd_per_1k_min": min(op.usd_per_1k for op in sweep),
                  "usd_per_1k_max": max(op.usd_per_1k for op in sweep)},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print(result, best, sweep, share, args)
    return 0


def _print(result, best, sweep, share, args) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 110)
    tgt = (f"${args.target_usd_per_1k:g} per 1k queries" if share is None
           else f"{share[1]:.0%} of queries to {share[0]}")
    console.print(f"[bold]lam = {best.lam:.6g}[/bold] on {result['n_prompts']} prompts "
                  f"(target {tgt}): expected ${best.usd_per_1k:.4f} per 1k queries (90% "
                  f"bootstrap interval over resamples of these prompts: "
                  f"${result['usd_per_1k_90pct'][0]:.4f}-{result['usd_per_1k_90pct'][1]:.4f}), "
                  f"estimated quality {best.quality:.3f}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("model")
    table.add_column("share", justify="right")
    for m, s in sorted(best.mix.items(), key=lambda kv: -kv[1]):
        table.add_row(m, f"{s:.1%}")
    console.print(table)
    lo, hi = result["range"]["usd_per_1k_min"], result["range"]["usd_per_1k_max"]
    if share is None and not lo - 1e-12 <= args.target_usd_per_1k <= hi + 1e-12:
        console.print(f"[yellow]warning:[/yellow] the target is outside what routing these "
                      f"prompts can spend (${lo:.4f} to ${hi:.4f} per 1k); the nearest end "
                      "was chosen")
    console.print("serve with it: put this in the gateway config (or `router serve --lam "
                  f"{best.lam!r}`)\n\nrouting:\n  lam: {best.lam!r}")
