"""Named leases in the database: whoever holds an unexpired one may act (e.g. the one beat)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Lock, as_utc
from db.session import db_now, rowcount


def acquire(s: Session, name: str, owner: str, seconds: float) -> bool:
    """Take or renew the lock `name` for `owner`; False while another owner holds it (by the
    database's clock)."""
    now = db_now(s)
    expires = now + timedelta(seconds=seconds)
    taken = s.execute(
        update(Lock)
        .where(Lock.name == name, (Lock.owner == owner) | (Lock.expires_at < now))
        .values(owner=owner, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if rowcount(taken) == 1:
        return True
    if s.get(Lock, name) is not None:
        return False
    try:
        with s.begin_nested():
            s.add(Lock(name=name, owner=owner, expires_at=expires))
        return True
    except IntegrityError:
        return False


def release(s: Session, name: str, owner: str) -> None:
    s.execute(delete(Lock).where(Lock.name == name, Lock.owner == owner))


def holder(s: Session, name: str) -> str | None:
    """Who holds `name` now (None: nobody, or the lease ran out)."""
    row = s.get(Lock, name)
    if row is None or as_utc(row.expires_at) < db_now(s):
        return None
    return row.owner
