"""API keys."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db import keys


def create(s: Session, name: str) -> str:
    """A new key, stored hashed; the key itself is returned once."""
    key = keys.add_key(s, name)
    s.commit()
    return key


def authorise(s: Session, token: str | None) -> bool | None:
    """None when no key exists (the service is open to loopback); else whether `token` is a
    live key."""
    if not keys.any_keys(s):
        return None
    return bool(token) and keys.key_is_valid(s, token or "")
