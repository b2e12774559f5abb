"""API keys: authentication by sha256, per-key request rate and USD budget.

Clear keys are hashed as soon as they arrive (config load or request header) and never
stored or logged; outcome records carry ``key_id`` (the first 16 hex digits of the hash).
Budget accounting is reserve -> settle/release through :mod:`router.state.keys_store`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from router.proxy.config import KeysConfig
from router.proxy.schemas import APIError


@dataclass(frozen=True)
class KeyInfo:
    hash: str
    name: str
    budget: float | None = None
    rpm: int | None = None

    @property
    def id(self) -> str:
        return self.hash[:16]


ANONYMOUS = KeyInfo(hash="anonymous", name="anonymous")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def bearer(headers: Any) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or None


class KeyManager:
    """Looks keys up and enforces their limits against a key store."""

    def __init__(self, cfg: KeysConfig, store: Any) -> None:
        self.required = cfg.is_required
        self.store = store
        self.keys = {k.hash: KeyInfo(k.hash, k.name, k.budget_usd, k.rpm) for k in cfg.keys}

    @property
    def names(self) -> dict[str, str]:
        return {h: k.name for h, k in self.keys.items()}

    def authenticate(self, headers: Any) -> KeyInfo:
        key = bearer(headers)
        if key is not None:
            info = self.keys.get(hash_key(key))
            if info is not None:
                return info
            if self.required:
                raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
            return ANONYMOUS
        if self.required:
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                           code="missing_api_key")
        return ANONYMOUS

    async def check_rate(self, info: KeyInfo) -> None:
        if info.rpm is not None and not await self.store.ahit(info.hash, info.rpm):
            raise APIError(429, f"Rate limit reached for key '{info.name}': "
                                f"{info.rpm} requests per minute.",
                           code="rate_limit_exceeded", headers={"retry-after": "60"})

    async def remaining(self, info: KeyInfo) -> float | None:
        if info.budget is None:
            return None
        spent, reserved = await self.store.ausage(info.hash)
        return max(0.0, info.budget - spent - reserved)

    async def reserve(self, info: KeyInfo, amount: float) -> bool:
        if info.budget is None:
            return True
        return await self.store.areserve(info.hash, amount, info.budget)

    async def settle(self, info: KeyInfo, reserved: float, actual: float) -> None:
        if info.budget is None:
            if info.hash != ANONYMOUS.hash:  # spend of a key without a limit is still counted
                await self.store.asettle(info.hash, 0.0, actual)  # (nothing was reserved)
            return
        await self.store.asettle(info.hash, reserved, actual)

    def settle_op(self, info: KeyInfo, reserved: float, actual: float) -> list[str] | None:
        """Like :meth:`settle`, deferred to the outcome record's write (the store's
        ``defer_settle``); None when there is nothing to charge."""
        if info.budget is None:
            if info.hash == ANONYMOUS.hash:
                return None
            reserved = 0.0
        return self.store.defer_settle(info.hash, reserved, actual)

    async def release(self, info: KeyInfo, reserved: float) -> None:
        if info.budget is None:
            return
        await self.store.arelease(info.hash, reserved)

    async def spend(self, info: KeyInfo) -> float:
        spent, _ = await self.store.ausage(info.hash)
        return spent
