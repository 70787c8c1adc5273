"""Every instant the API takes lies within one documented range; the extremes of it round-trip."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

Client = TestClient[Litestar]

LOG = {"channel": "log", "recipient": "ops", "body": "disk almost full"}
RULE = {"name": "nightly", "schedule": "@daily", "channel": "log", "recipients": ["ops"], "body": "b"}

OUTSIDE = [
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "1969-12-31T23:59:59.999999Z",
    "9001-01-01T00:00:00Z",
    "1970-01-01T00:00:00+00:01",  # 1969 in UTC
    "9000-12-31T23:59:59-00:01",  # 9001 in UTC
]
EARLIEST, LATEST = "1970-01-01T00:00:00Z", "9000-12-31T23:59:59.999999Z"


def refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [field], body
    assert "1970-01-01T00:00:00Z" in body["detail"], body


@pytest.mark.parametrize("instant", OUTSIDE)
def test_send_at_outside_the_range_is_refused(client: Client, instant: str) -> None:
    refused(client.post("/notify", json={**LOG, "send_at": instant}), "send_at")


@pytest.mark.parametrize("instant", OUTSIDE[:2])
def test_a_batch_item_outside_the_range_is_refused_alone(client: Client, instant: str) -> None:
    results = client.post("/notify/batch", json={"notifications": [LOG, {**LOG, "send_at": instant}]}).json()["results"]
    assert [r["status"] for r in results] == [202, 422]
    assert [e["field"] for e in results[1]["error"]["errors"]] == ["notifications[1].send_at"]


@pytest.mark.parametrize("instant", [EARLIEST, LATEST])
def test_the_extremes_of_the_range_come_back_in_utc(client: Client, instant: str) -> None:
    created = client.post("/notify", json={**LOG, "send_at": instant})
    assert created.status_code == 202, created.text
    shown = client.get(f"/notifications/{created.json()['id']}").json()
    assert shown["send_at"] == instant
    assert shown["send_at"] == created.json()["send_at"]


@pytest.mark.parametrize("field", ["starts_at", "ends_at"])
@pytest.mark.parametrize("instant", OUTSIDE[:2])
def test_rule_times_outside_the_range_are_refused(client: Client, field: str, instant: str) -> None:
    refused(client.post("/rules", json={**RULE, field: instant}), field)
    rule = client.post("/rules", json=RULE).json()
    refused(client.patch(f"/rules/{rule['id']}", json={field: instant}), field)


def test_rule_times_at_the_extremes_come_back_in_utc(client: Client) -> None:
    created = client.post("/rules", json={**RULE, "starts_at": EARLIEST, "ends_at": LATEST})
    assert created.status_code == 201, created.text
    shown = client.get(f"/rules/{created.json()['id']}").json()
    assert (shown["starts_at"], shown["ends_at"]) == (EARLIEST, LATEST)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/notifications", "created_after"),
        ("/notifications", "created_before"),
        ("/dead-letters", "failed_after"),
        ("/dead-letters", "failed_before"),
    ],
)
@pytest.mark.parametrize("instant", OUTSIDE[:2])
def test_list_filters_outside_the_range_are_refused(client: Client, path: str, field: str, instant: str) -> None:
    refused(client.get(path, params={field: instant}), field)
    assert client.get(path, params={field: LATEST}).status_code == 200


@pytest.mark.parametrize("field", ["failed_after", "failed_before"])
@pytest.mark.parametrize("instant", OUTSIDE[:2])
def test_replay_filters_outside_the_range_are_refused(client: Client, field: str, instant: str) -> None:
    refused(client.post("/dead-letters/replay", json={field: instant}), field)


def test_a_preview_after_outside_the_range_is_refused(client: Client) -> None:
    rule = client.post("/rules", json=RULE).json()
    refused(client.get(f"/rules/{rule['id']}/preview", params={"after": OUTSIDE[0]}), "after")


@pytest.mark.parametrize("path", ["/notifications", "/dead-letters", "/rules"])
def test_a_forged_cursor_outside_the_range_is_refused(client: Client, path: str) -> None:
    raw = msgspec.json.encode(["0001-01-01T00:00:00Z", str(uuid.uuid4())])
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = client.get(path, params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["cursor"]
