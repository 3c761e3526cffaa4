"""/v1/keys: API keys, managed by admin keys (of their own tenant; the default tenant's admins
manage every tenant's)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import Admin, RowId, SessionDep
from service import keys
from service.keys import KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
def create(body: KeyCreate, s: SessionDep, who: Admin) -> KeyCreated:
    """A new key with scopes (read, submit, calibrate, admin); the key is shown once."""
    return keys.create_for(s, who, body)


@router.get("", response_model=list[KeyOut])
def list_keys(s: SessionDep, who: Admin) -> list[KeyOut]:
    return keys.listed(s, who)


@router.delete("/{key_id}", response_model=KeyOut)
def revoke(key_id: RowId, s: SessionDep, who: Admin) -> KeyOut:
    return keys.revoke(s, who, key_id)
