"""The commands as a user runs them: help, configuration errors, migrations run twice at once."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import notifier_env, with_database


def notifier(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        env=env if env is not None else {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("command", ["api", "worker", "migrate", "dev", "settings"])
def test_every_command_has_help(command: str) -> None:
    result = notifier(command, "--help")
    assert result.returncode == 0
    assert f"usage: notifier {command}" in result.stdout


@pytest.mark.parametrize("command", ["api", "worker", "migrate"])
def test_missing_settings_stop_the_process_naming_the_variable(command: str) -> None:
    result = notifier(command)
    assert result.returncode != 0
    assert "NOTIFIER_DATABASE_URL is required" in result.stderr


def test_api_refuses_to_run_without_keys(database_url: str, redis_url: str, redis_namespace: str) -> None:
    result = notifier("api", env=notifier_env(database_url, redis_url, redis_namespace))
    assert result.returncode != 0
    assert "NOTIFIER_API_KEYS" in result.stderr
    assert "NOTIFIER_AUTH_DISABLED=true" in result.stderr


def test_invalid_value_names_the_variable(database_url: str, redis_url: str, redis_namespace: str) -> None:
    env = notifier_env(database_url, redis_url, redis_namespace, NOTIFIER_SMTP_URL="mail.example.com:25")
    result = notifier("worker", env=env)
    assert result.returncode != 0
    assert "NOTIFIER_SMTP_URL" in result.stderr


def test_two_migrations_at_once_both_succeed(services: tuple[str, str]) -> None:
    admin_url = services[0]
    name = f"notifier_migrate_race_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(admin_url, name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
        env["NOTIFIER_DATABASE_URL"] = url
        racers = [
            subprocess.Popen(
                [sys.executable, "-m", "notifier", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [r.communicate(timeout=120)[0] for r in racers]
        assert [r.returncode for r in racers] == [0, 0], outputs
        assert sum("Running" in out for out in outputs) == 1, outputs
        assert sum("No migrations need to be run" in out for out in outputs) == 1, outputs
        with psycopg.connect(url) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"notifications", "delivery_attempts"} <= tables
        assert notifier("migrate", env=env).returncode == 0
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
