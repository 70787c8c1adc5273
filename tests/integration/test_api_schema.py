"""Schemathesis over the OpenAPI document, against the real app on real PostgreSQL and Redis.

Every operation gets about 25 generated requests, schema-valid and schema-breaking, from a fixed
derandomised Hypothesis run: no answer may be a server error, and every answer must be one the
document declares (status, content type, headers, body), with a problem ``type`` from the set.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import msgspec
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.checks import CheckContext
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from notifier.api.errors import PROBLEM_JSON, ProblemType
from notifier.settings import Settings
from tests.e2e.conftest import wait_until
from tests.integration.conftest import make_app

KEY = "schemathesis-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = 25
REJECTED = ["400", "401", "404", "405", "406", "409", "413", "415", "422"]
"""What a schema-breaking request may be answered with (a server error is caught by its own check)."""
KNOWN_TYPES = {kind.uri for kind in ProblemType}


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    """The API as ``notifier api`` serves it, over HTTP on a free port, with an API key."""
    api = msgspec.structs.replace(settings.api, keys=[KEY])
    config = uvicorn.Config(
        make_app(msgspec.structs.replace(settings, api=api)), host="127.0.0.1", port=0, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), timeout=30, what="the API to start")
    assert server.started, "the API did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def problem_type_is_documented(ctx: CheckContext, response: Any, case: Any) -> bool | None:
    """A problem+json answer carries one of the documented ``type`` URIs."""
    if response.headers.get("content-type", [""])[0].startswith(PROBLEM_JSON):
        kind = response.json().get("type")
        assert kind in KNOWN_TYPES, f"undocumented problem type {kind!r}"
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_keeps_to_the_document(base_url: str, mode: GenerationMode) -> None:
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": KEY}}},
            # A schema-breaking batch of over 1,000 items is also over the body limit: 413 refuses it too.
            "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json", headers=AUTH, config=config)
    failures: list[str] = []
    answered: dict[str, Counter[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @hypothesis.settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call_and_validate(
                base_url=base_url,
                additional_checks=[problem_type_is_documented],
                excluded_checks=[positive_data_acceptance],
            )
            answered.setdefault(case.operation.label, Counter())[response.status_code] += 1

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to break: no parameters
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    # The key was taken: every operation answered something other than 401, and valid requests succeeded.
    assert all(set(statuses) - {401} for statuses in answered.values()), answered
    if mode is GenerationMode.POSITIVE:
        assert any(200 <= status < 300 for statuses in answered.values() for status in statuses), answered
