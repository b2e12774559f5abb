"""Spend ledgers: account positions, the shared interface and the embedded (in-process) ledger.

Part of :mod:`router.budget` (the module docstring there describes the whole policy).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from router.budget.spec import BudgetError, BudgetSpec


@dataclass
class AccountView:
    """An account's budget state at decision time."""

    account: str
    amount: float
    spent: float
    reserved: float
    queries: int
    window: int
    bin: int
    bin_start: float
    n_bins: int
    total: float = 0.0

    @property
    def remaining(self) -> float:
        return self.amount - self.spent - self.reserved

    @property
    def bin_budget(self) -> float:
        return self.amount * (self.bin + 1) / self.n_bins - self.bin_start

    @property
    def z(self) -> float:
        """Fraction of the current bin's budget used (1 when the bin has none)."""
        budget = self.bin_budget
        if budget <= 0:
            return 1.0
        return min(max((self.spent + self.reserved - self.bin_start) / budget, 0.0), 1.0)


_FIELDS = ("spent", "reserved", "queries", "window", "bin", "bin_start", "start", "total")


def _advance(acct: dict[str, float], spec: BudgetSpec, now: float, count: bool) -> None:
    """Move an account to the window/bin of this moment; count the query if asked."""
    if "start" not in acct:
        acct["start"] = now
    for key in _FIELDS:
        acct.setdefault(key, 0.0)
    w, k = 0, 0
    if spec.horizon is not None:
        if spec.clock == "queries":
            p = acct["queries"] / spec.horizon
        else:
            p = (now - acct["start"]) / spec.horizon
        p = max(p, 0.0)
        if spec.renew:
            w = math.floor(p)
            frac = p - w
        else:
            frac = p
        k = min(math.floor(frac * spec.n_bins), spec.n_bins - 1)
    if w != acct["window"]:
        acct["spent"] = 0.0
        acct["window"] = w
        acct["bin"] = k
        acct["bin_start"] = acct["reserved"]
    elif k != acct["bin"]:
        acct["bin"] = k
        acct["bin_start"] = acct["spent"] + acct["reserved"]
    if count:
        acct["queries"] += 1


def _view(name: str, acct: dict[str, float], spec: BudgetSpec) -> AccountView:
    return AccountView(
        account=name, amount=spec.amount, spent=acct["spent"], reserved=acct["reserved"],
        queries=int(acct["queries"]), window=int(acct["window"]), bin=int(acct["bin"]),
        bin_start=acct["bin_start"], n_bins=spec.n_bins, total=acct["total"],
    )


Accounts = Sequence[tuple[str, BudgetSpec]]


class SpendLedger:
    """Interface: per-account spend, reservations, query counts."""

    def begin(self, accounts: Accounts, now: float) -> list[AccountView]:
        """Count one query on every account and return their views."""
        raise NotImplementedError

    def view(self, accounts: Accounts, now: float) -> list[AccountView]:
        raise NotImplementedError

    def reserve(self, accounts: Accounts, amount: float, now: float, ttl: float) -> str | None:
        """Atomically hold ``amount`` on every account if it fits all; the reservation id."""
        raise NotImplementedError

    def settle(self, rid: str, accounts: Accounts, actual: float, now: float) -> None:
        """Free reservation ``rid`` and record ``actual`` as spent (0 for a release)."""
        raise NotImplementedError

    def reset(self, accounts: Sequence[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""


class EmbeddedLedger(SpendLedger):
    """In-process ledger (thread-safe); with ``path`` it is saved atomically as JSON on
    every commit/release and reloaded on start."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._accounts: dict[str, dict[str, float]] = {}
        self._res: dict[str, tuple[float, tuple[str, ...], float]] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self._accounts = {k: dict(v) for k, v in data["accounts"].items()}
                self._res = {k: (v[0], tuple(v[1]), v[2]) for k, v in data["reservations"].items()}
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                raise BudgetError(f"{self.path}: unreadable budget ledger ({exc})") from exc

    def _reap(self, now: float) -> None:
        for rid in [r for r, (_, _, exp) in self._res.items() if exp <= now]:
            self._unhold(rid)

    def _unhold(self, rid: str) -> None:
        amount, names, _ = self._res.pop(rid)
        for name in names:
            acct = self._accounts.get(name)
            if acct is not None:
                acct["reserved"] = max(acct["reserved"] - amount, 0.0)

    def _acct(self, name: str) -> dict[str, float]:
        return self._accounts.setdefault(name, {})

    def begin(self, accounts: Accounts, now: float) -> list[AccountView]:
        return self._views(accounts, now, count=True)

    def view(self, accounts: Accounts, now: float) -> list[AccountView]:
        return self._views(accounts, now, count=False)

    def _views(self, accounts: Accounts, now: float, count: bool) -> list[AccountView]:
        with self._lock:
            self._reap(now)
            out = []
            for name, spec in accounts:
                acct = self._acct(name)
                _advance(acct, spec, now, count=count)
                out.append(_view(name, acct, spec))
            return out

    def reserve(self, accounts: Accounts, amount: float, now: float, ttl: float) -> str | None:
        with self._lock:
            self._reap(now)
            for name, spec in accounts:
                acct = self._acct(name)
                _advance(acct, spec, now, count=False)
                if acct["spent"] + acct["reserved"] + amount > spec.amount:
                    return None
            for name, _ in accounts:
                self._accounts[name]["reserved"] += amount
            rid = uuid.uuid4().hex
            self._res[rid] = (amount, tuple(n for n, _ in accounts), now + ttl)
            return rid

    def settle(self, rid: str, accounts: Accounts, actual: float, now: float) -> None:
        with self._lock:
            if rid in self._res:
                self._unhold(rid)
            for name, spec in accounts:
                acct = self._acct(name)
                _advance(acct, spec, now, count=False)
                acct["spent"] += actual
                acct["total"] += actual
            self._save()

    def reset(self, accounts: Sequence[str]) -> None:
        with self._lock:
            for name in accounts:
                self._accounts.pop(name, None)
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"accounts": self._accounts,
                "reservations": {k: [a, list(n), e] for k, (a, n, e) in self._res.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        with self._lock:
            self._save()
