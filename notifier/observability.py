"""Logging: one JSON object per line on stderr, with whatever ``extra`` a call site passes."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str) -> None:
    """Replace the root handlers with one JSON handler; safe to call more than once."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per request is uvicorn's access log's job; httpx's own request lines add nothing.
    logging.getLogger("httpx").setLevel(logging.WARNING)
