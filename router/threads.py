"""Cap the native thread pools (BLAS, OpenMP, torch) while policies train and are scored.

One process here holds several pools, each sized to every core: OpenBLAS in numpy, scipy
and faiss, OpenMP in torch and faiss (scikit-learn shares one), and torch's own MKL. The
policies' work is small (384-wide networks on 128-row batches, 384 x 384 ridge solves,
k-means on ~1k rows), so extra threads mostly spin-wait on each other, and on a busy
machine a waiting thread is often descheduled, which stalls the others. Measured on the
shared 2-core machine at load average 9: the MLP's 122 ridge solves took 17 s inside
`router eval` and CSCR's k-means 3.1 s; capped, the whole MLP fit took 4.4 s and the
k-means 0.15 s (eval/README.md, "Speed"). The encoder (large batched matrix products) is
not capped: it runs before this context is entered.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator

#: modules whose pools are loaded lazily by the policies; imported first so the cap holds
PRELOAD = ("faiss", "sklearn.cluster")


def preload(modules: tuple[str, ...] = PRELOAD) -> None:
    """Import ``modules`` where installed (a cap only reaches libraries already loaded)."""
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


@contextlib.contextmanager
def native_threads(n: int | None) -> Iterator[None]:
    """Run the block with every loaded BLAS/OpenMP pool and torch capped at ``n`` threads.

    ``None`` or 0 leaves the pools alone. Libraries loaded inside the block keep their
    own setting, so call :func:`preload` first.
    """
    if not n:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        limiter: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        limiter = threadpool_limits(limits=int(n))
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else None
    with limiter:
        if torch is not None:
            torch.set_num_threads(int(n))
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(old)
