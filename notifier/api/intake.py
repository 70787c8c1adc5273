"""What every request is checked for before its handler runs: a readable JSON body where one is
taken, and no query parameter the operation does not know."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException, SerializationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg

from notifier.errors import InvalidNotification

_QUERY_NAMES: dict[int, frozenset[str]] = {}


def _query_names(handler: HTTPRouteHandler) -> frozenset[str]:
    """The query parameters ``handler`` takes (a superset: every name in its signature counts)."""
    names = _QUERY_NAMES.get(id(handler))
    if names is None:
        names = frozenset(
            kwarg.query if isinstance(kwarg := field.kwarg_definition, ParameterKwarg) and kwarg.query else name
            for name, field in handler.parsed_fn_signature.parameters.items()
        )
        _QUERY_NAMES[id(handler)] = names
    return names


async def check_request(request: Request[Any, Any, Any]) -> None:
    """Refuse, before the handler runs, what it would otherwise ignore or fail on.

    An unknown query parameter is a 422 naming it (a misspelt filter would otherwise list
    everything). A handler that takes a body (``data``) gets a 400 for an empty one, and the body
    is decoded here so that bytes which are not UTF-8 are a 400 rather than an error escaping the
    JSON decoder; the decoded value is cached on the request for the handler.
    """
    handler = request.route_handler
    if request.query_params:
        for name in request.query_params:
            if name not in _query_names(handler):
                raise InvalidNotification(name, "is not a known query parameter")
    if "data" not in handler.parsed_fn_signature.parameters:
        return
    if not (await request.body()).strip():
        raise ClientException("a JSON body is required")
    try:
        await request.json()
    except UnicodeDecodeError:
        raise ClientException("the body is not valid UTF-8") from None
    except SerializationException as exc:
        raise ClientException(str(exc)) from None
