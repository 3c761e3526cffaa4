"""/v1/keys: API keys, managed by admin keys (of their own tenant; the default tenant's admins
manage every tenant's)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Admin, DbDep, RowId, StateDep
from service import keys
from service.keys import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
async def create(body: KeyCreate, db: DbDep, st: StateDep, who: Admin) -> KeyCreated:
    """A new key with scopes (read, submit, calibrate, admin); the key is shown once."""
    created = await db(keys.create_for, who, body)
    st.auth.clear()  # the first key closes the open loopback access at once
    return created


@router.get("", response_model=list[KeyOut])
async def list_keys(db: DbDep, who: Admin) -> list[KeyOut]:
    return await db(keys.listed, who)


@router.delete("/{key_id}", response_model=KeyOut)
async def revoke(key_id: RowId, db: DbDep, st: StateDep, who: Admin) -> KeyOut:
    """Revoke a key: refused at once by this API process, by others within
    LABELQ_AUTH_CACHE_SECONDS."""
    revoked = await db(keys.revoke, who, key_id)
    st.auth.clear()
    return revoked
