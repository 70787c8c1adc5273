from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from notifier import settings
from notifier.errors import ConfigurationError

BASE = {"NOTIFIER_DATABASE_URL": "postgresql://db/notifier", "NOTIFIER_REDIS_URL": "redis://cache:6379/0"}


def test_defaults_fill_everything_but_the_two_urls() -> None:
    loaded = settings.load(BASE)
    assert loaded.database.url == "postgresql://db/notifier"
    assert loaded.api.keys == []
    assert loaded.retry.max_attempts == 5


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "NOTIFIER_DATABASE_URL"),
        ({"NOTIFIER_DATABASE_URL": "postgresql://x"}, "NOTIFIER_REDIS_URL"),
        ({**BASE, "NOTIFIER_DATABASE_URL": "mysql://x"}, "NOTIFIER_DATABASE_URL"),
        ({**BASE, "NOTIFIER_API_PORT": "eighty"}, "NOTIFIER_API_PORT"),
        ({**BASE, "NOTIFIER_RETRY_MAX_ATTEMPTS": "0"}, "NOTIFIER_RETRY_MAX_ATTEMPTS"),
        ({**BASE, "NOTIFIER_AUTH_DISABLED": "perhaps"}, "NOTIFIER_AUTH_DISABLED"),
        ({**BASE, "NOTIFIER_SMTP_URL": "http://mail"}, "NOTIFIER_SMTP_URL"),
        ({**BASE, "NOTIFIER_SMS_BASE_URL": "https://sms.example"}, "NOTIFIER_SMS_ACCOUNT_SID"),
        ({**BASE, "NOTIFIER_WEBHOOK_SECRET": "not-a-secret"}, "NOTIFIER_WEBHOOK_SECRET"),
        ({**BASE, "NOTIFIER_WEBHOOK_SECRET": "whsec_%%%"}, "NOTIFIER_WEBHOOK_SECRET"),
        ({**BASE, "NOTIFIER_RETRY_MIN_BACKOFF": "10", "NOTIFIER_RETRY_MAX_BACKOFF": "1"}, "NOTIFIER_RETRY_MAX_BACKOFF"),
        ({**BASE, "NOTIFIER_LOG_LEVEL": "LOUD"}, "NOTIFIER_LOG_LEVEL"),
    ],
)
def test_a_bad_or_missing_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        settings.load(env)


def test_values_are_converted_from_strings() -> None:
    loaded = settings.load(
        {
            **BASE,
            "NOTIFIER_API_KEYS": " key-one, key-two ,",
            "NOTIFIER_AUTH_DISABLED": "true",
            "NOTIFIER_RETRY_MIN_BACKOFF": "0.25",
            "NOTIFIER_SMTP_FROM": "alerts@example.com",
        }
    )
    assert loaded.api.keys == ["key-one", "key-two"]
    assert loaded.auth.disabled is True
    assert loaded.retry.min_backoff == 0.25
    assert loaded.smtp.sender == "alerts@example.com"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example", ("mail.example", 25, None, None, False, False)),
        ("smtp://u%40x:p%3Ass@mail.example:587?starttls=true", ("mail.example", 587, "u@x", "p:ss", False, True)),
        ("smtp://mail.example?starttls=true", ("mail.example", 587, None, None, False, True)),
        ("smtps://u:p@mail.example", ("mail.example", 465, "u", "p", True, False)),
    ],
)
def test_smtp_url_is_taken_apart(url: str, expected: tuple[object, ...]) -> None:
    server = settings.SmtpServer.parse(url)
    assert (
        server.host,
        server.port,
        server.username,
        server.password,
        server.implicit_tls,
        server.starttls,
    ) == expected


def test_readme_carries_the_current_configuration_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    result = subprocess.run([sys.executable, "-m", "notifier", "settings"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() in readme, "README's configuration table is stale: paste `notifier settings`"
