"""API keys, stored as SHA-256 hashes: a key is shown once, when it is made."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ApiKey

KEY_PREFIX = "lq_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add_key(s: Session, name: str) -> str:
    """Store a new key (hashed); return the key itself."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    s.add(ApiKey(name=name, prefix=key[:10], key_hash=hash_key(key)))
    return key


def any_keys(s: Session) -> bool:
    count = s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None)))
    return bool(count)


def key_is_valid(s: Session, key: str) -> bool:
    row = s.scalar(
        select(ApiKey.id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return row is not None
