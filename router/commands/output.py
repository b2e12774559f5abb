"""Dataset files written by the ``router data`` subcommands (``label``, ``from-logs``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def check_out(out: str | os.PathLike[str]) -> str | None:
    """Why ``--out`` cannot be written (a directory), or None."""
    return f"--out {out}: is a directory" if Path(out).is_dir() else None


def write_jsonl(out: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSONL atomically (a fsynced temporary file, then a rename); rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return n
