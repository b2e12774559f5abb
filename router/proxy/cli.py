"""``router serve``: run the OpenAI-compatible routing gateway (uvicorn)."""

from __future__ import annotations

import argparse
import gc
import logging

#: collector thresholds while serving: a young-generation pass every 50000 allocations
#: instead of 700 (at 64 concurrent requests the default runs several per request, each
#: walking every live request's objects); see :func:`tune_gc`
SERVE_GC_THRESHOLD = (50_000, 20, 100)


def tune_gc(threshold: tuple[int, int, int] = SERVE_GC_THRESHOLD) -> None:
    """Freeze what start-up allocated (modules, config, model tables: never scanned again)
    and run the cyclic collector less often. Only the collector's schedule changes:
    reference counting frees as before, cycles are still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="gateway config (YAML, LiteLLM model_list convention)")
    parser.add_argument("--artifact", help="trained policy artifact dir (overrides "
                                           "routing.artifact)")
    parser.add_argument("--host", help="bind address (default: server.host or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port or 8000)")
    parser.add_argument("--demo", action="store_true",
                        help="serve replay backends of the RouterBench subset (or the generated "
                             "demo dataset): the whole loop offline")
    parser.add_argument("--demo-policy", help="policy trained for --demo (default: linucb if "
                                              "available, else knn)")
    parser.add_argument("--demo-latency-ms", type=float, default=50.0,
                        help="replay latency for --demo (default 50)")
    parser.add_argument("--demo-dataset", help="dataset for --demo (default: "
                                               "../shared/datasets/routerbench-subset)")
    parser.add_argument("--demo-encoder", choices=["minilm", "hashing"], default="minilm",
                        help="encoder for --demo: all-MiniLM-L6-v2, or the model-free hashing "
                             "encoder (instant start)")
    parser.add_argument("--encoder-backend",
                        choices=["auto", "artifact", "torch", "onnx", "onnx-int8"],
                        help="encoder runtime (overrides routing.encoder_backend; default auto: "
                             "ONNX int8 on CPU, torch if ONNX is unavailable)")
    parser.add_argument("--state-dir", help="embedded state dir (overrides state.dir)")
    parser.add_argument("--lam", type=float, help="default trade-off (overrides routing.lam)")
    parser.add_argument("--exploration-share", type=float, metavar="S",
                        help="share of an online policy's decisions that may explore, in [0, 1] "
                             "(overrides routing.exploration_share; 0 = always exploit)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    from router.cli import CLIError
    from router.proxy.config import ConfigError, load_config

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.lam is not None and args.lam < 0:
        raise CLIError("--lam must be >= 0")
    share = getattr(args, "exploration_share", None)
    if share is not None and not (share == share and 0 <= share <= 1):
        raise CLIError(f"--exploration-share must be in [0, 1], got {share}")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise CLIError(f"--port {args.port} is not a valid port")
    kwargs = {}
    try:
        if args.demo:
            from router.proxy.replay import build_demo

            state_dir = args.state_dir or ".costroute"
            demo = build_demo(state_dir, policy_name=args.demo_policy,
                              latency_ms=args.demo_latency_ms, dataset=args.demo_dataset,
                              lam=args.lam or 0.0, encoder=args.demo_encoder,
                              encoder_backend=args.encoder_backend or "auto")
            cfg = demo["config"]
            kwargs = {"policies": demo["policies"], "default_policy": demo["default_policy"],
                      "replay": demo["replay"]}
            print(f"demo: {len(cfg.model_list)} replay backends from {demo['source']}, "
                  f"policy {demo['default_policy']}")
        elif args.config:
            cfg = load_config(args.config)
            if args.artifact:
                kwargs["artifact"] = args.artifact
            if args.encoder_backend:
                cfg.routing.encoder_backend = args.encoder_backend
        else:
            raise CLIError("give --config FILE (or --demo)")
        if args.state_dir:
            cfg.state.dir = args.state_dir
        if args.lam is not None:
            cfg.routing.lam = args.lam
        if share is not None:
            cfg.routing.exploration_share = share
        from router.proxy.app import create_app

        app = create_app(cfg, **kwargs)
    except (ConfigError, ValueError) as exc:
        raise CLIError(str(exc)) from None

    import uvicorn

    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    print(f"costroute gateway on http://{host}:{port}/v1 (models: "
          f"{', '.join(app.state.gateway.model_names()[:6])}...)")
    tune_gc()
    uvicorn.run(app, host=host, port=port, log_level=args.log_level, access_log=False,
                backlog=4096, timeout_graceful_shutdown=5)
    return 0
