"""The one place where labelq's error types become HTTP statuses and JSON bodies."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from labelq.errors import Conflict, InputError, LabelqError, NotFound, SpecError


class Unauthorized(LabelqError):
    """Missing or wrong API key."""


class Unavailable(LabelqError):
    """A dependency (database, broker) cannot be reached."""


STATUS: dict[type[LabelqError], int] = {
    SpecError: 422,
    InputError: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    Unavailable: 503,
}


def status_of(exc: LabelqError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 400


def install(app: FastAPI) -> None:
    @app.exception_handler(LabelqError)
    async def _labelq_error(_: Request, exc: LabelqError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse(exc.to_dict(), status_code=status_of(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"] if p != "body")
            problems.append({"field": field, "error": err["msg"]})
        first = problems[0] if problems else {"field": None, "error": "invalid request"}
        return JSONResponse(
            {"error": first["error"], "field": first["field"], "problems": problems},
            status_code=422,
        )
