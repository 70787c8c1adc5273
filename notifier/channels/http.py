"""What the HTTP channels (``sms``, ``webhook``) share: one bounded client and one error policy."""

from __future__ import annotations

import httpx

from notifier.channels.base import RETRYABLE_HTTP_STATUSES, parse_retry_after
from notifier.errors import DeliveryTimeout, PermanentDeliveryError, TransientDeliveryError


def client(timeout: float) -> httpx.Client:
    """A pooled, thread-safe client that never follows redirects and bounds every phase."""
    return httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)


def post(http: httpx.Client, url: str, **kwargs: object) -> httpx.Response:
    """POST, turning transport failures and non-2xx answers into delivery errors."""
    try:
        response = http.post(url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise DeliveryTimeout(f"timeout: POST {url}: {type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise TransientDeliveryError(f"POST {url}: {type(exc).__name__}: {exc}") from None
    if response.is_success:
        return response
    reason = f"HTTP {response.status_code} from {url}: {response.text[:500]}"
    if response.status_code in RETRYABLE_HTTP_STATUSES:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise TransientDeliveryError(reason, retry_after=retry_after)
    raise PermanentDeliveryError(reason)
