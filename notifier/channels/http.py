"""What the HTTP channels (``sms``, ``webhook``) share: one bounded client and one error policy."""

from __future__ import annotations

import re
import unicodedata

import httpx

from notifier.channels.base import RETRYABLE_HTTP_STATUSES, parse_retry_after
from notifier.errors import DeliveryTimeout, PermanentDeliveryError, TransientDeliveryError

MAX_ANSWER_BYTES = 65_536
"""The most of a provider's answer that is read; the rest is never downloaded."""
MAX_ANSWER_TEXT = 200
"""The most of a failed answer's text that is kept in the reason (``last_error``)."""

_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})
"""Headers that describe the answer as it came over the wire, not the decoded bytes kept."""


def client(timeout: float) -> httpx.Client:
    """A pooled, thread-safe client that never follows redirects and bounds every phase."""
    return httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)


def excerpt(text: str, limit: int = MAX_ANSWER_TEXT) -> str:
    """``text`` as one line of at most ``limit`` characters: controls and line breaks become spaces."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in text)
    cleaned = re.sub(r"\s+", " ", cleaned).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def post(http: httpx.Client, url: str, **kwargs: object) -> httpx.Response:
    """POST, turning transport failures and non-2xx answers into delivery errors.

    At most :data:`MAX_ANSWER_BYTES` of the answer are read; the response returned holds them.
    """
    try:
        with http.stream("POST", url, **kwargs) as streamed:  # type: ignore[arg-type]
            content = bytearray()
            for chunk in streamed.iter_bytes():
                content += chunk
                if len(content) >= MAX_ANSWER_BYTES:
                    break
        headers = [(k, v) for k, v in streamed.headers.multi_items() if k.lower() not in _FRAMING]
        response = httpx.Response(streamed.status_code, headers=headers, content=bytes(content[:MAX_ANSWER_BYTES]))
    except httpx.TimeoutException as exc:
        raise DeliveryTimeout(f"timeout: POST {url}: {type(exc).__name__}") from None
    except httpx.InvalidURL as exc:
        raise PermanentDeliveryError(f"POST {url}: not a valid URL: {exc}") from None
    except httpx.HTTPError as exc:
        raise TransientDeliveryError(f"POST {url}: {type(exc).__name__}: {exc}") from None
    if response.is_success:
        return response
    reason = f"HTTP {response.status_code} from {url}: {excerpt(response.text)}"
    if response.status_code in RETRYABLE_HTTP_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise TransientDeliveryError(reason, retry_after=retry_after)
    raise PermanentDeliveryError(reason)
