"""The one place where labelq's error types become HTTP statuses and JSON bodies."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from labelq.errors import (
    Conflict,
    Gone,
    InputError,
    LabelqError,
    NotFound,
    RateLimited,
    SpecError,
    TooLarge,
    field_of,
)


class Unauthorized(LabelqError):
    """Missing or wrong API key."""


class Forbidden(LabelqError):
    """A valid key without the scope the request needs."""


STATUS: dict[type[LabelqError], int] = {
    SpecError: 422,
    InputError: 422,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    Unauthorized: 401,
    Forbidden: 403,
    TooLarge: 413,
    RateLimited: 429,
}


class Problem(BaseModel):
    field: str | None
    error: str


class ErrorBody(BaseModel):
    """Every error answer: what is wrong, and where (the field or line) when known."""

    error: str
    field: str | None = None
    line: int | None = None
    problems: list[Problem] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in [
        (401, "Missing, unknown or revoked API key"),
        (403, "The key lacks the scope this needs"),
        (404, "Not found (or another tenant's)"),
        (409, "In conflict with the current state"),
        (413, "Over a configured limit"),
        (422, "Invalid input, naming the field or line"),
        (429, "Too many submissions; see Retry-After"),
    ]
}


def status_of(exc: LabelqError) -> int:
    for cls in type(exc).__mro__:
        if issubclass(cls, LabelqError) and cls in STATUS:
            return STATUS[cls]
    return 400


def input_error(exc: ValidationError, what: str) -> InputError:
    """A pydantic error on a request body as an `InputError` naming the first bad field."""
    errors = exc.errors()
    message = errors[0]["msg"] if errors else str(exc)
    return InputError(f"invalid {what}: {message}", field=field_of(errors[0]) if errors else None)


def install(app: FastAPI) -> None:
    @app.exception_handler(LabelqError)
    async def _labelq_error(_: Request, exc: LabelqError) -> JSONResponse:
        headers = None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse(exc.to_dict(), status_code=status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            problems.append({"field": field_of(err), "error": err["msg"]})
        first = problems[0] if problems else {"field": None, "error": "invalid request"}
        return JSONResponse(
            {"error": first["error"], "field": first["field"], "problems": problems},
            status_code=422,
        )


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413, by its
    Content-Length at once, or as soon as a streamed body passes the limit (the route sees
    `TooLarge` and keeps what it accepted before, saying so)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            error = TooLarge(f"request body over {self.limit} bytes (LABELQ_MAX_BODY_BYTES)")
            response = JSONResponse({**error.to_dict(), "field": "body"}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(
                        f"request body over {self.limit} bytes (LABELQ_MAX_BODY_BYTES)",
                        field="body",
                    )
            return message

        await self.app(scope, counted, send)


async def capped_body(request: Request, limit: int, setting: str, advice: str = "") -> bytes:
    """The whole body of a request whose body a route holds at once, refused (413, naming the
    setting) as soon as it passes `limit` bytes, whatever its Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body over {limit} bytes ({setting}){advice}", field="body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"body over {limit} bytes ({setting}){advice}", field="body")
    return bytes(body)
