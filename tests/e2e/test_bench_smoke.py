"""The benchmark suite at smoke size, so that it cannot rot: it runs end to end and reports every figure.

Targets are not asserted (a benchmark is not a timed test); only that the run succeeded, cleaned up
after itself, and wrote a JSON document with a numeric value for every figure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from bench.suite import FIGURES

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 200
"""Seconds; a smoke run takes well under a minute on a 2-core machine."""


def test_bench_smoke(services: tuple[str, str], tmp_path: Path) -> None:
    admin_url, redis_url = services
    output = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bench", "--smoke", "--database-url", admin_url, "--redis-url", redis_url]
    process = subprocess.Popen(
        [*argv, "--output", str(output)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        printed, _ = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the suite stops what it started and drops its database
        try:
            printed, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            printed, _ = process.communicate()
        pytest.fail(f"python -m bench --smoke took over {DEADLINE}s:\n{printed[-5000:]}")
    assert process.returncode == 0, printed[-8000:]

    document = json.loads(output.read_text())
    assert document["mode"] == "smoke"
    assert document["failed_phases"] == []
    assert document["machine"]["cpu_count"] >= 1
    for ceiling in ("bare_api", "bare_drain"):
        assert document["ceilings"][ceiling]["value"] > 0, document["ceilings"]
    figures = {figure["name"]: figure for figure in document["figures"]}
    assert set(figures) == set(FIGURES)
    for name, figure in figures.items():
        assert isinstance(figure["value"], int | float), (name, figure)
        assert figure["ok"] in (True, False), (name, figure)
    assert "POST /notify throughput" in printed

    # Nothing left behind: its database is dropped, its Redis keys deleted.
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (document["database"],)).fetchone()
    assert row == (0,), document["database"]
    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter(match=f"{document['redis_namespace']}*", count=1000))
    finally:
        client.close()
