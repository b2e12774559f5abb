"""``router data label``: answers of the config's backends to a prompt file, graded, as JSONL.

    router data label --prompts prompts.jsonl --config config.yaml --out labels.jsonl \\
        --grader mc [--grader code=judge:gpt-4o] [--max-usd 5] [--concurrency 8]

Every prompt goes to every backend of the config (``--models`` picks some; judge backends
are left out unless named there) through the gateway's backend layer; each answer is graded
(``--grader SPEC`` for the whole file, ``--grader TASK=SPEC`` per task, a ``grader`` field
per prompt; :mod:`router.graders`) and written, with its real cost and response, to the
generic JSONL of data/README.md. Every paid answer is first fsynced to the journal
(``--journal``, default ``OUT.journal``): a killed or capped run, rerun with the same
arguments, asks only the cells the journal lacks. Exit status: 0 every cell answered and
graded, 1 some cells failed or were skipped (the message says which), 3 ``--max-usd`` reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

EXIT_INCOMPLETE = 1
EXIT_BUDGET = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, metavar="FILE",
                        help="prompts: .jsonl (prompt, id, task, answer, grader), .csv with a "
                             "prompt column, or plain text (one prompt per line)")
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="gateway config whose model_list names the backends")
    parser.add_argument("--out", required=True, metavar="DATASET.jsonl",
                        help="dataset to write (generic JSONL, data/README.md)")
    parser.add_argument("--models", metavar="A,B,...",
                        help="backends to label (default: every backend not used as a judge)")
    parser.add_argument("--grader", action="append", default=[], metavar="[TASK=]SPEC",
                        help="exact | mc | number | judge:<backend>; TASK=SPEC for one task; "
                             "repeatable (a prompt's own 'grader' field wins)")
    parser.add_argument("--task", metavar="NAME",
                        help="task of prompts without one (default: the prompt file's name)")
    parser.add_argument("--journal", metavar="FILE",
                        help="journal of paid answers (default OUT.journal)")
    parser.add_argument("--max-usd", type=float, metavar="X",
                        help="hard cap on the total spend (the journal's, earlier runs "
                             "included); no call starts that could pass it")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="calls in flight (default 8)")
    parser.add_argument("--retries", type=int, default=4, metavar="N",
                        help="retries of a failed call, with exponential backoff (default 4)")
    parser.add_argument("--backoff", type=float, default=0.5, metavar="S",
                        help="first retry delay in seconds, doubling (default 0.5)")
    parser.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                        help="max_tokens of each answer (bounds the cost reserved per call; "
                             "default 1024)")
    parser.add_argument("--judge-max-tokens", type=int, default=16, metavar="N",
                        help="max_tokens of each judge verdict (default 16)")
    parser.add_argument("--temperature", type=float, help="sampling temperature to send "
                                                          "(default: the provider's)")
    parser.add_argument("--max-backend-failures", type=int, default=5, metavar="N",
                        help="stop a backend after N failed cells in a row (default 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _fail(message: str):
    from router.cli import CLIError

    return CLIError(message)


def _check_args(args: argparse.Namespace) -> None:
    for name, low in (("concurrency", 1), ("retries", 0), ("max_tokens", 1),
                      ("judge_max_tokens", 1), ("max_backend_failures", 1)):
        if getattr(args, name) < low:
            raise _fail(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.max_usd is not None and not args.max_usd >= 0:
        raise _fail(f"--max-usd must be >= 0, got {args.max_usd}")
    if args.backoff < 0:
        raise _fail(f"--backoff must be >= 0, got {args.backoff}")
    from router.commands.output import check_out

    if why := check_out(args.out):
        raise _fail(why)


def resolve_graders(items: list[Any], specs: list[str], backends: list[str]) -> list[Any]:
    """The grader of each prompt: its own field, else --grader TASK=SPEC, else --grader SPEC."""
    from router.graders import GraderError, check_reference, parse_grader

    default, per_task = None, {}
    try:
        for spec in specs:
            task, sep, rest = spec.partition("=")
            if sep and not task.startswith("judge"):
                per_task[task.strip()] = parse_grader(rest, backends)
            else:
                if default is not None:
                    raise _fail(f"--grader {spec!r}: a default grader is already given "
                                f"({default}); use TASK=SPEC for per-task graders")
                default = parse_grader(spec, backends)
        out, problems = [], []
        for item in items:
            if item.grader:
                g = parse_grader(item.grader, backends)
            else:
                g = per_task.get(item.task or "", default)
            if g is None:
                raise _fail(f"prompt {item.id!r} has no grader: give --grader SPEC (exact, mc, "
                            "number or judge:<backend>) or a 'grader' field")
            why = check_reference(g.kind, item.reference)
            if why:
                problems.append(f"{item.id} ({g}): {why}")
            out.append(g)
    except GraderError as exc:
        raise _fail(str(exc)) from None
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise _fail(f"{len(problems)} prompt(s) cannot be graded: " + "; ".join(problems[:5])
                    + more)
    return out


def run(args: argparse.Namespace) -> int:
    from router.graders import GraderError
    from router.prompt_file import PromptFileError, read_prompts
    from router.proxy.config import ConfigError, load_config

    _check_args(args)
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            items = read_prompts(args.prompts)
    except PromptFileError as exc:
        raise _fail(str(exc)) from None
    for w in caught:
        print(f"router data label: warning: {w.message}", file=sys.stderr)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    names = [m.model_name for m in cfg.model_list]
    graders = resolve_graders(items, args.grader, names)
    judges = sorted({str(g.backend) for g in graders if g.kind == "judge"})
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in names]
        if unknown or not models:
            raise _fail(f"--models: unknown backend(s) {unknown}; the config has {names}")
    else:
        models = [n for n in names if n not in judges]
        if not models:
            raise _fail(f"every backend of {args.config} is a judge; name the ones to label "
                        "with --models")
    out = Path(args.out)
    journal_path = Path(args.journal) if args.journal else out.with_name(out.name + ".journal")
    task = args.task or Path(args.prompts).stem
    try:
        return asyncio.run(_label(args, cfg, items, models, graders, judges, out,
                                  journal_path, task))
    except GraderError as exc:
        raise _fail(str(exc)) from None


async def _label(args, cfg, items, models, graders, judges, out: Path, journal_path: Path,
                 task: str) -> int:
    from router.label import Labeler
    from router.label_journal import Journal
    from router.proxy.backends import make_backend
    from router.proxy.http_pool import make_pool

    journal = Journal(journal_path)
    if journal.skipped_lines:
        print(f"router data label: {journal_path}: skipped {journal.skipped_lines} torn line(s) "
              "of an interrupted run", file=sys.stderr)
    pool = make_pool(cfg.routing.http_client, cfg.routing.http_shards)
    replay = None
    if any(cfg.backend(n).litellm_params.provider == "replay" for n in [*models, *judges]):
        from router.proxy.replay import ReplayProvider

        replay = ReplayProvider.from_config(cfg.replay)
    try:
        backends = {n: make_backend(cfg.backend(n), cfg, pool, replay)
                    for n in dict.fromkeys([*models, *judges])}
    except ValueError as exc:
        await pool.aclose()
        raise _fail(str(exc)) from None
    labeler = Labeler(items, models, graders, backends, journal,
                      concurrency=args.concurrency, retries=args.retries, backoff=args.backoff,
                      max_usd=args.max_usd, max_tokens=args.max_tokens,
                      judge_max_tokens=args.judge_max_tokens, temperature=args.temperature,
                      max_backend_failures=args.max_backend_failures, progress=not args.quiet)
    interrupted = False
    try:
        report = await labeler.run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        report = labeler.report
        report.spent_total = journal.spent
    finally:
        journal.close()
        await pool.aclose()
    n_rows, ungraded = write_dataset(out, items, models, graders, journal, task)
    return _summary(args, report, out, journal_path, n_rows, ungraded, interrupted)


def write_dataset(out: Path, items, models, graders, journal, task: str) -> tuple[int, int]:
    """Write the dataset atomically; (rows, answered cells without a grade)."""
    from router.commands.output import write_jsonl
    from router.label import dataset_records

    records, ungraded = dataset_records(items, models, graders, journal, task)
    return write_jsonl(out, records), ungraded


def _summary(args, report, out: Path, journal_path: Path, n_rows: int, ungraded: int,
             interrupted: bool) -> int:
    say = lambda msg: print(f"router data label: {msg}", file=sys.stderr)  # noqa: E731
    say(f"wrote {out} ({n_rows} prompts); {report.answered} answers paid in this run, "
        f"{report.reused} reused from {journal_path}; {report.calls} calls; spent "
        f"${report.spent_run:.6f} in this run, ${report.spent_total:.6f} in all")
    if report.judge_unparsable:
        say(f"warning: {report.judge_unparsable} judge verdict(s) were not 'SCORE: <0-1>'; those "
            f"cells are missing (not 0). The verdicts are in {journal_path}")
    if ungraded:
        say(f"{ungraded} answered cell(s) have no grade (missing cells in {out})")
    for backend, why in report.stopped_backends.items():
        say(f"error: backend {backend!r} stopped: {why}")
    for backend, n in report.failed.items():
        say(f"error: {n} call(s) to {backend!r} failed after {args.retries} retries (see the "
            f"'error' lines of {journal_path})")
    if interrupted:
        say(f"interrupted: {report.left or 'some'} cells left; every paid answer is kept in "
            f"{journal_path}; rerun the same command to continue")
        return 130
    if report.budget_stop and report.left:
        say(f"stopped: --max-usd ${args.max_usd:.6f} reached (spent ${report.spent_total:.6f} "
            f"in all); {report.left} of {report.cells} cells have no answer yet. Every paid "
            f"answer is kept in {journal_path} and {out}; rerun with a higher --max-usd to "
            "continue")
        return EXIT_BUDGET
    if report.left:
        say(f"incomplete: {report.left} of {report.cells} cells have no answer or verdict; "
            "rerun the same command to try them again (answered cells are not paid again)")
        return EXIT_INCOMPLETE
    return 0
