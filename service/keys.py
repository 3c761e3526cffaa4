"""API keys and who is asking: every request acts as a `Principal` (a tenant and scopes).

Keys of a tenant are managed by that tenant's admin keys; the default tenant's admins, and the
operator's CLI (the system context), manage every tenant's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cachetools import TTLCache
from pydantic import BaseModel, Field

from db import keys
from db.models import DEFAULT_TENANT, SCOPES, ApiKey
from labelq.errors import InputError, NotFound
from service.context import Ctx


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    key_id: int | None = None

    def can(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


# With no key stored, loopback clients act as this (the embedded default on a laptop).
LOCAL = Principal(DEFAULT_TENANT, frozenset(SCOPES))


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    tenant: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    scopes: list[str] = Field(min_length=1)


class KeyOut(BaseModel):
    id: int
    name: str
    tenant: str
    scopes: list[str]
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls(
            id=row.id,
            name=row.name,
            tenant=row.tenant,
            scopes=list(row.scopes),
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="Shown once: store it now.")


def _check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InputError(f"unknown scopes {unknown}; scopes are {list(SCOPES)}", field="scopes")
    return sorted(set(scopes), key=SCOPES.index)


def _managed(ctx: Ctx) -> str | None:
    """Whose keys this caller manages: its own tenant's, or every tenant's (None) for the
    default tenant's admins and the system."""
    return None if ctx.tenant in (None, DEFAULT_TENANT) else ctx.tenant


def create(ctx: Ctx, body: KeyCreate) -> KeyCreated:
    """A new key, stored hashed; the key itself is in the answer, once. An admin makes keys for
    its own tenant (the default tenant's, for any)."""
    tenant = body.tenant or ctx.tenant or DEFAULT_TENANT
    managed = _managed(ctx)
    if managed is not None and tenant != managed:
        raise InputError("an admin key makes keys for its own tenant only", field="tenant")
    with ctx.tx() as s:
        row, key = keys.add_key(s, body.name, _check_scopes(body.scopes), tenant=tenant)
        return KeyCreated(**KeyOut.of(row).model_dump(), key=key)


def listed(ctx: Ctx) -> list[KeyOut]:
    with ctx.reads() as s:
        return [KeyOut.of(row) for row in keys.list_keys(s, tenant=_managed(ctx))]


def revoke(ctx: Ctx, key_id: int) -> KeyOut:
    """Revoked at once for this process's cache; other API processes refuse it within
    LABELQ_KEY_CACHE_SECONDS."""
    with ctx.tx() as s:
        row = keys.revoke(s, key_id, tenant=_managed(ctx))
        if row is None:
            raise NotFound(f"key {key_id} does not exist", field="key_id")
        out = KeyOut.of(row)
    ctx.services.trusted_keys.forget(key_id)
    return out


@dataclass(frozen=True)
class Authenticated:
    """A live key's principal (`stale_use`: its last use is not recorded to the minute)."""

    principal: Principal
    stale_use: bool = False


def authenticate(ctx: Ctx, token: str) -> Authenticated | None:
    """Who a bearer token is, or None when it names no live key: one query. Reads only: it
    runs on the API's event loop; the caller records a stale use with `mark_used`."""
    with ctx.reads() as s:
        row = keys.find_key(s, token)
        if row is None:
            return None
        who = Principal(row.tenant, frozenset(row.scopes), row.id)
        return Authenticated(who, keys.use_is_stale(row))


def mark_used(ctx: Ctx, key_id: int) -> None:
    """Record that a key was used now (kept to the minute)."""
    with ctx.tx() as s:
        keys.mark_used(s, key_id)


def fingerprint(token: str) -> str:
    """What identifies a token without holding it (rate limits, the trusted-key cache)."""
    return keys.hash_key(token)


class TrustedKeys:
    """Keys this API process checked in the last `ttl` seconds, by their hash: a poller's
    every request need not look its key up again. Revoking a key through this process forgets
    it at once; a key revoked through another process is refused here within `ttl`
    (LABELQ_KEY_CACHE_SECONDS; 0 keeps nothing). Only live keys are kept: a wrong or revoked
    key is looked up every time."""

    def __init__(
        self, ttl: float, maxsize: int = 10_000, timer: Callable[[], float] = time.monotonic
    ):
        self.ttl = ttl
        self._keys: TTLCache[str, Principal] = TTLCache(maxsize, ttl or 1, timer)
        self._lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        if not self.ttl:
            return None
        with self._lock:
            return self._keys.get(fingerprint(token))

    def put(self, token: str, who: Principal) -> None:
        if self.ttl and who.key_id is not None:
            with self._lock:
                self._keys[fingerprint(token)] = who

    def forget(self, key_id: int | None = None, *, of_tenant: str | None = None) -> None:
        """Trust a key (or every key of tenant `of_tenant`) no more."""
        with self._lock:
            for digest, who in list(self._keys.items()):
                if who.key_id == key_id or (of_tenant is not None and who.tenant == of_tenant):
                    del self._keys[digest]
