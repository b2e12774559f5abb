"""Format detection and dispatch: which reader a file goes to."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from router.dataset import RoutingDataset
from router.dataset_formats.records import load_json_list, load_jsonl
from router.dataset_formats.routerbench import load_csv, load_pickle
from router.dataset_formats.validation import Builder, DatasetError

if TYPE_CHECKING:
    from router.catalogue import ModelCatalogue


def detect_format(path: str | Path) -> str:
    """The loader for ``path``: by extension, then by the first non-blank byte."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return "routerbench"
    if suffix in (".pkl", ".pickle"):
        return "routerbench-pickle"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    head = _head(p)
    if head.startswith(b"\x80"):  # pickle protocol >= 2
        return "routerbench-pickle"
    first = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    if not first:
        raise DatasetError(f"{p}: file is empty")
    if first == b"[":
        return "routerdc"
    if first == b"{":
        return "jsonl"
    raise DatasetError(
        f"{p}: unknown format: expected .csv (RouterBench), .pkl (RouterBench pickle), "
        ".json (RouterDC list of records) or .jsonl (one JSON record per line)"
    )


def _head(p: Path, n: int = 4096) -> bytes:
    try:
        with p.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read: {exc.strerror or exc}") from None


def read_file(p: Path, source: str | None, strict: bool, catalogue: ModelCatalogue | None,
               responses: bool) -> RoutingDataset:
    """Read ``p`` as ``source`` (None: detected) through the shared :class:`Builder`."""
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    if p.stat().st_size == 0:
        raise DatasetError(f"{p}: file is empty")
    fmt = source or detect_format(p)
    if fmt == "routerbench" and p.suffix.lower() in (".pkl", ".pickle"):
        fmt = "routerbench-pickle"
    builder = Builder(p, strict, catalogue)
    if fmt == "routerbench":
        return load_csv(p, builder, responses)
    if fmt == "routerbench-pickle":
        return load_pickle(p, builder, responses)
    if fmt == "routerdc":
        return load_json_list(p, builder, responses)
    return load_jsonl(p, builder, responses)
