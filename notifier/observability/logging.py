"""Logging: one JSON object per line on stderr, with whatever ``extra`` a call site passes, and
the trace and delivery a line was written in (:class:`Context`)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec

from notifier.observability import tracing

# The attributes every LogRecord has; anything else on a record came from a call's ``extra``
# (but uvicorn's ``color_message``, its message again with terminal colours).
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

_encode = msgspec.json.Encoder(enc_hook=str).encode


class JsonLines(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra, "exc_info"?}`` as one line of JSON.

    The log channel writes a line per notification, so this is on the delivery path: msgspec
    encodes a line in a few microseconds, where the json-module formatters took ten times that.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return _encode(line).decode()


_delivery: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("notifier_delivery", default=None)


@contextlib.contextmanager
def delivery(notification_id: str, attempt: int) -> Iterator[None]:
    """Every line logged in the block (in this thread or task) carries ``notification_id`` and ``attempt``."""
    token = _delivery.set((notification_id, attempt))
    try:
        yield
    finally:
        _delivery.reset(token)


class Context(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (while a span is recording) and, during a delivery,
    ``notification_id`` and ``attempt`` to every record; what a call's ``extra`` set stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _delivery.get()
        if current is not None:
            if "notification_id" not in record.__dict__:
                record.notification_id = current[0]
            if "attempt" not in record.__dict__:
                record.attempt = current[1]
        found = tracing.ids()
        if found is not None:
            record.trace_id, record.span_id = found
        return True


def configure_logging(level: str) -> None:
    """Replace the root handlers with one JSON handler; safe to call more than once."""
    # No record needs the calling frame, thread or process names; finding them costs every call.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    handler.addFilter(Context())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per request is uvicorn's access log's job; httpx's own request lines add nothing.
    logging.getLogger("httpx").setLevel(logging.WARNING)
