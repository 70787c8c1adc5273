"""Reading JSON request bodies: an empty or undecodable body is the client's 400, never a 500."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException, SerializationException


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """Before a handler that takes a body (``data``): refuse an empty one, and decode it here so
    that bytes which are not UTF-8 are a 400 rather than an error escaping the JSON decoder.

    The decoded value is cached on the request; the handler's own decoding reuses it.
    """
    if "data" not in request.route_handler.parsed_fn_signature.parameters:
        return
    if not (await request.body()).strip():
        raise ClientException("a JSON body is required")
    try:
        await request.json()
    except UnicodeDecodeError:
        raise ClientException("the body is not valid UTF-8") from None
    except SerializationException as exc:
        raise ClientException(str(exc)) from None
