"""`router route`: route one prompt with a trained artifact.

    router route --artifact out/knn "Write a function that reverses a list" [--lam 100]
    router route --artifact out/knn "..." --budget 0.001 --json

Embeds the prompt with a runtime of the encoder recorded in the artifact (ONNX int8 by
default, see :mod:`router.encoding.select`), asks the policy for every model's estimated
quality and cost, and prints the chosen model and the runner-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from router.cli import CLIError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", required=True, metavar="DIR",
                        help="artifact directory written by `router train`")
    parser.add_argument("prompt", help="the prompt text")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--lam", type=float, default=None, metavar="X",
                       help="price of cost: pick argmax quality - X * cost (default 0)")
    group.add_argument("--budget", type=float, default=None, metavar="USD",
                       help="best estimated quality with estimated cost <= USD per call")
    parser.add_argument("--task", default=None,
                        help="task label, for task-aware policies (task-static)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--cache-dir", default=None, help="embedding cache directory")
    parser.add_argument("--device", default=None, help="encoder device (cpu, cuda, ...)")
    parser.add_argument("--encoder-backend", default="auto",
                        choices=["auto", "artifact", "torch", "onnx", "onnx-int8"],
                        help="encoder runtime (default auto: ONNX int8 on CPU, torch if ONNX "
                             "is unavailable; artifact: the one it was trained with)")


def route_prompt(
    policy, encoder, prompt: str, lam: float = 0.0, budget: float | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Decision for one prompt as a JSON-able dict (chosen model, runner-up, estimates)."""
    from policies.base import decision_from_estimate

    x = encoder.encode_one(prompt)
    est = policy.predict(x[None, :], tasks=None if task is None else [task])
    decision = decision_from_estimate(est, policy.models_, lam=lam, budget=budget)
    q, c = est.quality[0], est.cost[0]

    # online policies: quality is the posterior mean; the optimism bonus is reported apart
    bandit = policy.estimates(x[None, :]) if hasattr(policy, "estimates") else None

    def entry(name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        j = policy.models_.index(name)
        out = {"model": name, "quality": float(q[j]), "cost": float(c[j]),
               "score": decision.scores[name]}
        if bandit is not None:
            out["bonus"] = float(bandit.bonus[0, j])
        return out

    out = {
        "policy": policy.name,
        "lam": lam,
        "budget": budget,
        "task": task,
        "chosen": entry(decision.model),
        "runner_up": entry(decision.runner_up),
        "estimates": [entry(m) for m in policy.models_],
    }
    if bandit is not None:  # how familiar the prompt is, and how far that backed off
        fam = float(bandit.familiarity[0])
        out.update(familiarity=fam if np.isfinite(fam) else None,
                   fallback=float(bandit.fallback[0]))
    return out


def run(args: argparse.Namespace) -> int:
    from policies.base import check_budget, check_lam

    lam = check_lam(0.0 if args.lam is None else args.lam)
    budget = check_budget(args.budget)
    if not args.prompt.strip():
        raise CLIError("the prompt is empty")

    from policies import load_policy
    from router.encoding.encoder import EncoderError
    from router.proxy.routing import load_encoder

    policy = load_policy(args.artifact)
    enc_cfg = policy.meta_.get("encoder")
    if not isinstance(enc_cfg, dict):
        raise CLIError(f"{args.artifact}: the artifact records no encoder (not from `router train`?)")
    overrides = {k: v for k, v in (("cache_dir", args.cache_dir), ("device", args.device)) if v}
    try:
        encoder = load_encoder(enc_cfg, args.encoder_backend, policy.dim_, **overrides)
        result = route_prompt(policy, encoder, args.prompt, lam=lam, budget=budget,
                              task=args.task)
    except EncoderError as exc:
        raise CLIError(f"encoder: {exc}") from None

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    chosen, runner = result["chosen"], result["runner_up"]
    mode = f"budget ${budget:g}/call" if budget is not None else f"lam {lam:g}"
    print(f"policy:    {policy.name} ({mode})")
    print(f"model:     {chosen['model']}")
    print(f"estimate:  quality {chosen['quality']:.3f}, cost ${chosen['cost']:.6f} per call")
    if "bonus" in chosen:
        fam = result["familiarity"]
        print(f"bonus:     {chosen['bonus']:.3f} (optimism, not in the estimate; familiarity "
              f"{'n/a' if fam is None else f'{fam:.2f}'}, fallback weight "
              f"{result['fallback']:.2f})")
    if runner is not None:
        print(f"runner-up: {runner['model']} (quality {runner['quality']:.3f}, "
              f"cost ${runner['cost']:.6f})")
    if budget is not None and chosen["cost"] > budget:
        print("note:      no model fits the budget; chose the cheapest", file=sys.stderr)
    return 0
