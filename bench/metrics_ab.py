"""``python -m bench.metrics_ab``: what metrics cost ``POST /notify``, the API alone.

Each round starts two ``notifier api`` processes on one database and Redis namespace of their own,
one with metrics on and one with them off, and loads them in turn (closed loop, 32 connections, 5 s
after 1 s of warm-up), the order alternating each round so that the machine's drift falls on both
alike; then stops them. Fresh processes each round: two processes of the same build differ by a
few per cent (memory layout, hash seed), which would otherwise fall on one setting for a whole run.
It prints the throughput and the API process's CPU a request (its user and system time over the
notifications stored). No worker runs: the table and the delivery queue are emptied before each
load, and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

import httpx
import psutil
import psycopg
import redis

from bench import load
from bench.stack import clean_env, free_port, with_database

SETTINGS = {"on": "true", "off": "false"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_ab", description=__doc__)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    name = f"notifier_ab_{uuid.uuid4().hex[:10]}"
    namespace = f"nab{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(args.database_url, name)
    env = {
        **clean_env(),
        "NOTIFIER_DATABASE_URL": url,
        "NOTIFIER_REDIS_URL": args.redis_url,
        "NOTIFIER_REDIS_NAMESPACE": namespace,
        "NOTIFIER_AUTH_DISABLED": "true",
        "NOTIFIER_LOG_LEVEL": "WARNING",
    }
    processes: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    body = json.dumps({"channel": "log", "recipient": "bench-ab", "body": "benchmark notification"}).encode()
    rates: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    costs: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    try:
        subprocess.run([sys.executable, "-m", "notifier", "migrate"], env=env, check=True, capture_output=True)
        for round_ in range(args.rounds):
            # Fresh processes each round: a process's own speed (its memory layout, its hash seed)
            # varies by a few per cent, and would otherwise fall on one setting for the whole run.
            for setting, enabled in SETTINGS.items():
                port = free_port()
                command = [sys.executable, "-m", "notifier", "api", "--port", str(port)]
                process = subprocess.Popen(command, env={**env, "NOTIFIER_METRICS_ENABLED": enabled})
                processes[setting] = (process, port)
            for process, port in processes.values():
                _wait_healthy(process, port)
            for setting in processes:  # a first load of each, not counted: pools fill, caches warm
                _reset(url, args.redis_url, namespace)
                load.closed(f"http://127.0.0.1:{processes[setting][1]}/notify", body, connections=32, duration=1)
            order = list(processes) if round_ % 2 == 0 else list(processes)[::-1]
            for setting in order:
                process, port = processes[setting]
                _reset(url, args.redis_url, namespace)
                api = psutil.Process(process.pid)
                before = api.cpu_times()
                report = load.closed(
                    f"http://127.0.0.1:{port}/notify", body, connections=32, duration=args.seconds, warmup=1
                )
                after = api.cpu_times()
                cost = (after.user + after.system - before.user - before.system) / max(1, _accepted(url)) * 1e6
                rates[setting].append(report["rate"])
                costs[setting].append(cost)
                print(
                    f"round {round_ + 1} metrics {setting}: {report['rate']:,.0f} req/s,"
                    f" {cost:,.0f} µs of the API's CPU a request",
                    flush=True,
                )
            _stop(processes)
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        for setting, found in rates.items():
            print(
                f"metrics {setting}: median {statistics.median(found):,.0f} req/s, all {[round(r) for r in found]};"
                f" CPU a request median {statistics.median(costs[setting]):,.0f} µs,"
                f" all {[round(c) for c in costs[setting]]}"
            )
        print(f"lost with metrics on: {1 - on / off:.1%}")
        cost_on, cost_off = statistics.median(costs["on"]), statistics.median(costs["off"])
        print(f"the API's CPU a request with metrics on: {cost_on / cost_off - 1:+.1%}")
    finally:
        _stop(processes)
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _delete_keys(args.redis_url, namespace)


def _stop(processes: dict[str, tuple[subprocess.Popen[bytes], int]]) -> None:
    for process, _ in processes.values():
        process.terminate()
    for process, _ in processes.values():
        process.wait(timeout=30)
    processes.clear()


def _accepted(database_url: str) -> int:
    """The notifications stored since the last :func:`_reset` (the warm-up's included)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM notifications").fetchone()
    return int(row[0]) if row else 0


def _reset(database_url: str, redis_url: str, namespace: str) -> None:
    """Empty the table and the queue, so that each load starts where the others did."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE notifications CASCADE")
    _delete_keys(redis_url, namespace)


def _delete_keys(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _wait_healthy(process: subprocess.Popen[bytes], port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"notifier api exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"notifier api on :{port} not healthy after {timeout:.0f} s")


if __name__ == "__main__":
    main()
