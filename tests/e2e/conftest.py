"""Real ``notifier api`` and ``notifier worker`` processes, driven over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, notifier_env
from tests.peers import SmsPeer, SmtpPeer, WebhookPeer
from tests.prometheus import PrometheusServer, Target, find_prometheus

API_KEY = "e2e-key"


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, metrics_port: int | None = None
    ) -> None:
        self.name = name
        self.metrics_port = metrics_port
        """Where its metrics are served on loopback (a worker's or a scheduler's), if anywhere."""
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "notifier", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() takes its children too
        )

    def kill(self) -> None:
        """SIGKILL the process and its children at once, as a crashed machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def metrics_url(self) -> str:
        assert self.metrics_port is not None, f"{self.name} serves no metrics"
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()
        with contextlib.suppress(ProcessLookupError):  # leave no orphaned worker process behind
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except (httpx.TransportError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Stack:
    """The API, a worker and (unless told otherwise) a scheduler, with a client for the API.

    Each worker and scheduler serves its metrics on a free port of its own (``Process.metrics_url``),
    each worker with a multiprocess directory of its own under the log directory.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, *, schedulers: int = 1, processes: int = 1) -> None:
        self.env, self.log_dir, self.worker_processes = env, log_dir, processes
        self.port = free_port()
        self.api = Process("api", ["api", "--port", str(self.port)], env, log_dir)
        self.worker = self._worker("worker", ["--processes", str(processes), "--threads", "4"])
        self.schedulers = [self.start_scheduler() for _ in range(schedulers)]
        self.extra_workers: list[Process] = []
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        )

    @property
    def processes(self) -> list[Process]:
        return [self.api, self.worker, *self.extra_workers, *self.schedulers]

    def _worker(self, name: str, args: list[str]) -> Process:
        port = free_port()
        env = {
            **self.env,
            "NOTIFIER_WORKER_METRICS_PORT": str(port),
            "NOTIFIER_METRICS_DIR": str(self.log_dir / f"{name}-metrics"),
        }
        return Process(name, ["worker", *args], env, self.log_dir, metrics_port=port)

    def start_worker(self, *args: str) -> Process:
        """Another worker process (e.g. to replace one that was killed)."""
        worker = self._worker(f"worker-{len(self.extra_workers) + 2}", list(args))
        self.extra_workers.append(worker)
        return worker

    def start_scheduler(self) -> Process:
        port = free_port()
        env = {**self.env, "NOTIFIER_SCHEDULER_METRICS_PORT": str(port)}
        name = f"scheduler-{len(getattr(self, 'schedulers', []))}"
        return Process(name, ["scheduler"], env, self.log_dir, metrics_port=port)

    def wait_ready(self) -> None:
        def ready() -> bool:
            for process in self.processes:
                assert process.popen.poll() is None, f"{process.name} exited:\n{process.log()}"
            ok = self.client.get("/readyz").status_code == 200
            return ok and self.worker.log().count("Worker process is ready") >= self.worker_processes

        wait_until(ready, 60, "the API and the worker to be ready")

    def notify(self, **payload: Any) -> dict[str, Any]:
        response = self.client.post("/notify", json=payload)
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_status(self, notification_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            body: dict[str, Any] = self.client.get(f"/notifications/{notification_id}").json()
            return body if body["status"] == status else None

        result: dict[str, Any] = wait_until(reached, timeout, f"notification {notification_id} to be {status}")
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} log ---\n{p.log()}" for p in self.processes)

    def stop(self) -> None:
        self.client.close()
        for process in self.processes:
            process.stop()


StartStack = Callable[..., Stack]


@pytest.fixture
def start_stack(
    database_url: str,
    redis_url: str,
    redis_namespace: str,
    smtp_server: SmtpPeer,
    sms_gateway: SmsPeer,
    webhook_receiver: WebhookPeer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[StartStack]:
    """Start a stack against this test's database, Redis namespace and peers; extra settings as keywords."""
    base = notifier_env(
        database_url,
        redis_url,
        redis_namespace,
        NOTIFIER_API_KEYS=API_KEY,
        NOTIFIER_SMTP_URL=smtp_server.url,
        NOTIFIER_SMTP_FROM="notifier@example.com",
        NOTIFIER_SMS_BASE_URL=sms_gateway.url,
        NOTIFIER_SMS_ACCOUNT_SID=sms_gateway.account_sid,
        NOTIFIER_SMS_AUTH_TOKEN=sms_gateway.auth_token,
        NOTIFIER_SMS_FROM="+14155550100",
        NOTIFIER_WEBHOOK_SECRET=webhook_receiver.secret,
        NOTIFIER_RETRY_MIN_BACKOFF="0.2",
        NOTIFIER_RETRY_MAX_BACKOFF="1",
        NOTIFIER_DELIVERY_TIMEOUT="3",
    )
    started: list[Stack] = []

    def start(*, schedulers: int = 1, processes: int = 1, **extra: str) -> Stack:
        running = Stack({**base, **extra}, tmp_path, schedulers=schedulers, processes=processes)
        started.append(running)
        running.wait_ready()
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()
            if os.environ.get("NOTIFIER_TEST_SHOW_LOGS") or getattr(request.node, "rep_call_failed", False):
                print(running.logs())


@pytest.fixture
def stack(start_stack: StartStack) -> Stack:
    return start_stack()


StartPrometheus = Callable[..., PrometheusServer]


@pytest.fixture
def start_prometheus(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StartPrometheus]:
    """Start a real Prometheus scraping the targets given (``start_prometheus(targets, rule_files=…)``);
    its targets are not waited for (see ``wait_targets_up``). Stopped, its data removed, at teardown.

    Skipped when no ``prometheus`` binary is found, except under ``CI=true`` (``.ci/run`` installs
    Debian's ``prometheus`` package), where the test fails instead.
    """
    binary = find_prometheus()
    if binary is None:
        message = "no prometheus binary (/usr/bin/prometheus): apt-get install -y prometheus"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs it")
        pytest.skip(f"{message} (under CI=true this test fails instead)")
    started: list[PrometheusServer] = []

    def start(targets: list[Target], **options: Any) -> PrometheusServer:
        work_dir = tmp_path / f"prometheus-{len(started)}"
        work_dir.mkdir()
        server = PrometheusServer(targets, binary=binary, work_dir=work_dir, **options)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            log = server.log()
            server.stop()
            if getattr(request.node, "rep_call_failed", False):
                print(f"--- prometheus log ---\n{log}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.rep_call_failed = True  # type: ignore[attr-defined]
    return report
