"""The error types of labelq. The API maps each to one HTTP status in exactly one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LabelqError(Exception):
    """Base of every error labelq raises on purpose.

    `field` names the offending field (dotted path, e.g. ``labels.positive``) and `line` the
    1-based input line, when known, so a user can find what to fix.
    """

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.line = line

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"error": self.message}
        if self.field is not None:
            out["field"] = self.field
        if self.line is not None:
            out["line"] = self.line
        return out


class SpecError(LabelqError):
    """A classifier spec is invalid."""


class InputError(LabelqError):
    """An input item (or line of an input file) is invalid."""


class NotFound(LabelqError):
    """A named thing (classifier, job, calibration) does not exist."""


class Conflict(LabelqError):
    """The request contradicts the current state (e.g. cancelling a finished job)."""


class Gone(LabelqError):
    """The thing was there and was erased (by its owner, a tenant's erasure or retention)."""


class TooLarge(LabelqError):
    """A request or an upload is over a configured limit."""


class EngineStopped(LabelqError):
    """A call reached an engine that was killed or closed: it never loads again (a new one is
    the owner's to make), so a call left running behind a killed engine cannot start a stray
    engine nobody stops."""


class RateLimited(LabelqError):
    """Too many requests; `retry_after` seconds until the next is accepted."""

    def __init__(
        self,
        message: str,
        retry_after: float,
        *,
        field: str | None = None,
        line: int | None = None,
    ):
        super().__init__(message, field=field, line=line)
        self.retry_after = retry_after


class OverLimit(RateLimited):
    """A tenant is at a limit on what it has in flight: the answer names the limits and what
    is in flight, so a client knows how much to wait for."""

    def __init__(self, message: str, limits: dict[str, Any], in_flight: dict[str, int]):
        super().__init__(message, retry_after=30, field="tenant")
        self.limits = limits
        self.in_flight = in_flight

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "limits": self.limits, "in_flight": self.in_flight}


def field_of(error: Mapping[str, Any]) -> str | None:
    """The dotted field path of one pydantic error (`error["loc"]`), without the `body` root
    FastAPI adds; None for an error on the whole value."""
    return ".".join(str(part) for part in error.get("loc", ()) if part != "body") or None
