"""Events: something happened (``order.shipped``); event rules turn it into notifications."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    type: str
    data: dict[str, Any]
    idempotency_key: str | None
    created_at: datetime


class NewEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    data: dict[str, Any] = {}
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None

    def fingerprint(self) -> str:
        """A digest of everything but the key: the same key with another fingerprint is a conflict."""
        return hashlib.sha256(msgspec.json.encode([self.type, self.data], order="sorted")).hexdigest()
