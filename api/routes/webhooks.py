"""/v1/webhooks: the tenant's signing secret, for its receivers to verify events with."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import Administering
from service import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class SigningSecret(BaseModel):
    secret: str = Field(description="whsec_...: the Standard Webhooks secret of this tenant")


@router.get("/secret", response_model=SigningSecret)
async def get_secret(call: Administering) -> SigningSecret:
    """The secret this tenant's events are signed with (made on first use)."""
    return SigningSecret(secret=await call(webhooks.secret))


@router.post("/secret/rotate", response_model=SigningSecret)
async def rotate(call: Administering) -> SigningSecret:
    """A new secret: events sent from now on are signed with it."""
    return SigningSecret(secret=await call(webhooks.rotate_secret))
