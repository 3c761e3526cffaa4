"""/v1/keys: API keys, managed by admin keys (of their own tenant; the default tenant's admins
manage every tenant's)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Admin, DbDep, RowId, StateDep
from service import keys
from service.keys import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
async def create(body: KeyCreate, db: DbDep, who: Admin) -> KeyCreated:
    """A new key with scopes (read, submit, calibrate, admin); the key is shown once."""
    return await db(keys.create_for, who, body)


@router.get("", response_model=list[KeyOut])
async def list_keys(db: DbDep, who: Admin) -> list[KeyOut]:
    return await db(keys.listed, who)


@router.delete("/{key_id}", response_model=KeyOut)
async def revoke(key_id: RowId, db: DbDep, st: StateDep, who: Admin) -> KeyOut:
    """Revoked at once in this process; other API processes refuse it within
    LABELQ_KEY_CACHE_SECONDS."""
    revoked = await db(keys.revoke, who, key_id)
    st.trusted.forget(key_id)
    return revoked
