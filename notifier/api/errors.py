"""The one place that turns errors into HTTP: RFC 9457 ``application/problem+json`` bodies.

Every problem has ``type``, ``title``, ``status`` and ``detail``; input problems add ``errors``,
a list of ``{"field", "message"}`` naming each offending field.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec
import redis
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from notifier.errors import (
    IdempotencyConflict,
    InvalidNotification,
    InvalidTransition,
    NotFound,
    ServiceUnavailable,
)

logger = logging.getLogger("notifier.api")

PROBLEM_JSON = "application/problem+json"

UNAVAILABLE = (
    ServiceUnavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.OperatorInterventionError,  # the server is shutting down or terminated the connection
    asyncpg.InternalClientError,  # what a connection killed mid-statement can surface as
    redis.ConnectionError,
    redis.TimeoutError,
)
"""Exceptions that mean a backing service is away: 503, never 500."""


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = []


def problem(
    request: Request[Any, Any, Any],
    status: int,
    name: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    body = Problem(
        type=f"urn:notifier:problem:{name}",
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors or [],
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`$")


def _field_errors(extra: Any) -> list[FieldError]:
    errors = []
    for item in extra if isinstance(extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid"))
        key = str(item.get("key") or "")
        missing = _MISSING.search(message)
        if missing:
            key = f"{key}.{missing.group(1)}" if key and key != "data" else missing.group(1)
            message = "is required"
        elif (at := _AT.search(message)) is not None:
            message = message[: at.start()]
            key = f"{key}.{at.group(1)}" if key and key != "data" else at.group(1)
        unknown = re.search(r"Object contains unknown field `([^`]+)`", message)
        if unknown:
            key, message = unknown.group(1), "is not a known field"
        errors.append(FieldError(field=key or "body", message=message))
    return errors


def item_problem(exc: Exception, *, field_prefix: str = "") -> Problem:
    """The problem body for one item of a batch (no request: ``instance`` is left out)."""
    if isinstance(exc, msgspec.ValidationError):
        message, _, where = str(exc).rpartition(" - at ")
        field = where.strip("`").removeprefix("$.") if where else ""
        missing = _MISSING.search(str(exc))
        unknown = re.search(r"Object contains unknown field `([^`]+)`", str(exc))
        if missing:
            field, message = missing.group(1), "is required"
        elif unknown:
            field, message = unknown.group(1), "is not a known field"
        errors = [FieldError(f"{field_prefix}{field}" if field else field_prefix.rstrip("."), message or str(exc))]
        return Problem(
            type="urn:notifier:problem:invalid-request",
            title="Invalid request",
            status=422,
            detail="; ".join(f"{e.field}: {e.message}" for e in errors),
            errors=errors,
        )
    if isinstance(exc, InvalidNotification):
        field = f"{field_prefix}{exc.field}"
        return Problem(
            type="urn:notifier:problem:invalid-request",
            title="Invalid request",
            status=422,
            detail=f"{field}: {exc.reason}",
            errors=[FieldError(field, exc.reason)],
        )
    if isinstance(exc, IdempotencyConflict):
        return Problem(type="urn:notifier:problem:idempotency-conflict", title="Conflict", status=409, detail=str(exc))
    raise exc


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    errors = _field_errors(exc.extra)
    if not errors:  # malformed JSON or an undecodable body: nothing to point at but the body
        return problem(request, 400, "malformed-request", "Malformed request", exc.detail)
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return problem(request, 422, "invalid-request", "Invalid request", detail, errors)


def _invalid(request: Request[Any, Any, Any], exc: InvalidNotification) -> Response[Problem]:
    return problem(request, 422, "invalid-request", "Invalid request", str(exc), [FieldError(exc.field, exc.reason)])


def _not_found(request: Request[Any, Any, Any], exc: NotFound) -> Response[Problem]:
    return problem(request, 404, "not-found", "Not found", str(exc))


def _conflict(request: Request[Any, Any, Any], exc: IdempotencyConflict | InvalidTransition) -> Response[Problem]:
    name = "idempotency-conflict" if isinstance(exc, IdempotencyConflict) else "invalid-transition"
    return problem(request, 409, name, "Conflict", str(exc))


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.warning("backing service unavailable", extra={"path": request.url.path, "error": repr(exc)})
    return problem(
        request,
        503,
        "service-unavailable",
        "Service unavailable",
        "a backing service (PostgreSQL or Redis) cannot be reached; try again shortly",
        headers={"Retry-After": "5"},
    )


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if isinstance(exc, ValidationException):
        return _validation(request, exc)
    title = exc.detail if exc.status_code != 500 else "Internal server error"
    name = re.sub(r"[^a-z0-9]+", "-", str(title).lower()).strip("-") or "error"
    return problem(request, exc.status_code, name, title, exc.detail, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    if isinstance(exc, UNAVAILABLE):
        return _unavailable(request, exc)
    if isinstance(exc, RecursionError):
        return problem(request, 400, "malformed-request", "Malformed request", "the JSON is nested too deeply")
    if isinstance(exc, asyncpg.DataError):
        # Validation should have caught it; the database refusing a value is still the client's input.
        logger.warning("database refused a value", extra={"path": request.url.path, "error": repr(exc)})
        return problem(request, 422, "invalid-request", "Invalid request", f"a value was refused: {exc}")
    logger.exception("unhandled error", extra={"path": request.url.path})
    return problem(request, 500, "internal-error", "Internal server error", "an unexpected error occurred")


HANDLERS: ExceptionHandlersMap = {
    InvalidNotification: _invalid,
    NotFound: _not_found,
    IdempotencyConflict: _conflict,
    InvalidTransition: _conflict,
    HTTPException: _http,
    Exception: _unexpected,
}
