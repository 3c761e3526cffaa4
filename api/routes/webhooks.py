"""/v1/webhooks: the tenant's deliveries (the failed ones to replay) and its signing secret,
for its receivers to verify events with."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import Administering, Reading, RowId
from service import webhooks
from service.webhooks import DeliveryOut

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


@router.get("", response_model=list[DeliveryOut])
async def list_deliveries(
    call: Reading,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> list[DeliveryOut]:
    """This tenant's deliveries, newest first; `status=failed` lists those that ran out of
    their retry window (LABELQ_WEBHOOK_RETRY_WINDOW), to replay. Page with `before` = the last
    id seen."""
    return await call(webhooks.listing, status, limit, before)


@router.post("/{delivery_id}/redeliver", response_model=DeliveryOut)
async def redeliver(delivery_id: RowId, call: Administering) -> DeliveryOut:
    """Send a delivery again now, with a new retry window and the same `webhook-id` (a
    receiver de-duplicates by it): a failed one, or a replay of a delivered one."""
    return await call(webhooks.redeliver, delivery_id)
