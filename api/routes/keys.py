"""/v1/keys: API keys, managed by admin keys (of their own tenant; the default tenant's admins
manage every tenant's)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Administering, RowId
from service import keys
from service.keys import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
async def create(body: KeyCreate, call: Administering) -> KeyCreated:
    """A new key with scopes (read, submit, calibrate, admin); the key is shown once."""
    return await call(keys.create, body)


@router.get("", response_model=list[KeyOut])
async def list_keys(call: Administering) -> list[KeyOut]:
    return await call(keys.listed)


@router.delete("/{key_id}", response_model=KeyOut)
async def revoke(key_id: RowId, call: Administering) -> KeyOut:
    """Revoked at once in this process; other API processes refuse it within
    LABELQ_KEY_CACHE_SECONDS."""
    return await call(keys.revoke, key_id)
