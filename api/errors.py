"""The one place where labelq's error types become HTTP statuses and JSON bodies."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from labelq.errors import Conflict, InputError, LabelqError, NotFound, SpecError, field_of


class Unauthorized(LabelqError):
    """Missing or wrong API key."""


STATUS: dict[type[LabelqError], int] = {
    SpecError: 422,
    InputError: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
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
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
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
