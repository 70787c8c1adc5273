"""The one place that turns errors into HTTP: RFC 9457 ``application/problem+json`` bodies.

Every problem has ``type``, ``title``, ``status`` and ``detail``; input problems add ``errors``,
a list of ``{"field", "message"}`` naming each offending field.
"""

from __future__ import annotations

import enum
import logging
import re
from typing import Any, NamedTuple

import asyncpg
import msgspec
import redis
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from notifier.domain import Channel, Misfire, Status
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

REFUSED_VALUE = (asyncpg.DataError, asyncpg.exceptions._base.DataError)
"""PostgreSQL (or asyncpg, encoding an argument) refusing a value: the client's input, a 422."""


class ProblemType(enum.StrEnum):
    """Every problem ``type`` the API answers with: a fixed set, listed in the README.

    The value is the last part of the URI ``urn:notifier:problem:<value>``.
    """

    MALFORMED_REQUEST = "malformed-request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not-found"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    IDEMPOTENCY_CONFLICT = "idempotency-conflict"
    INVALID_TRANSITION = "invalid-transition"
    BODY_TOO_LARGE = "body-too-large"
    INVALID_REQUEST = "invalid-request"
    INTERNAL_ERROR = "internal-error"
    SERVICE_UNAVAILABLE = "service-unavailable"
    HTTP_ERROR = "http-error"

    @property
    def uri(self) -> str:
        return f"urn:notifier:problem:{self.value}"

    @property
    def spec(self) -> ProblemSpec:
        return PROBLEM_TYPES[self]


class ProblemSpec(NamedTuple):
    status: int | None
    """The status it comes with; ``None``: whichever the HTTP error has."""
    title: str
    meaning: str


PROBLEM_TYPES: dict[ProblemType, ProblemSpec] = {
    ProblemType.MALFORMED_REQUEST: ProblemSpec(400, "Malformed request", "the body is empty, not UTF-8 or not JSON"),
    ProblemType.UNAUTHORIZED: ProblemSpec(
        401, "Unauthorized", "no `Authorization: Bearer <key>` with a configured key"
    ),
    ProblemType.NOT_FOUND: ProblemSpec(404, "Not found", "no such route, notification, rule or event"),
    ProblemType.METHOD_NOT_ALLOWED: ProblemSpec(405, "Method not allowed", "the route does not take this method"),
    ProblemType.IDEMPOTENCY_CONFLICT: ProblemSpec(
        409, "Conflict", "the idempotency key was used with a different request"
    ),
    ProblemType.INVALID_TRANSITION: ProblemSpec(409, "Conflict", "the notification's status does not allow the change"),
    ProblemType.BODY_TOO_LARGE: ProblemSpec(
        413, "Request body too large", "the body exceeds `NOTIFIER_API_MAX_BODY_SIZE`"
    ),
    ProblemType.INVALID_REQUEST: ProblemSpec(422, "Invalid request", "a field is invalid; `errors` names each one"),
    ProblemType.INTERNAL_ERROR: ProblemSpec(500, "Internal server error", "a bug: the log has the details"),
    ProblemType.SERVICE_UNAVAILABLE: ProblemSpec(
        503, "Service unavailable", "PostgreSQL or Redis is unreachable; see `Retry-After`"
    ),
    ProblemType.HTTP_ERROR: ProblemSpec(None, "HTTP error", "any other HTTP error; `status` says which"),
}
"""Each problem type's status, title and meaning (the README's table)."""

_BY_STATUS = {
    400: ProblemType.MALFORMED_REQUEST,
    401: ProblemType.UNAUTHORIZED,
    404: ProblemType.NOT_FOUND,
    405: ProblemType.METHOD_NOT_ALLOWED,
    413: ProblemType.BODY_TOO_LARGE,
    422: ProblemType.INVALID_REQUEST,
    500: ProblemType.INTERNAL_ERROR,
    503: ProblemType.SERVICE_UNAVAILABLE,
}

_CHOICES: dict[str, type[enum.StrEnum]] = {"channel": Channel, "status": Status, "misfire": Misfire}
"""Fields whose valid values an error lists, by the field's last name."""


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem; ``type`` is one of the URIs :class:`ProblemType` lists."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = []


def problem(
    request: Request[Any, Any, Any],
    status: int,
    kind: ProblemType,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    body = Problem(
        type=kind.uri,
        title=kind.spec.title,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors or [],
    )
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _invalid_problem(errors: list[FieldError]) -> Problem:
    return Problem(
        type=ProblemType.INVALID_REQUEST.uri,
        title=ProblemType.INVALID_REQUEST.spec.title,
        status=422,
        detail="; ".join(f"{e.field}: {e.message}" for e in errors),
        errors=errors,
    )


_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_ENUM = re.compile(r"^Invalid enum value (.*)$")


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key and key != "data" else sub


def _field_error(key: str, message: str) -> FieldError:
    """One msgspec complaint about ``key`` (``data`` is the body) as a field and a readable message."""
    field, message = _locate(key, message)
    return FieldError(field=field or "body", message=message)


def _locate(key: str, message: str) -> tuple[str, str]:
    """The field a msgspec complaint is about (``""``: the value as a whole) and a readable message."""
    if (missing := _MISSING.search(message)) is not None:
        key, message = _join(key, missing.group(1)), "is required"
    elif (at := _AT.search(message)) is not None:
        key, message = _join(key, at.group(1)), message[: at.start()]
    if (unknown := _UNKNOWN.search(message)) is not None:
        key, message = unknown.group(1), "is not a known field"
    leaf = re.sub(r"\[\d+\]$", "", key.rpartition(".")[2])
    if (bad := _ENUM.match(message)) is not None and leaf in _CHOICES:
        message = f"{bad.group(1)} is not one of: {', '.join(_CHOICES[leaf])}"
    return (key if key != "data" else ""), message


def _field_errors(extra: Any) -> list[FieldError]:
    errors = []
    for item in extra if isinstance(extra, list) else []:
        if isinstance(item, dict):
            errors.append(_field_error(str(item.get("key") or ""), str(item.get("message", "invalid"))))
    return errors


def item_problem(exc: Exception, *, field_prefix: str = "") -> Problem:
    """The problem body for one item of a batch (no request: ``instance`` is left out)."""
    if isinstance(exc, msgspec.ValidationError):
        key, message = _locate("", str(exc))
        field = f"{field_prefix}{key}" if key else field_prefix.rstrip(".")
        return _invalid_problem([FieldError(field, message)])
    if isinstance(exc, InvalidNotification):
        return _invalid_problem([FieldError(f"{field_prefix}{exc.field}", exc.reason)])
    if isinstance(exc, IdempotencyConflict):
        kind = ProblemType.IDEMPOTENCY_CONFLICT
        return Problem(type=kind.uri, title=kind.spec.title, status=409, detail=str(exc))
    raise exc


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    errors = _field_errors(exc.extra)
    if not errors:  # nothing to point at but the body
        return problem(request, 400, ProblemType.MALFORMED_REQUEST, "the request could not be read")
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return problem(request, 422, ProblemType.INVALID_REQUEST, detail, errors)


def _invalid(request: Request[Any, Any, Any], exc: InvalidNotification) -> Response[Problem]:
    return problem(request, 422, ProblemType.INVALID_REQUEST, str(exc), [FieldError(exc.field, exc.reason)])


def _not_found(request: Request[Any, Any, Any], exc: NotFound) -> Response[Problem]:
    return problem(request, 404, ProblemType.NOT_FOUND, str(exc))


def _conflict(request: Request[Any, Any, Any], exc: IdempotencyConflict | InvalidTransition) -> Response[Problem]:
    if isinstance(exc, IdempotencyConflict):
        return problem(request, 409, ProblemType.IDEMPOTENCY_CONFLICT, str(exc))
    return problem(request, 409, ProblemType.INVALID_TRANSITION, str(exc))


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.warning("backing service unavailable", extra={"path": request.url.path, "error": repr(exc)})
    return problem(
        request,
        503,
        ProblemType.SERVICE_UNAVAILABLE,
        "a backing service (PostgreSQL or Redis) cannot be reached; try again shortly",
        headers={"Retry-After": "5"},
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.error("unhandled error", extra={"path": request.url.path}, exc_info=exc)
    return problem(request, 500, ProblemType.INTERNAL_ERROR, "an unexpected error occurred")


def _too_large(request: Request[Any, Any, Any]) -> Response[Problem]:
    handler = request.scope.get("route_handler")
    limit = handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
    size = f" of {limit} bytes" if limit else ""
    return problem(
        request,
        413,
        ProblemType.BODY_TOO_LARGE,
        f"the request body exceeds the limit{size} (NOTIFIER_API_MAX_BODY_SIZE)",
    )


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if isinstance(exc, ValidationException):
        return _validation(request, exc)
    status = exc.status_code
    if status >= 500 and status != 503:
        return _internal(request, exc)
    if status == 413:
        return _too_large(request)
    return problem(request, status, _BY_STATUS.get(status, ProblemType.HTTP_ERROR), exc.detail, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    if isinstance(exc, REFUSED_VALUE):
        # Validation should have caught it. The database's text stays in the log: it can quote the
        # input, the schema or the server's settings, none of which is the client's business.
        logger.warning("database refused a value", extra={"path": request.url.path, "error": repr(exc)})
        column = getattr(exc, "column_name", None)
        errors = [FieldError(str(column), "was refused by the database")] if column else None
        return problem(
            request,
            422,
            ProblemType.INVALID_REQUEST,
            "a value in the request cannot be stored (a character or a range the database does not accept)",
            errors,
        )
    if isinstance(exc, UNAVAILABLE):
        return _unavailable(request, exc)
    if isinstance(exc, RecursionError):
        return problem(request, 400, ProblemType.MALFORMED_REQUEST, "the JSON is nested too deeply")
    return _internal(request, exc)


_RESPONSE_DESCRIPTIONS = {
    400: "The body is empty, not UTF-8 or not JSON.",
    401: "No valid API key (`Authorization: Bearer <key>`).",
    404: "No such notification, rule or event.",
    409: "An idempotency key used with a different request, or a status that does not allow the change.",
    413: "The body exceeds `NOTIFIER_API_MAX_BODY_SIZE`.",
    422: "A field or parameter is invalid; `errors` names each one.",
    503: "PostgreSQL or Redis is unreachable; retry after `Retry-After` seconds.",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem+json responses an operation declares in the OpenAPI document. Every operation
    behind an API key can answer 401 and 503, every one that takes parameters 400, and every one
    422 (an unknown query parameter is refused on any route)."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=_RESPONSE_DESCRIPTIONS[status],
            generate_examples=False,
        )
        for status in sorted({400, 401, 422, 503, *statuses})
    }


HANDLERS: ExceptionHandlersMap = {
    InvalidNotification: _invalid,
    NotFound: _not_found,
    IdempotencyConflict: _conflict,
    InvalidTransition: _conflict,
    HTTPException: _http,
    Exception: _unexpected,
}
