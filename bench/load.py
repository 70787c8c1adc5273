"""Load generators, each run as a process of its own and bounded in time (and count).

- ``wrk`` (the Debian package), with a Lua script for the POST body, for maximum throughput;
- ``python -m bench.load closed``: an asyncio closed-loop generator (``--connections`` requests
  in flight, until ``--duration`` or ``--count``), the fallback when wrk is not installed, and
  the way the suite sends an exact number of notifications;
- ``python -m bench.load open``: an asyncio open-loop generator at a fixed ``--rate``; each
  request's latency is counted from the moment it was due to be sent, so a server that falls
  behind shows it in the percentiles (no coordinated omission).

Both speak HTTP/1.1 with keep-alive over raw asyncio streams (much cheaper than an HTTP client
library on a 2-core machine that also runs the server), and print one JSON line: requests,
statuses, errors, duration, rate and latency percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 30.0


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (need not be sorted); ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise_ms(latencies_s: Sequence[float]) -> dict[str, float | None]:
    ms = [v * 1000 for v in latencies_s]
    return {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else None,
        "mean": sum(ms) / len(ms) if ms else None,
    }


@dataclass
class Target:
    host: str
    port: int
    path: str
    body: bytes
    count_results: bool = False

    @classmethod
    def of(cls, url: str, body: bytes, *, count_results: bool = False) -> Target:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, path or "/", body, count_results)

    def request(self) -> bytes:
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
        )
        return head.encode() + self.body


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port, limit=2**22)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> tuple[int, bytes, bool]:
        """Send one request; (status, body, whether the server keeps the connection)."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, chunked, keep = 0, False, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(data[:-2])
            body = b"".join(parts)
        else:
            body = await self.reader.readexactly(length) if length else b""
        return status, body, keep

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first: float | None = None
    last: float | None = None

    def record(self, started: float, status: int, body: bytes, target: Target) -> None:
        finished = time.perf_counter()
        self.latencies.append(finished - started)
        self.statuses[str(status)] += 1
        self.first = started if self.first is None else min(self.first, started)
        self.last = finished if self.last is None else max(self.last, finished)
        if target.count_results and status == 200:
            try:
                for item in json.loads(body)["results"]:
                    self.results[str(item.get("status"))] += 1
            except (ValueError, KeyError, TypeError):
                self.errors["unparsable batch answer"] += 1

    def report(self, **extra: Any) -> dict[str, Any]:
        duration = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        completed = len(self.latencies)
        ok = sum(n for s, n in self.statuses.items() if s.startswith("2"))
        return {
            "completed": completed,
            "ok": ok,
            "statuses": dict(self.statuses),
            "results": dict(self.results),
            "errors": dict(self.errors),
            "duration_s": duration,
            "rate": completed / duration if duration else 0.0,
            "ok_rate": ok / duration if duration else 0.0,
            "latency_ms": summarise_ms(self.latencies),
            **extra,
        }


class Pool:
    """Keep-alive connections, opened on demand up to ``limit``.

    A connection idle for longer than :data:`STALE_AFTER` is closed instead of reused: the server
    may be closing it at that very moment (uvicorn's keep-alive timeout is 5 s).
    """

    STALE_AFTER = 3.0

    def __init__(self, target: Target, limit: int) -> None:
        self.target, self.limit = target, limit
        self.idle: list[tuple[Connection, float]] = []
        self.opened = self.peak = 0
        self.freed = asyncio.Condition()

    async def warm(self, count: int) -> None:
        opened = await asyncio.gather(*(Connection.open(self.target) for _ in range(min(count, self.limit))))
        now = time.perf_counter()
        self.idle.extend((conn, now) for conn in opened)
        self.opened += len(opened)
        self.peak = max(self.peak, self.opened)

    async def acquire(self) -> Connection:
        async with self.freed:
            while not self.idle and self.opened >= self.limit:
                await self.freed.wait()
            while self.idle:
                conn, since = self.idle.pop()
                if time.perf_counter() - since < self.STALE_AFTER:
                    return conn
                conn.close()
                self.opened -= 1
            self.opened += 1
            self.peak = max(self.peak, self.opened)
        try:
            return await Connection.open(self.target)
        except BaseException:
            await self.discard(None)
            raise

    async def release(self, conn: Connection) -> None:
        async with self.freed:
            self.idle.append((conn, time.perf_counter()))
            self.freed.notify()

    async def discard(self, conn: Connection | None) -> None:
        if conn is not None:
            conn.close()
        async with self.freed:
            self.opened -= 1
            self.freed.notify()

    def close(self) -> None:
        for conn, _ in self.idle:
            conn.close()


async def _one(pool: Pool, raw: bytes, due: float, tally: Tally) -> None:
    conn: Connection | None = None
    try:
        conn = await pool.acquire()
        status, body, keep = await asyncio.wait_for(conn.send(raw), REQUEST_TIMEOUT)
    except Exception as exc:
        tally.errors[type(exc).__name__] += 1
        await pool.discard(conn)
        return
    tally.record(due, status, body, pool.target)
    if keep:
        await pool.release(conn)
    else:
        await pool.discard(conn)


async def open_loop(
    target: Target, *, rate: float, duration: float, max_connections: int, drain_timeout: float
) -> dict[str, Any]:
    """Send ``rate`` requests a second for ``duration`` seconds, whatever the answers take."""
    raw = target.request()
    pool = Pool(target, max_connections)
    await pool.warm(min(32, max_connections))
    tally = Tally()
    total = int(rate * duration)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.01
    behind = 0.0
    for i in range(total):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        else:
            behind = max(behind, -wait)
        tasks.append(asyncio.create_task(_one(pool, raw, due, tally)))
    sent_in = time.perf_counter() - start
    unfinished = 0
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=drain_timeout)
        unfinished = len(pending)
        for task in pending:
            task.cancel()
    pool.close()
    return tally.report(
        mode="open",
        target_rate=rate,
        sent=total,
        sent_in_s=sent_in,
        offered_rate=total / sent_in if sent_in else 0.0,
        unfinished=unfinished,
        max_dispatch_lag_ms=behind * 1000,
        connections=pool.peak,
    )


async def closed_loop(target: Target, *, connections: int, duration: float, count: int) -> dict[str, Any]:
    """``connections`` requests in flight until ``duration`` seconds or ``count`` requests."""
    raw = target.request()
    tally = Tally()
    issued = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal issued
        conn: Connection | None = None
        while issued < count and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = await Connection.open(target)
                status, body, keep = await asyncio.wait_for(conn.send(raw), REQUEST_TIMEOUT)
            except Exception as exc:
                tally.errors[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.05)
                continue
            tally.record(started, status, body, target)
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return tally.report(mode="closed", connections=connections, sent=issued)


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("closed", "open"):
        sub = modes.add_parser(name)
        sub.add_argument("--url", required=True)
        sub.add_argument("--body-file", type=Path, required=True)
        sub.add_argument("--duration", type=float, required=True, help="seconds (a hard bound)")
        sub.add_argument("--warmup", type=float, default=0.0, help="seconds of the same load first, not counted")
        sub.add_argument("--count-results", action="store_true", help="count the batch answer's item statuses")
    closed = modes.choices["closed"]
    closed.add_argument("--connections", type=int, default=16)
    closed.add_argument("--count", type=int, default=10**9, help="requests at most")
    opened = modes.choices["open"]
    opened.add_argument("--rate", type=float, required=True, help="requests a second")
    opened.add_argument("--max-connections", type=int, default=256)
    opened.add_argument("--drain-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    target = Target.of(args.url, args.body_file.read_bytes(), count_results=args.count_results)

    if args.mode == "closed":
        if args.warmup:
            _run(closed_loop(target, connections=args.connections, duration=args.warmup, count=args.count))
        report = _run(closed_loop(target, connections=args.connections, duration=args.duration, count=args.count))
    else:
        options = {"max_connections": args.max_connections, "drain_timeout": args.drain_timeout}
        if args.warmup:
            _run(open_loop(target, rate=args.rate, duration=args.warmup, **options))
        report = _run(open_loop(target, rate=args.rate, duration=args.duration, **options))
    print(json.dumps(report), flush=True)


# --- the suite's side: running the generators above, or wrk, as separate processes ---------------


def _last_json(stdout: str, marker: str = "") -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith(marker):
            parsed: dict[str, Any] = json.loads(line[len(marker) :])
            return parsed
    raise RuntimeError(f"no result in the load generator's output:\n{stdout[-2000:]}")


def _generator(mode: str, url: str, body: bytes, duration: float, options: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(prefix="bench-body-", suffix=".json", delete=False) as file:
        file.write(body)
    try:
        argv = [sys.executable, "-m", "bench.load", mode, "--url", url, "--body-file", file.name]
        result = subprocess.run(
            [*argv, "--duration", str(duration), *options],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"load generator failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return _last_json(result.stdout)
    finally:
        os.unlink(file.name)


def closed(
    url: str,
    body: bytes,
    *,
    connections: int,
    duration: float,
    count: int = 10**9,
    warmup: float = 0.0,
    count_results: bool = False,
) -> dict[str, Any]:
    options = ["--connections", str(connections), "--count", str(count), "--warmup", str(warmup)]
    if count_results:
        options.append("--count-results")
    return _generator("closed", url, body, duration, options, timeout=duration + warmup + 2 * REQUEST_TIMEOUT + 30)


def open_rate(
    url: str, body: bytes, *, rate: float, duration: float, warmup: float = 0.0, max_connections: int = 256
) -> dict[str, Any]:
    options = ["--rate", str(rate), "--warmup", str(warmup), "--max-connections", str(max_connections)]
    return _generator("open", url, body, duration, options, timeout=duration + warmup + 2 * 10 + 60)


WRK_SCRIPT = """
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk(url: str, body: bytes, *, connections: int, duration: float, threads: int = 1) -> dict[str, Any]:
    """Run wrk for ``duration`` seconds; the same keys as the generators' reports."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script, body_file = Path(tmp, "post.lua"), Path(tmp, "body.json")
        script.write_text(WRK_SCRIPT)
        body_file.write_bytes(body)
        seconds = max(1, round(duration))
        result = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env={**os.environ, "BENCH_BODY_FILE": str(body_file)},
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    raw = _last_json(result.stdout, "BENCH ")
    duration_s = raw["duration_us"] / 1e6
    errors = {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]}
    ok = raw["requests"] - raw["status"]
    return {
        "tool": "wrk",
        "mode": "closed",
        "connections": connections,
        "completed": raw["requests"],
        "ok": ok,
        "non_2xx_3xx": raw["status"],
        "errors": errors,
        "duration_s": duration_s,
        "rate": raw["requests"] / duration_s,
        "ok_rate": ok / duration_s,
        "latency_ms": {k: raw[f"{k}_us"] / 1000 for k in ("p50", "p90", "p99", "max")},
    }


def max_throughput(url: str, body: bytes, *, connections: int, duration: float, warmup: float) -> dict[str, Any]:
    """The most requests a second the server answers: wrk when installed, else the asyncio generator."""
    if wrk_available():
        if warmup:
            wrk(url, body, connections=connections, duration=warmup)
        return wrk(url, body, connections=connections, duration=duration)
    report = closed(url, body, connections=connections, duration=duration, warmup=warmup)
    report["tool"] = "bench.load closed"
    return report


if __name__ == "__main__":
    main()
