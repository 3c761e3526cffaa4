"""API keys, stored as SHA-256 hashes: a key is shown once, when it is made. Each belongs to a
tenant and carries scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import ApiKey, as_utc, utcnow

KEY_PREFIX = "lq_"
PREFIX_LENGTH = 12


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_key(s: Session, name: str, scopes: Sequence[str], *, tenant: str) -> tuple[ApiKey, str]:
    """Store a new key (hashed); return its row and the key itself."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        tenant=tenant,
        scopes=list(scopes),
        prefix=key[:PREFIX_LENGTH],
        key_hash=hash_key(key),
    )
    s.add(row)
    s.flush()
    return row, key


def find_key(s: Session, key: str) -> ApiKey | None:
    """The live key row for `key`: looked up by its prefix, its hash compared in constant time
    (a read: `mark_used` records the use)."""
    digest = hash_key(key)
    candidates = s.scalars(
        select(ApiKey).where(ApiKey.prefix == key[:PREFIX_LENGTH], ApiKey.revoked_at.is_(None))
    ).all()
    for row in candidates:
        if hmac.compare_digest(row.key_hash, digest):
            return row
    return None


# A key's last-used time is kept to the minute: not a write per request.
USE_RESOLUTION = timedelta(minutes=1)


def use_is_stale(row: ApiKey) -> bool:
    """Whether `row`'s last-used time is older than `USE_RESOLUTION` (time to record a use)."""
    last = row.last_used_at
    return last is None or as_utc(last) < utcnow() - USE_RESOLUTION


def mark_used(s: Session, key_id: int) -> None:
    """Record that a key was used now (unless a use in the last minute is recorded)."""
    s.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < utcnow() - USE_RESOLUTION),
        )
        .values(last_used_at=utcnow())
    )


def list_keys(s: Session, *, tenant: str | None) -> list[ApiKey]:
    """Keys of `tenant` (None: of every tenant)."""
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(s.scalars(query))


def revoke(s: Session, key_id: int, *, tenant: str | None) -> ApiKey | None:
    """Revoke a key of `tenant` (None: of any tenant); None when there is no such key."""
    row = s.get(ApiKey, key_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
