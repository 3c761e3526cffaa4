"""API keys and who is asking: every request acts as a `Principal` (a tenant and scopes)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from db import keys
from db.models import DEFAULT_TENANT, SCOPES, ApiKey
from labelq.errors import InputError, NotFound


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


def create(
    s: Session, name: str, tenant: str = DEFAULT_TENANT, scopes: list[str] | None = None
) -> KeyCreated:
    """A new key, stored hashed; the key itself is in the answer, once."""
    row, key = keys.add_key(s, name, tenant, _check_scopes(scopes or list(SCOPES)))
    s.commit()
    return KeyCreated(**KeyOut.of(row).model_dump(), key=key)


def create_for(s: Session, principal: Principal, body: KeyCreate) -> KeyCreated:
    """An admin makes keys for its own tenant (the default tenant's admins, for any)."""
    tenant = body.tenant or principal.tenant
    if tenant != principal.tenant and principal.tenant != DEFAULT_TENANT:
        raise InputError("an admin key makes keys for its own tenant only", field="tenant")
    return create(s, body.name, tenant, body.scopes)


def listed(s: Session, principal: Principal) -> list[KeyOut]:
    tenant = None if principal.tenant == DEFAULT_TENANT else principal.tenant
    return [KeyOut.of(row) for row in keys.list_keys(s, tenant)]


def revoke(s: Session, principal: Principal, key_id: int) -> KeyOut:
    tenant = None if principal.tenant == DEFAULT_TENANT else principal.tenant
    row = keys.revoke(s, key_id, tenant)
    if row is None:
        raise NotFound(f"key {key_id} does not exist", field="key_id")
    s.commit()
    return KeyOut.of(row)


def authenticate(s: Session, token: str | None) -> Principal | None:
    """None when no key exists (the service is open to loopback clients only); else the
    principal of a live key, or a `Principal` with no scopes for a wrong one. A live key is
    one query (a key found implies keys exist); its last-used time is written at most once a
    minute."""
    row = keys.find_key(s, token) if token else None
    if row is None:
        return Principal(DEFAULT_TENANT, frozenset()) if keys.any_keys(s) else None
    if s.dirty:
        s.commit()
    return Principal(row.tenant, frozenset(row.scopes), row.id)
