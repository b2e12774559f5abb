"""`router` command line: a thin dispatcher.

Each command lives in the module that owns it and exposes ``configure(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so ``router --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("router.commands.train", "train a routing policy into an artifact directory"),
    "route": ("router.commands.route", "route one prompt with a trained artifact"),
    "eval": ("eval.cli", "RouterBench-style evaluation: curves, AIQ, APGR, plots, report"),
    "serve": ("router.proxy.cli", "run the OpenAI-compatible routing gateway"),
    "data": ("router.commands.data", "inspect routing datasets"),
    "logs": ("router.commands.logs", "export outcome logs"),
    "calibrate": ("router.commands.calibrate", "pick lam for a spend or model share on your prompts"),
}


class CLIError(Exception):
    """A user-facing error: printed as `router: error: ...` with exit code 2."""


def set_quiet_env() -> None:
    """Offline defaults: no hub downloads, litellm's bundled price table."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router", description="costroute: cost-aware LLM routing and gateway"
    )
    from router import __version__

    parser.add_argument("--version", action="version", version=f"costroute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            p.set_defaults(_missing=name)
            continue
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_quiet_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        parser.error(f"command {args.command!r} is not available in this build")
    try:
        return int(args._run(args) or 0)
    except CLIError as exc:
        print(f"router {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # user-facing errors from our libraries
        from policies.base import PolicyError
        from router.datasets import DatasetError
        from router.encoding.encoder import EncoderError
        from router.index import VectorIndexError
        from router.textview import TextViewError

        known = (
            PolicyError, DatasetError, EncoderError, VectorIndexError, TextViewError,
            FileNotFoundError, PermissionError,
        )
        if isinstance(exc, known):
            print(f"router {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
