"""``notifier dev`` on its embedded default: real PostgreSQL and Redis, data kept across restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.e2e.conftest import wait_until


def start_dev(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "notifier", "dev", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


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
