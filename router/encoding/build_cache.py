"""Build-once cache entries shared by the derived encoders (ONNX exports, static
distillations): the cache directory, a file-locked build that one process runs while the
others wait, atomic temporary files, a small in-memory LRU of vectors, and the
``python -m`` command line that fills a cache ahead."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from router.encoding.errors import EncoderError

if TYPE_CHECKING:
    import argparse


def default_onnx_cache_dir() -> Path:
    """``$COSTROUTE_CACHE_DIR/onnx`` or ``~/.cache/costroute/onnx``."""
    env = os.environ.get("COSTROUTE_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "costroute"
    return base / "onnx"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(done: Path, lock: Path, build: Callable[[], None], what: str) -> None:
    """Run ``build`` unless the file ``done`` exists, holding the file lock ``lock``: one
    process builds a cache entry, the others wait for it and reuse it."""
    if done.is_file():
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EncoderError(f"cannot create the {what} cache directory {lock.parent}: {exc}") \
            from exc
    with _file_lock(lock):
        if not done.is_file():
            build()


def lru_put(lru: OrderedDict[str, np.ndarray], lock: threading.Lock,
            items: Iterable[tuple[str, np.ndarray]], size: int) -> None:
    """Keep read-only copies of ``items`` as the newest entries of ``lru`` (at most ``size``)."""
    with lock:
        for text, vec in items:
            vec = vec.copy()
            vec.setflags(write=False)
            lru[text] = vec
            lru.move_to_end(text)
        while len(lru) > size:
            lru.popitem(last=False)


def atomic_target(target: Path) -> Path:
    """A temporary file next to ``target`` (same filesystem, for ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is shared like any cache file
    return Path(tmp)


def cache_cli(description: str, sub: str) -> argparse.ArgumentParser:
    """Parser of a ``python -m`` command that fills the ``<cache>/<sub>`` cache ahead."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("model_dir", nargs="?", default=None,
                    help="local model directory (default: the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--cache-dir", default=None, help=f"default: $COSTROUTE_CACHE_DIR/{sub}")
    return ap
