"""What every request is checked for before its handler runs: a readable JSON body where one is
taken, and no query parameter the operation does not know."""

from __future__ import annotations

from datetime import datetime
from typing import Any, get_args

import msgspec
import msgspec.inspect
from litestar import Request
from litestar.exceptions import ClientException, SerializationException
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg

from notifier.errors import InvalidNotification

_RFC3339 = "must be an RFC 3339 date-time with a UTC offset (e.g. 2030-01-01T09:00:00Z)"
_QUERY_NAMES: dict[int, tuple[frozenset[str], frozenset[str]]] = {}


def _query_names(handler: HTTPRouteHandler) -> tuple[frozenset[str], frozenset[str]]:
    """The query parameters ``handler`` takes (a superset: every name in its signature counts),
    and those of them that are instants."""
    found = _QUERY_NAMES.get(id(handler))
    if found is None:
        names, instants = set(), set()
        for name, field in handler.parsed_fn_signature.parameters.items():
            kwarg = field.kwarg_definition
            query = kwarg.query if isinstance(kwarg, ParameterKwarg) and kwarg.query else name
            names.add(query)
            if datetime in (field.annotation, *get_args(field.annotation)):
                instants.add(query)
        found = _QUERY_NAMES[id(handler)] = (frozenset(names), frozenset(instants))
    return found


def _check_query(request: Request[Any, Any, Any], handler: HTTPRouteHandler) -> None:
    names, instants = _query_names(handler)
    for name in request.query_params:
        if name not in names:
            raise InvalidNotification(name, "is not a known query parameter")
        values = request.query_params.getall(name)
        if len(values) > 1:  # which one was meant is anyone's guess
            raise InvalidNotification(name, "must be given once")
        if name in instants:
            try:  # strict: an RFC 3339 date-time, never a number taken as Unix time
                msgspec.convert(values[0], datetime, strict=True)
            except msgspec.ValidationError:
                raise InvalidNotification(name, _RFC3339) from None


_BODY_INSTANTS: dict[int, frozenset[str]] = {}


def _is_instant(info: msgspec.inspect.Type) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_is_instant(t) for t in info.types)
    return isinstance(info, msgspec.inspect.DateTimeType)


def _body_instants(handler: HTTPRouteHandler) -> frozenset[str]:
    """The instant fields of the body ``handler`` takes (a struct's own fields)."""
    found = _BODY_INSTANTS.get(id(handler))
    if found is None:
        info = msgspec.inspect.type_info(handler.parsed_fn_signature.parameters["data"].annotation)
        fields = info.fields if isinstance(info, msgspec.inspect.StructType) else ()
        found = _BODY_INSTANTS[id(handler)] = frozenset(f.encode_name for f in fields if _is_instant(f.type))
    return found


async def check_request(request: Request[Any, Any, Any]) -> None:
    """Refuse, before the handler runs, what it would otherwise ignore or fail on.

    An unknown query parameter is a 422 naming it (a misspelt filter would otherwise list
    everything), and so is one given twice, or an instant that is not RFC 3339 text (in the query or
    the body). A handler
    that takes a body (``data``) gets a 400 for an empty one, and the body is decoded here so
    that bytes which are not UTF-8 are a 400 rather than an error escaping the JSON decoder; the
    decoded value is cached on the request for the handler.
    """
    handler = request.route_handler
    if request.query_params:
        _check_query(request, handler)
    if "data" not in handler.parsed_fn_signature.parameters:
        return
    if not (await request.body()).strip():
        raise ClientException("a JSON body is required")
    try:
        body = await request.json()
    except UnicodeDecodeError:
        raise ClientException("the body is not valid UTF-8") from None
    except SerializationException as exc:
        raise ClientException(str(exc)) from None
    if isinstance(body, dict):  # strict where the handler's conversion is not: a number is no instant
        for name in _body_instants(handler):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise InvalidNotification(name, _RFC3339)
