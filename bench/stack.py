"""What the suite runs on: its own database and Redis namespace, and the processes it starts.

Every process is started in its own session (process group), registered, and stopped at the end
(SIGTERM, then SIGKILL of the whole group), also when the run fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent

WORKER_POLL_MS = "100"
"""The idle poll interval ``notifier worker`` gives Dramatiq; the bare drain gets the same."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (OSError, psycopg.OperationalError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")  # a restarted process appends to its predecessor's log
        self._offset = self._log.tell()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self._terminated = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; its log:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_text()
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """What this process wrote (not its predecessors under the same name)."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def rss(self) -> int:
        """Resident memory of the process and all its descendants, in bytes."""
        total = 0
        try:
            parent = psutil.Process(self.pid)
            members = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += member.memory_info().rss
        return total

    def terminate(self) -> None:
        """SIGTERM, once: a second one makes Dramatiq's workers quit without finishing."""
        if self.alive() and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # anything left in its group (forked workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._log.close()


class Processes:
    """The registry of everything the suite started; :meth:`stop_all` is the last word."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[Process] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        process = Process(name, argv, env, self.log_dir)
        self.running.append(process)
        return process

    def stop(self, process: Process, timeout: float = 20) -> None:
        process.stop(timeout)
        if process in self.running:
            self.running.remove(process)

    def stop_all(self, timeout: float = 20) -> None:
        """SIGTERM to all at once, then wait for them together; SIGKILL to what is left of each group."""
        for process in self.running:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in reversed(list(self.running)):
            with contextlib.suppress(Exception):
                self.stop(process, timeout=max(0.1, deadline - time.monotonic()))


class Services:
    """A database of the suite's own (created, migrated, dropped) and a Redis namespace (deleted)."""

    def __init__(self, admin_url: str, redis_url: str, *, metrics: bool = True) -> None:
        token = secrets.token_hex(5)
        self.admin_url = admin_url
        self.redis_url = redis_url
        self.metrics = metrics
        """Whether the processes count and serve their metrics (NOTIFIER_METRICS_ENABLED)."""
        self.database = f"notifier_bench_{token}"
        self.database_url = with_database(admin_url, self.database)
        self.namespace = f"nbench{token}"
        self.created = False

    def create(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self.created = True
        env = {**clean_env(), "NOTIFIER_DATABASE_URL": self.database_url}
        result = subprocess.run(
            [sys.executable, "-m", "notifier", "migrate"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"notifier migrate failed:\n{result.stdout}\n{result.stderr}")

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def delete_keys(self, prefix: str | None = None) -> int:
        client = self.redis()
        try:
            keys = list(client.scan_iter(match=f"{prefix or self.namespace}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
            return len(keys)
        finally:
            client.close()

    def drop(self) -> None:
        with contextlib.suppress(Exception):
            self.delete_keys()
        if self.created:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.created = False

    def notifier_env(self, **extra: str) -> dict[str, str]:
        return {
            **clean_env(),
            "NOTIFIER_DATABASE_URL": self.database_url,
            "NOTIFIER_REDIS_URL": self.redis_url,
            "NOTIFIER_REDIS_NAMESPACE": self.namespace,
            "NOTIFIER_AUTH_DISABLED": "true",
            # The bench's receivers listen on loopback, which webhooks may not reach by default.
            "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
            "NOTIFIER_METRICS_ENABLED": "true" if self.metrics else "false",
            # Free ports on loopback: another run (or the test suite) may be using the defaults.
            "NOTIFIER_METRICS_HOST": "127.0.0.1",
            "NOTIFIER_WORKER_METRICS_PORT": str(free_port()),
            "NOTIFIER_SCHEDULER_METRICS_PORT": str(free_port()),
            **extra,
        }

    def reset(self) -> None:
        """Empty the notifier's tables and its Redis namespace (with no worker running)."""
        with self.connect() as conn:
            conn.execute("TRUNCATE notifications, delivery_attempts, events, rules CASCADE")
        self.delete_keys()


def clean_env() -> dict[str, str]:
    """This process's environment without NOTIFIER_* settings, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt, so a stopped run cleans up as Ctrl-C does."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class CpuMeter:
    """CPU seconds spent over a window, by who spent them: PostgreSQL, Redis, each process the suite
    started (its children included), the suite and its load generators, and what stayed idle."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.start: dict[str, float] = {}
        self.started_at = 0.0

    def _snapshot(self) -> dict[str, float]:
        ours: dict[int, str] = {}
        for process in self.processes.running:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(process.pid)
                for member in (parent, *parent.children(recursive=True)):
                    ours[member.pid] = process.name
        me = psutil.Process()
        spent: dict[str, float] = {}
        for proc in psutil.process_iter(["pid", "name", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            name = proc.info["name"] or ""
            if proc.info["pid"] in ours:
                group = ours[proc.info["pid"]]
            elif proc.info["pid"] == me.pid or me.pid in _ancestors(proc):
                group = "bench + load generators"
            elif name.startswith("postgres"):
                group = "postgresql"
            elif name.startswith("redis"):
                group = "redis"
            else:
                group = "other"
            spent[group] = spent.get(group, 0.0) + times.user + times.system
        own = me.cpu_times()
        spent["bench + load generators"] = (
            spent.get("bench + load generators", 0.0) + own.children_user + own.children_system
        )
        spent["idle"] = psutil.cpu_times().idle
        return spent

    def begin(self) -> None:
        self.start = self._snapshot()
        self.started_at = time.monotonic()

    def end(self) -> dict[str, Any]:
        """CPU seconds by group since :meth:`begin`, and the wall time (``cpu_count`` x wall is all there was)."""
        finish = self._snapshot()
        wall = time.monotonic() - self.started_at
        used = {k: round(v - self.start.get(k, 0.0), 2) for k, v in finish.items()}
        # What no visible process spent: the kernel, interrupts, or another tenant of the machine.
        used["unaccounted"] = round((os.cpu_count() or 1) * wall - sum(used.values()), 2)
        return {"wall_s": round(wall, 2), "cpu_count": os.cpu_count(), "cpu_s": dict(sorted(used.items()))}


def _ancestors(proc: psutil.Process) -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {p.pid for p in proc.parents()}
    return set()
