"""`router eval`: RouterBench-style offline evaluation of routing policies.

Trains each named policy on the train split (or loads ``--artifact`` directories), sweeps
``lam`` over a grid from the best-quality to the cheapest choice, and writes
``results.json``, ``report.md``, ``pareto.png`` and ``per_task.png`` into ``--out``.
Metric definitions: eval/README.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from eval.context import EvalContext, align_models, default_data_path, load_data  # noqa: F401
from eval.outputs import results_json, write_outputs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", metavar="PATH",
        help="dataset file or directory (*_train/*_test files form the split; otherwise a "
        "seeded split), or 'demo' (generated). Default: ../shared/datasets/routerbench-subset "
        "when present, else the demo dataset",
    )
    parser.add_argument(
        "--test", metavar="PATH",
        help="separate test dataset; --data is then used whole for training",
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.3, metavar="F",
        help="test share when --data has no train/test files (default 0.3)",
    )
    parser.add_argument(
        "--policies", metavar="LIST",
        help="comma-separated policy names, each optionally with :KEY=VALUE parameters "
        "(e.g. knn:k=20,mlp), or 'all'. Default: every available offline policy",
    )
    parser.add_argument(
        "--artifact", action="append", default=[], metavar="DIR",
        help="evaluate a trained artifact directory (repeatable; added to --policies, "
        "which default to none when only artifacts are given)",
    )
    parser.add_argument(
        "--lams", default="auto", metavar="SPEC",
        help="lam grid: auto[:N] (0 plus N log-spaced values from 0.01/max model cost to "
        "100/min model cost, default N=60), log:LO:HI:N, or A,B,C",
    )
    parser.add_argument("--encoder", metavar="MODEL", help="sentence-transformers model")
    parser.add_argument("--text-view", metavar="VIEW", help="prompt view for the encoder")
    parser.add_argument(
        "--encoder-backend", metavar="B",
        help="encoder runtime for the trained policies: torch, onnx, onnx-int8 or static "
        "(the encoder distilled into a static model); default as `router train`",
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="embedding cache directory (encoder default)"
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, metavar="N",
        help="bootstrap resamples of the test queries for the intervals (0: none; "
        "default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split and bootstrap seed")
    parser.add_argument("--strong", metavar="MODEL", help="APGR strong model (default: best)")
    parser.add_argument("--weak", metavar="MODEL", help="APGR weak model (default: cheapest)")
    parser.add_argument(
        "--online", action="store_true",
        help="also replay the online (bandit) policies over the test stream (eval.online)",
    )
    parser.add_argument(
        "--scenario", action="append", default=[], metavar="NAME[:K=V,...]",
        help="with --online: also replay a drift scenario (stationary, degrade, price, swap, "
        "new-task; 'all' for every one; repeatable): the world changes halfway "
        "(eval/scenarios.py, eval/drift.py)",
    )
    parser.add_argument(
        "--auto-rewards", action="store_true",
        help="with --online: also replay a bandit that learns from cascade agreement labels "
        "alone, no feedback (eval/online_auto.py; needs recorded responses)",
    )
    parser.add_argument(
        "--explore", action="store_true",
        help="also replay exploration shares of the online policy on the TRAIN split (a fit / "
        "stream cut of train; the test split is not read) and recommend the largest share "
        "whose quality drop against the frozen prior stays within 0.005 (eval/explore.py)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N",
        help="native threads (BLAS, OpenMP, torch) while training, sweeping and scoring; "
        "0 leaves the libraries' defaults (default 1: the policies' work is small, and "
        "more threads mostly wait on each other; the encoder is not capped)",
    )
    parser.add_argument(
        "--leave-one-task-out", action="store_true",
        help="for each task, train on the other tasks' train rows and test on its test rows; "
        "each learned policy against best-single (chosen on the training tasks), per task "
        "and on the mean (eval/loto.py)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG files")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")


def run(args: argparse.Namespace) -> int:
    from eval.harness import EvalError
    from router.cli import CLIError

    try:
        return _run(args)
    except EvalError as exc:
        raise CLIError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    from eval import harness as H
    from router.cli import CLIError
    from router.threads import native_threads, preload

    t_start = time.perf_counter()
    if args.bootstrap < 0:
        raise CLIError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.threads < 0:
        raise CLIError(f"--threads must be >= 0, got {args.threads}")
    if not 0 < args.test_fraction < 1:
        raise CLIError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if getattr(args, "scenario", None) and not args.online:
        raise CLIError("--scenario replays the online bandit: give --online too")
    if getattr(args, "auto_rewards", False) and not args.online:
        raise CLIError("--auto-rewards replays the online bandit: give --online too")
    for art in args.artifact:
        if not Path(art).is_dir():
            raise CLIError(f"--artifact {art}: no such directory")
    if args.policies is None and args.artifact:
        specs: list[H.PolicySpec] = []
    else:
        specs = H.parse_policies(args.policies)
    for spec in specs:
        if H.available_policy(spec.name) is None:
            raise CLIError(f"policy {spec.name!r} is registered but not available in this build")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")

    ctx = load_data(args, out)
    ctx.timings["load_s"] = time.perf_counter() - t_start
    ctx.say(
        f"{ctx.train.name}: {len(ctx.train)} train / {len(ctx.test)} test queries, "
        f"{ctx.train.n_models} models, {len(ctx.lams)} lam values"
    )

    artifacts = [_load_artifact(path) for path in args.artifact]
    all_specs = specs + [s for s, _ in artifacts]
    labels = [s.label for s in all_specs]
    if len(set(labels)) != len(labels):
        raise CLIError(f"two policies share a label: {labels}")
    if not all_specs:
        raise CLIError("no policies to evaluate")
    if any(s.artifact is None for s in all_specs) and len(ctx.train) == 0:
        raise CLIError(f"{ctx.train.name}: the train split is empty")

    if getattr(args, "leave_one_task_out", False):
        return _run_loto(ctx, specs, artifacts, t_start)
    evaluation = H.Evaluation(ctx.test, ctx.lams, weak=args.weak, strong=args.strong)
    _embed(ctx, specs, [p for _, p in artifacts])

    if ctx.X_train is not None or ctx.X_test is not None:
        preload()  # faiss, scikit-learn: their pools must be loaded to be capped
    with native_threads(args.threads):
        _train_and_sweep(ctx, evaluation, specs, artifacts)
        t0 = time.perf_counter()
        bar = _bar(len(evaluation.results), "bootstrap", args.quiet)
        scores = evaluation.score(
            n_boot=args.bootstrap, seed=args.seed, progress=lambda _label: bar.update(1)
        )
        bar.close()
        ctx.timings["score_s"] = time.perf_counter() - t0
    results = results_json(ctx, evaluation, scores)

    if args.online:  # bandit replay of the test stream (eval/online.py)
        try:
            from eval import online
        except ImportError as exc:
            raise CLIError(f"--online needs eval.online, which is not available ({exc})") from None
        out.mkdir(parents=True, exist_ok=True)
        try:
            results["online"] = online.run_online(ctx)
        except getattr(online, "OnlineEvalError", ()) as exc:
            raise CLIError(f"--online: {exc}") from None
        for line in getattr(online, "summary_lines", lambda _r: [])(results["online"]):
            print(line)
        if getattr(args, "scenario", None):  # drift scenarios (eval/drift.py)
            try:
                results["online_scenarios"] = online.run_scenarios(ctx, args.scenario)
            except online.OnlineEvalError as exc:
                raise CLIError(f"--scenario: {exc}") from None
        if getattr(args, "auto_rewards", False):
            from eval import online_auto

            try:
                results["online_auto"] = online_auto.run_online_auto(ctx)
            except online_auto.AutoRewardError as exc:
                raise CLIError(f"--auto-rewards: {exc}") from None
            for line in online_auto.summary_lines(results["online_auto"]):
                print(line)

    if getattr(args, "explore", False):  # exploration shares on a train replay (eval/explore.py)
        from eval import explore

        try:
            results["explore"] = explore.run_explore(ctx)
        except explore.ExploreEvalError as exc:
            raise CLIError(f"--explore: {exc}") from None
        for line in explore.summary_lines(results["explore"]):
            print(line)

    write_outputs(ctx, results)
    ctx.timings["total_s"] = time.perf_counter() - t_start
    results["timings"] = {k: round(v, 3) for k, v in ctx.timings.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    from eval.report import summary_lines

    for line in summary_lines(results):
        print(line)
    ctx.say(f"wrote {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} to {out}")
    return 0


def _run_loto(ctx: EvalContext, specs, artifacts, t_start: float) -> int:
    """`--leave-one-task-out`: eval.loto over every task; results.json and report.md."""
    from eval.loto import LotoError, render_loto, run_loto
    from router.cli import CLIError
    from router.threads import native_threads, preload

    if artifacts:
        raise CLIError("--leave-one-task-out trains every policy per left-out task; it "
                       "cannot evaluate --artifact directories")
    if ctx.args.online:
        raise CLIError("--leave-one-task-out does not combine with --online")
    _embed(ctx, specs, [])
    if ctx.X_train is not None:
        preload()
    try:
        with native_threads(ctx.args.threads):
            results = run_loto(ctx, specs, say=ctx.say)
    except LotoError as exc:
        raise CLIError(f"{ctx.train.name}: {exc}") from None
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "report.md").write_text(render_loto(results))
    ctx.timings["total_s"] = time.perf_counter() - t_start
    results["timings"] = {k: round(v, 3) for k, v in ctx.timings.items()}
    (ctx.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    for line in render_loto(results, summary=True).splitlines():
        print(line)
    ctx.say(f"wrote report.md, results.json to {ctx.out}")
    return 0


# ---- policies ---------------------------------------------------------------------------
def _load_artifact(path: str):
    from eval.harness import PolicySpec
    from policies import load_policy

    policy = load_policy(path)
    folder = Path(path).resolve().name
    label = f"{policy.name} (artifact)" if folder == policy.name else f"{policy.name}@{folder}"
    return PolicySpec(label, policy.name, policy.get_params(), artifact=str(path)), policy


def _embed(ctx: EvalContext, specs, artifact_policies) -> None:
    """Embed train/test prompts when some policy reads embeddings (cached on disk).

    Trained policies use the encoder of ``--encoder``/``--text-view``; an artifact whose
    metadata holds an encoder config (``meta["encoder"]``, as ``Encoder.config()``) is
    evaluated with that encoder, so its test embeddings match its training ones.
    """
    from eval.harness import needs_embeddings
    from policies import get_policy_class

    train_needs = any(needs_embeddings(get_policy_class(s.name)) for s in specs)
    art_needs = [p for p in artifact_policies if needs_embeddings(type(p))]
    if not (train_needs or art_needs):
        return
    try:
        from router.encoding.encoder import Encoder, EncoderError, embed_dataset
    except ImportError as exc:
        from router.cli import CLIError

        raise CLIError(
            f"these policies read embeddings, but the encoder is unavailable: {exc}"
        ) from None
    args = ctx.args
    from router.encoding.select import train_encoder_kwargs

    try:
        kwargs = train_encoder_kwargs(args.encoder, getattr(args, "encoder_backend", None),
                                      args.text_view)
    except ValueError as exc:
        from router.cli import CLIError

        raise CLIError(str(exc)) from None
    cache = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    progress = not args.quiet
    t0 = time.perf_counter()
    try:
        ctx.encoder = Encoder(**kwargs, **cache)
        ctx.say(f"embedding with {ctx.encoder.model_id}, view {ctx.encoder.text_view} "
                "(cached on disk)")
        if train_needs:
            ctx.X_train = np.asarray(
                embed_dataset(ctx.train, ctx.encoder, progress=progress), dtype=np.float32
            )
        ctx.X_test = np.asarray(
            embed_dataset(ctx.test, ctx.encoder, progress=progress), dtype=np.float32
        )
        for policy in art_needs:
            cfg = (getattr(policy, "meta_", None) or {}).get("encoder")
            if not isinstance(cfg, dict):
                continue
            enc = Encoder.from_config(cfg, **cache)
            if enc.config() == ctx.encoder.config():
                continue
            ctx.say(f"artifact {policy.name}: embedding with its own encoder {enc.model_id}, "
                    f"view {enc.text_view}")
            ctx.artifact_X[id(policy)] = np.asarray(
                embed_dataset(ctx.test, enc, progress=progress), dtype=np.float32
            )
    except EncoderError as exc:
        from router.cli import CLIError

        raise CLIError(f"encoder: {exc}") from None
    ctx.timings["embed_s"] = time.perf_counter() - t0


def _placeholder(n: int, dim: int) -> np.ndarray:
    """Embeddings for policies that ignore them (no encoder needed)."""
    return np.zeros((n, dim), dtype=np.float32)


def _own_test_X(ctx: EvalContext, policy) -> np.ndarray | None:
    """Test embeddings from a fitted policy's own encoder (eval.own_encoder), or None."""
    from eval.own_encoder import own_embeddings
    from router.encoding.encoder import EncoderError

    try:
        return own_embeddings(policy, ctx.test.prompts, ctx.args.cache_dir,
                              progress=not ctx.args.quiet, say=ctx.say)
    except EncoderError as exc:
        from router.cli import CLIError

        raise CLIError(f"{policy.name}: its own encoder: {exc}") from None


def _train_and_sweep(ctx: EvalContext, evaluation, specs, artifacts) -> None:
    from eval import harness as H
    from policies import get_policy_class
    from policies.base import PolicyError

    quality, cost = evaluation.quality, evaluation.cost
    jobs = [(s, None) for s in specs] + list(artifacts)
    bar = _bar(len(jobs), "train + sweep", ctx.args.quiet)
    for spec, loaded in jobs:
        bar.set_postfix_str(spec.label)
        timings: dict[str, float] = {}
        why = _cannot_run(ctx, spec, loaded)
        if why:
            ctx.say(f"{spec.label}: {why}")
            ctx.skipped[spec.label] = why
            bar.update(1)
            continue
        try:
            if loaded is None:
                klass = get_policy_class(spec.name)
                X_train = ctx.X_train if H.needs_embeddings(klass) else _placeholder(
                    len(ctx.train), 1
                )
                t0 = time.perf_counter()
                policy = H.fit_policy(spec, ctx.train, X_train)
                timings["fit_s"] = time.perf_counter() - t0
                source = "trained"
            else:
                policy, source = loaded, str(spec.artifact)
            if not H.needs_embeddings(type(policy)):
                X_test = _placeholder(len(ctx.test), policy.dim_)
            else:
                X_test = ctx.artifact_X.get(id(policy))
                if X_test is None and loaded is None:  # e.g. a routerdc fine-tuned just now
                    t0 = time.perf_counter()
                    X_test = _own_test_X(ctx, policy)
                    if X_test is not None:
                        timings["embed_own_s"] = time.perf_counter() - t0
                if X_test is None:
                    X_test = ctx.X_test
            columns = H.model_map(policy, evaluation.models, spec.label)
            outcomes, extra = None, {}
            if spec.name in H.ANSWER_AWARE:  # replayed over the recorded responses
                from eval.cascades import sweep_cascade

                choices, outcomes, extra, t_pred, t_route = sweep_cascade(
                    policy, ctx.test, ctx.lams,
                    X_test if H.needs_embeddings(type(policy)) else None)
            else:
                choices, t_pred, t_route = H.sweep_policy(
                    policy, X_test, ctx.lams, ctx.test.tasks, (quality, cost), columns
                )
        except PolicyError as exc:
            raise PolicyError(f"{spec.label}: {exc}") from None
        timings.update(predict_s=t_pred, route_s=t_route)
        evaluation.add(H.PolicyResult(
            spec.label, spec.name, source, spec.params, choices,
            {k: round(v, 4) for k, v in timings.items()}, outcomes=outcomes, extra=extra,
        ))
        bar.update(1)
    bar.close()
    ctx.timings["train_sweep_s"] = sum(
        sum(r.timings.values()) for r in evaluation.results
    )
    if not evaluation.results:
        from router.cli import CLIError

        raise CLIError("no policy could be evaluated: " + "; ".join(
            f"{label}: {why}" for label, why in ctx.skipped.items()))


def _cannot_run(ctx: EvalContext, spec, loaded) -> str | None:
    """Why a policy is skipped on this data (a cascade without recorded responses)."""
    from eval.cascades import no_responses_note
    from policies import get_policy_class

    klass = type(loaded) if loaded is not None else get_policy_class(spec.name)
    if "responses" not in klass.requires:
        return None
    for data in ((ctx.test,) if loaded is not None else (ctx.train, ctx.test)):
        note = no_responses_note(data)
        if note:
            return note
    return None


def _bar(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="policy", disable=quiet or None, leave=False)
