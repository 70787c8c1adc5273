"""``notifier dev`` on its embedded default: real PostgreSQL and Redis, data kept across restarts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.e2e.conftest import wait_until


def start_dev(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``notifier dev`` as a terminal runs it: the leader of its own process group, and without
    XDG_RUNTIME_DIR (as in a container or under su)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "XDG_RUNTIME_DIR"}
    # Metrics ports of its own: another run on this machine may hold the defaults.
    env.update(NOTIFIER_WORKER_METRICS_PORT=str(free_port()), NOTIFIER_SCHEDULER_METRICS_PORT=str(free_port()))
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "notifier", "dev", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> float:
    """Ctrl-C as a terminal sends it (SIGINT to the whole foreground process group); return how
    long ``notifier dev`` took to exit."""
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    return time.monotonic() - started


def test_dev_runs_on_embedded_servers_and_keeps_its_data(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "dev.log"
    port = free_port()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def ready() -> bool:
        return client.get("/readyz").status_code == 200

    def status(notification_id: str) -> str:
        return str(client.get(f"/notifications/{notification_id}").json()["status"])

    dev = start_dev(data_dir, port, log)
    try:
        wait_until(ready, 90, "notifier dev to be ready")
        output = log.read_text()
        assert str(data_dir) in output
        assert f"http://127.0.0.1:{port}/schema" in output
        created = client.post("/notify", json={"channel": "log", "recipient": "ops", "body": "hello"}).json()
        wait_until(lambda: status(created["id"]) == "sent", 30, "the notification to be sent")
    finally:
        stop(dev)
    assert dev.returncode is not None

    dev = start_dev(data_dir, port, log)
    try:
        wait_until(ready, 90, "notifier dev to be ready again")
        assert status(created["id"]) == "sent"
    finally:
        stop(dev)
        client.close()
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes left running: {leftovers}"


def test_ctrl_c_stops_dev_cleanly_and_root_leads_to_the_docs(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "dev.log"
    port = free_port()
    dev = start_dev(data_dir, port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, 90, "notifier dev to be ready")
            wait_until(lambda: "Worker process is ready" in log.read_text(), 30, "the worker to be ready")
            root = client.get("/")
            assert root.status_code in (302, 307)
            assert root.headers["location"] == "/schema"
            docs = client.get("/", follow_redirects=True)
            assert docs.status_code == 200
            assert "swagger-ui" in docs.text
    finally:
        took = stop(dev)
    output = log.read_text(errors="replace")
    assert dev.returncode == 0, output
    assert took < 15, f"notifier dev took {took:.1f}s to stop"
    for unwanted in ("CRITICAL", "Killing worker process", "RuntimeDirWarning", "Traceback"):
        assert unwanted not in output, f"{unwanted!r} in the output of notifier dev:\n{output}"
    leftovers = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes left running: {leftovers}"
