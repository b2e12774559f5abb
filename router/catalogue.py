"""Model catalogue: model name -> litellm id, per-token prices and typical request sizes.

The catalogue is ``data/models.yaml`` (shipped as the ``costroute_data`` package) merged with
litellm's bundled price table. Prices resolve in this order:

1. ``input_per_1m`` / ``output_per_1m`` written in the YAML entry;
2. litellm's bundled table (``litellm.model_cost`` with ``LITELLM_LOCAL_MODEL_COST_MAP=True``),
   looked up under the entry's ``litellm`` id and that id without its ``provider/`` prefix;
3. a name that has no YAML entry but is itself a key of litellm's table resolves to that row.

Anything else is unknown and raises :class:`CatalogueError`. Reading the table does not
import litellm (a 4 s import): the bundled JSON is read directly unless litellm is already
imported, in which case its live ``model_cost`` (which may hold registered models) is used.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

_FIELDS = {
    "litellm", "provider", "input_per_1m", "output_per_1m", "typical_input_tokens",
    "typical_output_tokens", "notes", "aliases",
}
_DEFAULT_IN_TOKENS = 500
_DEFAULT_OUT_TOKENS = 250


class CatalogueError(ValueError):
    """Unreadable catalogue file, or a model it cannot name or price."""


@dataclass(frozen=True)
class ModelInfo:
    """One catalogue entry with its resolved prices (USD per 1M tokens, None if unknown)."""

    name: str
    litellm: str | None
    provider: str | None
    input_per_1m: float | None
    output_per_1m: float | None
    typical_input_tokens: int
    typical_output_tokens: int
    notes: str = ""
    price_source: str | None = None  # "catalogue" | "litellm" | None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def priced(self) -> bool:
        return self.input_per_1m is not None and self.output_per_1m is not None


def default_catalogue_path() -> Path:
    """``$COSTROUTE_CATALOGUE``, else ``models.yaml`` of ``costroute_data``, else the repo copy."""
    env = os.environ.get("COSTROUTE_CATALOGUE")
    if env:
        return Path(env)
    return data_dir() / "models.yaml"


def data_dir() -> Path:
    """The ``costroute_data`` package directory (``data/`` in a checkout)."""
    try:
        from importlib.resources import files

        candidate = files("costroute_data")
        if candidate.joinpath("models.yaml").is_file():
            return Path(str(candidate))
    except (ImportError, OSError, TypeError, ValueError):
        # e.g. an editable install made while data/ was a namespace package
        spec = importlib.util.find_spec("costroute_data")
        for location in (spec.submodule_search_locations or []) if spec else []:
            if (Path(location) / "models.yaml").is_file():
                return Path(location)
    return Path(__file__).resolve().parents[1] / "data"


def litellm_price_table() -> dict[str, dict[str, Any]]:
    """litellm's model -> price row table, without importing litellm when avoidable."""
    if "litellm" in sys.modules:
        table = getattr(sys.modules["litellm"], "model_cost", None)
        if isinstance(table, dict):
            return table
    return _bundled_table()


@lru_cache(maxsize=1)
def _bundled_table() -> dict[str, dict[str, Any]]:
    spec = importlib.util.find_spec("litellm")
    if spec is None:
        return {}
    for location in spec.submodule_search_locations or []:
        path = Path(location) / "model_prices_and_context_window_backup.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                break
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return dict(litellm.model_cost)


def litellm_price(model_id: str | None) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens from litellm's table, or None when it has no price."""
    if not model_id:
        return None
    table = litellm_price_table()
    candidates = [model_id]
    if "/" in model_id:
        candidates.append(model_id.split("/", 1)[1])
    for key in candidates:
        row = table.get(key)
        if isinstance(row, dict) and row.get("input_cost_per_token") is not None:
            p_in = float(row["input_cost_per_token"]) * 1e6
            p_out = float(row.get("output_cost_per_token") or 0.0) * 1e6
            return float(f"{p_in:.10g}"), float(f"{p_out:.10g}")  # drop float noise
    return None


def _number(value: Any, where: str, *, integer: bool = False) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CatalogueError(f"{where}: expected a number, got {value!r}")
    if value < 0:
        raise CatalogueError(f"{where}: must be >= 0, got {value!r}")
    if integer:
        if int(value) != value:
            raise CatalogueError(f"{where}: expected a whole number of tokens, got {value!r}")
        return int(value)
    return float(value)


class ModelCatalogue:
    """Look up prices and litellm ids by model name (or alias, or litellm id)."""

    def __init__(self, models: dict[str, ModelInfo], source: str = "<memory>", *,
                 litellm_fallback: bool = True,
                 defaults: tuple[int, int] = (_DEFAULT_IN_TOKENS, _DEFAULT_OUT_TOKENS)) -> None:
        self.models = dict(models)
        self._defaults = defaults
        self.source = source
        self.litellm_fallback = litellm_fallback
        self._index: dict[str, str] = {}
        for name, info in self.models.items():
            for key in (name, *info.aliases, info.litellm):
                if not key:
                    continue
                other = self._index.get(key)
                if other is not None and other != name and key != info.litellm:
                    raise CatalogueError(f"{source}: name {key!r} is used by {other!r} and {name!r}")
                self._index.setdefault(key, name)

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *,
             litellm_fallback: bool = True) -> ModelCatalogue:
        """Read a catalogue YAML (default: :func:`default_catalogue_path`); results are cached."""
        p = Path(path) if path is not None else default_catalogue_path()
        try:
            mtime = p.stat().st_mtime_ns
        except FileNotFoundError:
            raise CatalogueError(f"{p}: model catalogue not found") from None
        return _load_cached(str(p.resolve()), mtime, litellm_fallback)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<memory>", *,
                     litellm_fallback: bool = True) -> ModelCatalogue:
        """Build from the parsed YAML structure (``{"defaults": {...}, "models": {...}}``)."""
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise CatalogueError(f"{source}: expected a mapping with a 'models' mapping")
        unknown_top = set(data) - {"defaults", "models"}
        if unknown_top:
            raise CatalogueError(f"{source}: unknown top-level keys {sorted(unknown_top)}")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise CatalogueError(f"{source}: 'defaults' must be a mapping")
        d_in = _number(defaults.get("typical_input_tokens", _DEFAULT_IN_TOKENS),
                       f"{source}: defaults.typical_input_tokens", integer=True)
        d_out = _number(defaults.get("typical_output_tokens", _DEFAULT_OUT_TOKENS),
                        f"{source}: defaults.typical_output_tokens", integer=True)
        models: dict[str, ModelInfo] = {}
        for name, entry in data["models"].items():
            where = f"{source}: model {name!r}"
            entry = entry or {}
            if not isinstance(entry, dict):
                raise CatalogueError(f"{where}: expected a mapping of fields")
            unknown = set(entry) - _FIELDS
            if unknown:
                raise CatalogueError(f"{where}: unknown fields {sorted(unknown)} "
                                     f"(allowed: {sorted(_FIELDS)})")
            lit = entry.get("litellm")
            if lit is not None and not isinstance(lit, str):
                raise CatalogueError(f"{where}: 'litellm' must be a string or null")
            p_in = _number(entry.get("input_per_1m"), f"{where}: input_per_1m")
            p_out = _number(entry.get("output_per_1m"), f"{where}: output_per_1m")
            if (p_in is None) != (p_out is None):
                raise CatalogueError(f"{where}: give both input_per_1m and output_per_1m, or neither")
            source_of_price = "catalogue" if p_in is not None else None
            if p_in is None and (found := litellm_price(lit)) is not None:
                p_in, p_out = found
                source_of_price = "litellm"
            aliases = entry.get("aliases") or []
            if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                raise CatalogueError(f"{where}: 'aliases' must be a list of names")
            t_in = _number(entry.get("typical_input_tokens", d_in),
                           f"{where}: typical_input_tokens", integer=True)
            t_out = _number(entry.get("typical_output_tokens", d_out),
                            f"{where}: typical_output_tokens", integer=True)
            models[str(name)] = ModelInfo(
                name=str(name), litellm=lit, provider=entry.get("provider"),
                input_per_1m=p_in, output_per_1m=p_out,
                typical_input_tokens=int(t_in or 0), typical_output_tokens=int(t_out or 0),
                notes=str(entry.get("notes") or ""), price_source=source_of_price,
                aliases=tuple(aliases),
            )
        return cls(models, source, litellm_fallback=litellm_fallback,
                   defaults=(int(d_in or 0), int(d_out or 0)))

    # ---- lookups ---------------------------------------------------------------------------
    def _resolve(self, model: str) -> ModelInfo | None:
        name = self._index.get(model)
        if name is not None:
            return self.models[name]
        if self.litellm_fallback and (found := litellm_price(model)) is not None:
            return ModelInfo(
                name=model, litellm=model, provider=None, input_per_1m=found[0],
                output_per_1m=found[1], typical_input_tokens=self._defaults[0],
                typical_output_tokens=self._defaults[1], notes="not in the catalogue",
                price_source="litellm",
            )
        return None

    def known(self, model: str) -> bool:
        """True when ``model`` names an entry, an alias, a litellm id or a litellm-priced model."""
        return self._resolve(model) is not None

    def info(self, model: str) -> ModelInfo:
        """The entry for ``model``; :class:`CatalogueError` when unknown."""
        found = self._resolve(model)
        if found is None:
            raise CatalogueError(
                f"unknown model {model!r}: not in the catalogue {self.source} nor in litellm's "
                "price table; add it to models.yaml (with input_per_1m/output_per_1m)"
            )
        return found

    def price(self, model: str) -> tuple[float, float]:
        """(input, output) USD per 1M tokens."""
        info = self.info(model)
        if not info.priced:
            raise CatalogueError(
                f"model {model!r} has no price: litellm's table does not know "
                f"{info.litellm!r}; set input_per_1m and output_per_1m in {self.source}"
            )
        return float(info.input_per_1m), float(info.output_per_1m)  # type: ignore[arg-type]

    def estimated_cost(self, model: str, in_tokens: float | None = None,
                       out_tokens: float | None = None) -> float:
        """USD for one call; token counts default to the entry's typical sizes."""
        info = self.info(model)
        p_in, p_out = self.price(model)
        n_in = info.typical_input_tokens if in_tokens is None else in_tokens
        n_out = info.typical_output_tokens if out_tokens is None else out_tokens
        if n_in < 0 or n_out < 0:
            raise CatalogueError("token counts must be >= 0")
        return (p_in * n_in + p_out * n_out) / 1e6

    def litellm_id(self, model: str) -> str | None:
        return self.info(model).litellm

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.known(model)

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, litellm_fallback: bool) -> ModelCatalogue:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read the model catalogue: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogueError(f"{path}: invalid YAML: {exc}") from None
    return ModelCatalogue.from_mapping(data, path, litellm_fallback=litellm_fallback)
