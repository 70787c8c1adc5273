"""What a careless or hostile client sends is a clear 4xx problem naming the field, never a 500."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from notifier import settings as settings_module
from notifier.api.errors import ProblemType
from notifier.domain import Channel
from notifier.settings import Settings
from tests.conftest import notifier_env
from tests.integration.conftest import make_app
from tests.integration.test_api import LOG, fields, problem

Client = TestClient[Litestar]

RULE = {"name": "shipped", "channel": "log", "recipients": ["ops"], "body": "order shipped", "event": "order.shipped"}
SEPARATORS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
"""Every line boundary ``str.splitlines`` knows."""
KNOWN_TYPES = {kind.uri for kind in ProblemType}


@pytest.fixture
def smtp_settings(database_url: str, redis_url: str, redis_namespace: str) -> Settings:
    """Email configured (the API never connects to the server), so a good email is a 202."""
    env = notifier_env(
        database_url, redis_url, redis_namespace, NOTIFIER_AUTH_DISABLED="true", NOTIFIER_SMTP_URL="smtp://127.0.0.1:1"
    )
    return settings_module.load(env)


@pytest.fixture
def mail_client(smtp_settings: Settings) -> Iterator[Client]:
    with TestClient(make_app(smtp_settings)) as client:
        yield client


@pytest.fixture
def rule_id(client: Client) -> str:
    response = client.post("/rules", json=RULE)
    assert response.status_code == 201, response.text
    rule: str = response.json()["id"]
    return rule


def body_routes(rule_id: str) -> list[tuple[str, str]]:
    return [
        ("POST", "/notify"),
        ("POST", "/notify/batch"),
        ("POST", "/rules"),
        ("PATCH", f"/rules/{rule_id}"),
        ("POST", "/events"),
        ("POST", "/dead-letters/replay"),
    ]


def known_problem(response: Any, status: int) -> dict[str, Any]:
    """``problem`` that also checks the type is one of the documented set, with its title."""
    body = problem(response, status)
    assert body["type"] in KNOWN_TYPES, body
    assert body["title"] == ProblemType(body["type"].rpartition(":")[2]).spec.title
    return body


class TestUndecodableBodies:
    def test_invalid_utf8_is_a_400_on_every_route(
        self, client: Client, rule_id: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        raw = b'{"channel":"log","recipient":"ops","body":"\xff"}'
        with caplog.at_level(logging.ERROR):
            for method, path in body_routes(rule_id):
                response = client.request(method, path, content=raw, headers={"content-type": "application/json"})
                body = known_problem(response, 400)
                assert body["type"] == ProblemType.MALFORMED_REQUEST.uri
                assert body["detail"] == "the body is not valid UTF-8", (method, path)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

    @pytest.mark.parametrize("raw", [b"", b"  \n"])
    def test_an_empty_body_is_a_400_asking_for_one(self, client: Client, rule_id: str, raw: bytes) -> None:
        for method, path in body_routes(rule_id):
            response = client.request(method, path, content=raw, headers={"content-type": "application/json"})
            body = known_problem(response, 400)
            assert body["detail"] == "a JSON body is required", (method, path)

    def test_malformed_json_keeps_the_decoders_reason_under_a_fixed_type(self, client: Client) -> None:
        response = client.post("/notify", content=b"{nope", headers={"content-type": "application/json"})
        body = known_problem(response, 400)
        assert body["type"] == "urn:notifier:problem:malformed-request"
        assert "malformed" in body["detail"].lower()

    def test_a_null_body_names_the_body(self, client: Client) -> None:
        response = client.post("/notify", content=b"null", headers={"content-type": "application/json"})
        assert fields(known_problem(response, 422)) == ["body"]


def test_an_unknown_query_parameter_is_a_422_naming_it(client: Client) -> None:
    """A misspelt filter would otherwise list everything."""
    assert fields(known_problem(client.get("/notifications", params={"stauts": "failed"}), 422)) == ["stauts"]
    assert fields(known_problem(client.get("/rules", params={"enabled": "true", "x": "1"}), 422)) == ["x"]
    assert client.get("/notifications", params={"status": "failed", "limit": 5}).status_code == 200


def test_a_query_parameter_given_twice_or_an_instant_as_a_number_is_a_422(client: Client) -> None:
    """Schemathesis found both answered 200: the last of repeated values was taken, and a number
    read as Unix time."""
    twice = [("failed_before", "2030-01-01T00:00:00Z"), ("failed_before", "1.5")]
    assert fields(known_problem(client.get("/dead-letters", params=twice), 422)) == ["failed_before"]
    for number in ("0", "1.1754943508222875e-38", "1700000000"):
        response = client.get("/notifications", params={"created_after": number})
        assert fields(known_problem(response, 422)) == ["created_after"]
    assert client.get("/notifications", params={"created_after": "2030-01-01T00:00:00+01:00"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/notify", {"channel": "log", "recipient": "ops", "body": "b", "send_at": 0}, "send_at"),
        ("/notify", {"channel": "log", "recipient": "ops", "body": "b", "send_at": 1.9e9}, "send_at"),
        ("/dead-letters/replay", {"failed_after": 0}, "failed_after"),
    ],
)
def test_an_instant_in_a_body_as_a_number_is_a_422(
    client: Client, path: str, body: dict[str, object], field: str
) -> None:
    """The handler's conversion would take a number as Unix time; the API promises RFC 3339."""
    assert fields(known_problem(client.post(path, json=body), 422)) == [field]


class TestSubjects:
    @pytest.mark.parametrize("separator", SEPARATORS, ids=[hex(ord(s[-1])) for s in SEPARATORS])
    def test_an_email_subject_with_a_line_separator_is_refused(self, mail_client: Client, separator: str) -> None:
        email = {"channel": "email", "recipient": "ada@example.com", "body": "b"}
        assert mail_client.post("/notify", json={**email, "subject": "one line"}).status_code == 202
        response = mail_client.post("/notify", json={**email, "subject": f"two{separator}lines"})
        body = known_problem(response, 422)
        assert fields(body) == ["subject"]
        assert "single line" in body["detail"]

    @pytest.mark.parametrize("separator", ["\n", "\x85", "\u2028"], ids=["lf", "nel", "ls"])
    def test_a_rule_subject_with_a_line_separator_is_refused(self, client: Client, separator: str) -> None:
        created = client.post("/rules", json={**RULE, "subject": f"order{separator}{{{{ data.id }}}}"})
        assert fields(known_problem(created, 422)) == ["subject"]

    def test_a_rule_subject_that_renders_a_separator_fails_that_notification(self, client: Client) -> None:
        assert client.post("/rules", json={**RULE, "subject": "order {{ data.id }}"}).status_code == 201
        published = client.post("/events", json={"type": "order.shipped", "data": {"id": "42\u2028Bcc: x"}})
        assert published.status_code == 202, published.text
        [made] = published.json()["notifications"]
        assert made["status"] == "failed"
        assert "subject" in made["last_error"]
        assert "single line" in made["last_error"]
        fine = client.post("/events", json={"type": "order.shipped", "data": {"id": "43"}}).json()
        assert [n["status"] for n in fine["notifications"]] == ["queued"]


class TestRuleText:
    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"metadata": {"team": "o\u0000ps"}}, "metadata"),
            ({"metadata": {"k\u0000": "v"}}, "metadata"),
            ({"metadata": {"nested": [{"deep": "\u0000"}]}}, "metadata"),
            ({"name": "n\u0000"}, "name"),
            ({"body": "b\u0000"}, "body"),
            ({"subject": "s\u0000"}, "subject"),
            ({"recipients": ["o\u0000ps"]}, "recipients[0]"),
            ({"event": "order\u0000"}, "event"),
            ({"timezone": "UTC\u0000"}, "timezone"),
        ],
    )
    def test_nul_in_a_rule_is_a_422_naming_the_field(
        self, client: Client, rule_id: str, change: dict[str, Any], field: str
    ) -> None:
        created = client.post("/rules", json={**RULE, **change})
        body = known_problem(created, 422)
        assert fields(body) == [field]
        assert "NUL" in body["detail"]
        assert fields(known_problem(client.patch(f"/rules/{rule_id}", json=change), 422)) == [field]

    def test_nul_in_an_event_is_a_422_naming_the_field(self, client: Client) -> None:
        response = client.post("/events", json={"type": "order.shipped", "data": {"a": "\u0000"}})
        assert fields(known_problem(response, 422)) == ["data"]

    def test_a_value_the_database_refuses_is_a_422_without_its_text(
        self, client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        secret = 'invalid byte sequence for encoding "UTF8": 0x00 in relation "rules"'

        async def refuse(*args: object, **kwargs: object) -> None:
            raise asyncpg.CharacterNotInRepertoireError(secret)

        monkeypatch.setattr("notifier.store.rules.insert", refuse)
        with caplog.at_level(logging.WARNING, logger="notifier.api"):
            response = client.post("/rules", json=RULE)
        body = known_problem(response, 422)
        assert secret not in response.text
        assert "relation" not in response.text
        assert body["detail"].startswith("a value in the request cannot be stored")
        assert any(secret in str(getattr(r, "error", "")) for r in caplog.records)


class TestProblemTypes:
    def test_every_problem_the_app_answers_has_a_documented_type(self, client: Client) -> None:
        answers = [
            (client.post("/notify", content=b"{", headers={"content-type": "application/json"}), 400),
            (client.get(f"/notifications/{uuid.uuid4()}"), 404),
            (client.get("/no/such/route"), 404),
            (client.delete("/notify"), 405),
            (client.post("/notify", json={**LOG, "channel": "pigeon"}), 422),
            (client.get("/notifications", params={"limit": 0}), 422),
            (client.post(f"/notifications/{client.post('/notify', json=LOG).json()['id']}/retry"), 409),
            (client.post("/notify", content=b"{" + b" " * 2_000_000 + b"}"), 413),
        ]
        client.post("/notify", json={**LOG, "idempotency_key": "k"})
        answers.append((client.post("/notify", json={**LOG, "body": "other", "idempotency_key": "k"}), 409))
        for response, status in answers:
            known_problem(response, status)

    def test_413_names_the_limit_and_its_variable(self, client: Client, settings: Settings) -> None:
        payload = b'{"channel":"log","recipient":"ops","body":"' + b"x" * settings.api.max_body_size + b'"}'
        response = client.post("/notify", content=payload, headers={"content-type": "application/json"})
        body = known_problem(response, 413)
        assert str(settings.api.max_body_size) in body["detail"]
        assert "NOTIFIER_API_MAX_BODY_SIZE" in body["detail"]

    def test_an_unknown_channel_lists_the_valid_ones(self, client: Client) -> None:
        valid = ", ".join(Channel)
        body = known_problem(client.post("/notify", json={**LOG, "channel": "pigeon"}), 422)
        assert body["errors"] == [{"field": "channel", "message": f"'pigeon' is not one of: {valid}"}]
        assert body["detail"] == f"channel: 'pigeon' is not one of: {valid}"
        batch = client.post("/notify/batch", json={"notifications": [{**LOG, "channel": "pigeon"}]}).json()
        [item] = batch["results"]
        assert item["error"]["errors"] == [
            {"field": "notifications[0].channel", "message": f"'pigeon' is not one of: {valid}"}
        ]
        listed = known_problem(client.get("/notifications", params={"channel": "pigeon"}), 422)
        assert listed["errors"] == [{"field": "channel", "message": f"'pigeon' is not one of: {valid}"}]
        rule = known_problem(client.post("/rules", json={**RULE, "channel": "pigeon"}), 422)
        assert rule["errors"][0]["message"].endswith(valid)


class TestOpenApi:
    @pytest.fixture
    def schema(self, client: Client) -> dict[str, Any]:
        document: dict[str, Any] = client.get("/schema/openapi.json").json()
        return document

    @staticmethod
    def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for path, item in schema["paths"].items():
            for method, operation in item.items():
                if method in {"get", "post", "put", "patch", "delete"}:
                    yield path, method, operation

    def test_the_bearer_scheme_is_declared_and_health_is_public(self, schema: dict[str, Any]) -> None:
        assert schema["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from NOTIFIER_API_KEYS, as `Authorization: Bearer <key>`.",
        }
        assert schema["security"] == [{"bearer": []}]
        public = {path for path, _, op in self.operations(schema) if op.get("security") == [{}]}
        assert public == {"/healthz", "/readyz", "/metrics"}

    def test_each_operation_declares_its_problems(self, schema: dict[str, Any]) -> None:
        problem_ref = {"$ref": "#/components/schemas/Problem"}
        for path, method, operation in self.operations(schema):
            if path in {"/healthz", "/readyz", "/metrics"}:
                continue
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            expected = {"400", "401", "422", "503"}  # 422: an unknown query parameter, on any route
            if "{" in path:
                expected.add("404")
            if "requestBody" in operation:
                expected.add("413")
            if (method, path) in {
                ("post", "/notify"),
                ("post", "/events"),
                ("post", "/notifications/{notification_id}/retry"),
                ("post", "/notifications/{notification_id}/cancel"),
            }:
                expected.add("409")
            errors = {code for code in responses if code[0] in "45"}
            assert errors == expected, where
            for code in errors:
                assert responses[code]["content"] == {"application/problem+json": {"schema": problem_ref}}, where
        assert set(schema["components"]["schemas"]["Problem"]["required"]) == {"type", "title", "status", "detail"}

    def test_an_unknown_query_parameter_is_an_answer_each_operation_declares(
        self, client: Client, schema: dict[str, Any]
    ) -> None:
        for path, method, operation in self.operations(schema):
            url = path.replace("{notification_id}", str(uuid.uuid4()))
            url = url.replace("{rule_id}", str(uuid.uuid4())).replace("{event_id}", str(uuid.uuid4()))
            response = client.request(method.upper(), url, params={"misspelt": "1"}, json={})
            assert response.status_code == 422, f"{method.upper()} {path}: {response.text}"
            assert str(response.status_code) in operation["responses"], f"{method.upper()} {path}"
