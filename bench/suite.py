"""``python -m bench [--smoke]``: every figure of issue 5, against real processes, with its ceilings.

The phases run in this order, each against the processes it needs:

1. the bare API ceiling (``bench/ceilings/bare_api.py``) under wrk;
2. ``notifier api`` alone: ``POST /notify`` throughput and its p99 at 1,000 req/s, and the batch
   endpoint's notifications a second;
3. the bare drain ceiling (``bench/ceilings/bare_drain.py``, 2 processes x 8 threads);
4. the delivery drain: N accepted with no worker running, then ``notifier worker`` (2 x 32) started;
5. end to end at 500/s, with ``notifier scheduler`` running too;
6. 10,000 notifications due at the same instant;
7. memory of the api and the workers across a long run;
8. with 1,000,000 notifications scheduled ahead: the relay pass, the rule tick, list pages.

A phase that fails is reported as failed figures and the run goes on; the exit status is 1 when
any did (0 otherwise: targets missed are reported, not an error). Everything the suite started is
stopped, its database dropped and its Redis keys deleted, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import load
from bench.figures import Figure, as_json, failed, machine, table, unavailable
from bench.stack import (
    ROOT,
    WORKER_POLL_MS,
    CpuMeter,
    Process,
    Processes,
    Services,
    clean_env,
    free_port,
    terminate_as_interrupt,
    wait_until,
)

RESULTS = ROOT / "bench" / "results"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
WORKER_PROCESSES = 2
WORKER_THREADS = 32
"""``notifier worker``'s default threads a process."""
BARE_DRAIN_THREADS = 8
"""The issue's bare drain ceiling: 2 processes x 8 threads."""
MIB = 2**20


@dataclass(frozen=True)
class Sizes:
    warmup: float
    throughput_seconds: float
    connections: int
    latency_rate: float
    latency_seconds: float
    batch_size: int
    batch_seconds: float
    batch_connections: int
    drain_count: int
    e2e_rate: float
    e2e_seconds: float
    burst_count: int
    burst_ahead: float
    scheduled_count: int
    rules: int
    timing_runs: int
    page_requests: int
    cursor_pages: int
    memory_count: int
    memory_interval: float


FULL = Sizes(
    warmup=2,
    throughput_seconds=10,
    connections=32,
    latency_rate=1000,
    latency_seconds=10,
    batch_size=1000,
    batch_seconds=10,
    batch_connections=4,
    drain_count=20_000,
    e2e_rate=500,
    e2e_seconds=20,
    burst_count=10_000,
    burst_ahead=20,
    scheduled_count=1_000_000,
    rules=20,
    timing_runs=10,
    page_requests=100,
    cursor_pages=100,
    memory_count=100_000,
    memory_interval=0.5,
)

SMOKE = Sizes(
    warmup=0.5,
    throughput_seconds=1,
    connections=16,
    latency_rate=1000,
    latency_seconds=1,
    batch_size=100,
    batch_seconds=1,
    batch_connections=2,
    drain_count=500,
    e2e_rate=500,
    e2e_seconds=1,
    burst_count=300,
    burst_ahead=4,
    scheduled_count=20_000,
    rules=3,
    timing_runs=3,
    page_requests=10,
    cursor_pages=10,
    memory_count=2_000,
    memory_interval=0.1,
)

# The figures, in the order of the table: (name, title, unit).
FIGURES = {
    "notify_throughput": ("POST /notify throughput, 1 api process", "req/s"),
    "notify_p99_at_1000": ("POST /notify p99 at 1,000 req/s", "ms"),
    "batch_throughput": ("POST /notify/batch, accepted durably", "notif/s"),
    "drain_rate": ("delivery drain, log, 2 worker processes", "msg/s"),
    "e2e_p50": ("end to end at 500/s, p50", "ms"),
    "e2e_p99": ("end to end at 500/s, p99", "ms"),
    "burst_first": ("burst due at once: first sent after due", "s"),
    "burst_last": ("burst due at once: last sent after due", "s"),
    "relay_pass": ("relay pass with 1M scheduled, worst", "ms"),
    "rule_tick": ("rule tick with 1M scheduled, worst", "ms"),
    "list_pages_p99": ("GET /notifications pages, p99", "ms"),
    "api_rss_drift": ("api RSS drift across the run", "%"),
    "worker_rss_drift": ("worker RSS drift across the run", "%"),
}


def figure(name: str, value: float | None, target: float | None, comparison: str = "<=", **kw: Any) -> Figure:
    title, unit = FIGURES[name]
    return Figure(name, title, value, unit, target, comparison, **kw).judge()


def notification(recipient: str, **extra: Any) -> dict[str, Any]:
    return {"channel": "log", "recipient": recipient, "body": "benchmark notification: disk almost full", **extra}


def body(recipient: str, **extra: Any) -> bytes:
    return json.dumps(notification(recipient, **extra)).encode()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Suite:
    def __init__(self, sizes: Sizes, services: Services, processes: Processes) -> None:
        self.sizes = sizes
        self.services = services
        self.processes = processes
        self.figures: dict[str, Figure] = {}
        self.ceilings: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, float] = {}
        self.api: Process | None = None
        self.api_url = ""
        self.worker: Process | None = None
        self.scheduler: Process | None = None
        self.cpu = CpuMeter(processes)

    # --- processes ---------------------------------------------------------------------------------

    def start_api(self) -> None:
        if self.api is not None and self.api.alive():
            return
        port = free_port()
        argv = [sys.executable, "-m", "notifier", "api", "--port", str(port)]
        self.api = self.processes.start("api", argv, self.services.notifier_env())
        self.api_url = f"http://127.0.0.1:{port}"
        api = self.api

        def ready() -> bool:
            api.check()
            try:
                return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, "notifier api to be ready", interval=0.1)

    def start_worker(self) -> Process:
        if self.worker is None or not self.worker.alive():
            argv = [sys.executable, "-m", "notifier", "worker"]
            argv += ["--processes", str(WORKER_PROCESSES), "--threads", str(WORKER_THREADS)]
            self.worker = self.processes.start("worker", argv, self.services.notifier_env())
        return self.worker

    def wait_worker_ready(self) -> None:
        worker = self.start_worker()

        def ready() -> bool:
            worker.check()
            return worker.log_text().count("Worker process is ready") >= WORKER_PROCESSES

        wait_until(ready, 60, "notifier worker processes to be ready", interval=0.1)

    def start_scheduler(self) -> None:
        if self.scheduler is None or not self.scheduler.alive():
            argv = [sys.executable, "-m", "notifier", "scheduler"]
            self.scheduler = self.processes.start("scheduler", argv, self.services.notifier_env())

    def stop_delivery(self) -> None:
        for process in (self.worker, self.scheduler):
            if process is not None:
                self.processes.stop(process)
        self.worker = self.scheduler = None

    def count(self, sql: str, *params: Any) -> int:
        with self.services.connect() as conn:
            row = conn.execute(sql, params).fetchone()
        return int(row[0]) if row else 0

    def wait_sent(self, recipient: str, expected: int, timeout: float) -> float:
        """Poll (one ``SELECT count(*)`` per 100 ms) until ``expected`` are sent; when, by the monotonic clock."""
        deadline = time.monotonic() + timeout
        with self.services.connect() as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM notifications WHERE recipient = %s AND status = 'sent'", (recipient,)
                ).fetchone()
                if row and row[0] >= expected:
                    return time.monotonic()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{row[0] if row else 0} of {expected} {recipient!r} sent after {timeout:.0f}s")
                for process in (self.worker, self.scheduler, self.api):
                    if process is not None:
                        process.check()
                time.sleep(0.1)

    def accept(self, recipient: str, count: int, **extra: Any) -> dict[str, Any]:
        """POST ``count`` notifications to the api (closed loop, 16 connections)."""
        report = load.closed(
            f"{self.api_url}/notify",
            body(recipient, **extra),
            connections=16,
            duration=60 + count / 100,
            count=count,
        )
        accepted = self.count("SELECT count(*) FROM notifications WHERE recipient = %s", recipient)
        if accepted != count:
            raise RuntimeError(f"{accepted} of {count} {recipient!r} accepted: {report['statuses']} {report['errors']}")
        return report

    # --- phases --------------------------------------------------------------------------------------

    def bare_api(self) -> None:
        from bench.ceilings import bare_api

        s = self.sizes
        bare_api.create_table(self.services.database_url)
        port = free_port()
        argv = [sys.executable, "-m", "bench.ceilings.bare_api", "--port", str(port)]
        argv += ["--database-url", self.services.database_url, "--redis-url", self.services.redis_url]
        argv += ["--key", f"{self.services.namespace}bare:api"]
        process = self.processes.start("bare-api", argv, clean_env())
        url = f"http://127.0.0.1:{port}/notify"
        try:

            def ready() -> bool:
                process.check()
                try:
                    return httpx.post(url, content=body("bench-bare"), timeout=2).status_code == 202
                except httpx.HTTPError:
                    return False

            wait_until(ready, 60, "the bare api to be ready", interval=0.1)
            self.cpu.begin()
            report = load.max_throughput(
                url, body("bench-bare"), connections=s.connections, duration=s.throughput_seconds, warmup=s.warmup
            )
            cpu = self.cpu.end()
        finally:
            self.processes.stop(process)
        if report["ok"] == 0:
            raise RuntimeError(f"the bare api accepted nothing: {report}")
        self.ceilings["bare_api"] = {"value": report["ok_rate"], "unit": "req/s", "load": report, "cpu": cpu}
        log(f"bare api ceiling: {report['ok_rate']:,.0f} req/s ({report['tool']})")

    def notify(self) -> None:
        s = self.sizes
        self.start_api()
        url = f"{self.api_url}/notify"
        answer = httpx.post(url, content=body("bench-probe"), headers={"content-type": "application/json"})
        if answer.status_code != 202:
            raise RuntimeError(f"POST /notify answered {answer.status_code}: {answer.text[:500]}")
        self.cpu.begin()
        report = load.max_throughput(
            url, body("bench-throughput"), connections=s.connections, duration=s.throughput_seconds, warmup=s.warmup
        )
        cpu = self.cpu.end()
        ceiling = self.ceilings.get("bare_api", {}).get("value")
        note = ""
        if report["ok"] < report["completed"]:
            note = f"{report['completed'] - report['ok']} of {report['completed']} answers were not 2xx"
        self.figures["notify_throughput"] = figure(
            "notify_throughput",
            report["ok_rate"],
            0.80,
            ">=",
            ceiling=ceiling,
            ceiling_name="bare api",
            note=note,
            details={"load": report, "cpu": cpu},
        )
        log(f"POST /notify: {report['ok_rate']:,.0f} req/s")

        report = load.open_rate(
            url, body("bench-latency"), rate=s.latency_rate, duration=s.latency_seconds, warmup=s.warmup
        )
        lost = sum(report["errors"].values()) + report["unfinished"] + (report["completed"] - report["ok"])
        p99 = report["latency_ms"]["p99"]
        item = figure("notify_p99_at_1000", p99, 50.0, details={"load": report})
        if lost:
            item.note = f"{lost} of {report['sent']} requests failed, were refused or did not finish"
            item.ok = False if lost > report["sent"] / 100 else item.ok
        self.figures["notify_p99_at_1000"] = item
        log(f"POST /notify at {s.latency_rate:g}/s: p99 {p99 or 0:.1f} ms, achieved {report['ok_rate']:,.0f}/s")

    def batch(self) -> None:
        s = self.sizes
        self.start_api()
        url = f"{self.api_url}/notify/batch"
        probe = httpx.post(url, json={"notifications": [notification("bench-probe")]}, timeout=30)
        if probe.status_code in (404, 405):
            self.figures["batch_throughput"] = unavailable(
                "batch_throughput", *FIGURES["batch_throughput"], f"POST /notify/batch answered {probe.status_code}"
            )
            log("POST /notify/batch: not available")
            return
        if probe.status_code != 200:
            raise RuntimeError(f"POST /notify/batch answered {probe.status_code}: {probe.text[:500]}")
        items = [notification("bench-batch") for _ in range(s.batch_size)]
        payload = json.dumps({"notifications": items}).encode()
        report = load.closed(
            url,
            payload,
            connections=s.batch_connections,
            duration=s.batch_seconds,
            warmup=s.warmup,
            count_results=True,
        )
        stored = self.count("SELECT count(*) FROM notifications WHERE recipient = 'bench-batch'")
        accepted = report["results"].get("202", 0)
        # An item answered 202 is committed: the answers' 202s over the measured time.
        rate = accepted / report["duration_s"] if report["duration_s"] else 0.0
        note = ""
        if report["ok"] < report["completed"] or set(report["results"]) - {"202"}:
            note = f"answers {report['statuses']}, items {report['results']}"
        self.figures["batch_throughput"] = figure(
            "batch_throughput",
            rate,
            20_000.0,
            ">=",
            note=note,
            details={"batch_size": s.batch_size, "rows_stored_incl_warmup": stored, "load": report},
        )
        log(f"POST /notify/batch: {rate:,.0f} notifications/s")

    def bare_drain(self) -> None:
        from bench.ceilings import bare_drain

        n = self.sizes.drain_count
        bare_drain.prepare(self.services.database_url, n)
        env = {
            **clean_env(),
            "BENCH_DRAIN_REDIS_URL": self.services.redis_url,
            "BENCH_DRAIN_NAMESPACE": f"{self.services.namespace}bare",
            "BENCH_DRAIN_DATABASE_URL": self.services.database_url,
            "dramatiq_worker_timeout": WORKER_POLL_MS,
        }
        enqueued = subprocess.run(
            [sys.executable, "-m", "bench.ceilings.bare_drain", "enqueue", str(n)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120 + n / 1000,
            check=False,
        )
        if enqueued.returncode != 0:
            raise RuntimeError(f"bare drain enqueue failed:\n{enqueued.stderr[-3000:]}")
        argv = [sys.executable, "-m", "dramatiq", "bench.ceilings.bare_drain"]
        argv += ["--processes", str(WORKER_PROCESSES), "--threads", str(BARE_DRAIN_THREADS)]
        started = time.monotonic()
        self.cpu.begin()
        workers = self.processes.start("bare-drain", argv, env)
        table = bare_drain.TABLE
        try:
            with self.services.connect() as conn:
                while True:
                    row = conn.execute(f"SELECT count(done_at) FROM {table}").fetchone()  # noqa: S608
                    if row and row[0] >= n:
                        break
                    workers.check()
                    if time.monotonic() - started > 120 + n / 100:
                        raise TimeoutError(f"bare drain: {row[0] if row else 0} of {n} done")
                    time.sleep(0.1)
                done = time.monotonic()
                cpu = self.cpu.end()
                row = conn.execute(
                    f"SELECT EXTRACT(EPOCH FROM max(done_at) - min(done_at))::float FROM {table}"  # noqa: S608
                ).fetchone()
        finally:
            self.processes.stop(workers)
            with self.services.connect() as conn:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            self.services.delete_keys(f"{self.services.namespace}bare")
        span = float(row[0]) if row and row[0] else 0.0
        rate = n / span if span else 0.0
        self.ceilings["bare_drain"] = {
            "value": rate,
            "unit": "msg/s",
            "messages": n,
            "first_to_last_s": span,
            "from_start_s": done - started,
            "cpu": cpu,
            "enqueue": json.loads(enqueued.stdout.strip().splitlines()[-1]),
        }
        log(f"bare drain ceiling: {rate:,.0f} msg/s")

    def drain(self) -> None:
        n = self.sizes.drain_count
        self.stop_delivery()
        self.start_api()
        accepted = self.accept("bench-drain", n)
        log(f"accepted {n} for the drain at {accepted['ok_rate']:,.0f}/s; starting the workers")
        started = time.monotonic()
        self.cpu.begin()
        self.start_worker()
        done = self.wait_sent("bench-drain", n, timeout=120 + n / 100)
        cpu = self.cpu.end()
        with self.services.connect() as conn:
            row = conn.execute(
                "SELECT EXTRACT(EPOCH FROM max(sent_at) - min(sent_at))::float FROM notifications"
                " WHERE recipient = 'bench-drain'"
            ).fetchone()
        span = float(row[0]) if row and row[0] else 0.0
        rate = n / span if span else 0.0
        ceiling = self.ceilings.get("bare_drain", {}).get("value")
        self.figures["drain_rate"] = figure(
            "drain_rate",
            rate,
            0.75,
            ">=",
            ceiling=ceiling,
            ceiling_name="bare drain",
            details={
                "messages": n,
                "first_to_last_s": span,
                "from_start_s": done - started,
                "cpu": cpu,
                "accept": accepted,
            },
        )
        log(f"delivery drain: {rate:,.0f} msg/s")

    def e2e(self) -> None:
        s = self.sizes
        self.start_api()
        self.start_worker()
        self.start_scheduler()
        self.wait_worker_ready()
        self.cpu.begin()
        report = load.open_rate(f"{self.api_url}/notify", body("bench-e2e"), rate=s.e2e_rate, duration=s.e2e_seconds)
        expected = self.count("SELECT count(*) FROM notifications WHERE recipient = 'bench-e2e'")
        self.wait_sent("bench-e2e", expected, timeout=60 + expected / 100)
        cpu = self.cpu.end()
        with self.services.connect() as conn:
            rows = conn.execute(
                "SELECT EXTRACT(EPOCH FROM n.sent_at - n.created_at)::float,"
                " EXTRACT(EPOCH FROM a.started_at - n.created_at)::float"
                " FROM notifications n JOIN delivery_attempts a ON a.notification = n.id AND a.outcome = 'sent'"
                " WHERE n.recipient = 'bench-e2e'"
            ).fetchall()
        latencies = [r[0] for r in rows]
        summary = load.summarise_ms(latencies)
        details = {
            "notifications": len(latencies),
            "latency_ms": summary,
            "accepted_to_claimed_ms": load.summarise_ms([r[1] for r in rows]),
            "claimed_to_sent_ms": load.summarise_ms([r[0] - r[1] for r in rows]),
            "cpu": cpu,
            "load": report,
        }
        note = ""
        if report["ok"] < report["sent"]:
            note = f"{report['sent'] - report['ok']} of {report['sent']} requests not accepted"
        self.figures["e2e_p50"] = figure("e2e_p50", summary["p50"], 25.0, note=note, details=details)
        self.figures["e2e_p99"] = figure("e2e_p99", summary["p99"], 150.0, note=note, details={})
        log(
            f"end to end at {s.e2e_rate:g}/s: p50 {summary['p50']:.1f} ms, p99 {summary['p99']:.1f} ms;"
            f" accepted to claimed p99 {details['accepted_to_claimed_ms']['p99']:.1f} ms,"
            f" claimed to sent p99 {details['claimed_to_sent_ms']['p99']:.1f} ms"
        )

    def burst(self) -> None:
        s = self.sizes
        n = s.burst_count
        self.start_api()
        self.start_worker()
        self.start_scheduler()
        self.wait_worker_ready()
        due = (datetime.now(UTC) + timedelta(seconds=s.burst_ahead)).replace(microsecond=0)
        report = self.accept("bench-burst", n, send_at=due.isoformat())
        created_by = datetime.now(UTC)
        log(f"created {n} due at {due:%H:%M:%S} ({(due - created_by).total_seconds():.1f}s ahead)")
        rate = self.figures["drain_rate"].value if "drain_rate" in self.figures else None
        wait = max(0.0, (due - datetime.now(UTC)).total_seconds())
        self.wait_sent("bench-burst", n, timeout=wait + 60 + n / 100)
        with self.services.connect() as conn:
            row = conn.execute(
                "SELECT EXTRACT(EPOCH FROM min(sent_at - send_at))::float,"
                " EXTRACT(EPOCH FROM max(sent_at - send_at))::float FROM notifications"
                " WHERE recipient = 'bench-burst'"
            ).fetchone()
        assert row is not None
        first, last = float(row[0]), float(row[1])
        bound = n / rate + 2 if rate else None
        note = ""
        if created_by > due:
            note = f"creating them took past the due time by {(created_by - due).total_seconds():.1f}s"
        details = {"notifications": n, "due": due.isoformat(), "accept": report, "drain_rate_used": rate}
        self.figures["burst_first"] = figure("burst_first", first, 1.0, note=note, details=details)
        self.figures["burst_last"] = figure(
            "burst_last",
            last,
            bound,
            note="" if bound else "no delivery rate from the drain figure to bound it",
            details={"bound_s": bound},
        )
        log(f"burst of {n}: first {first:.2f}s, last {last:.2f}s after due (bound {bound or 0:.1f}s)")

    def memory(self) -> None:
        s = self.sizes
        self.start_api()
        self.start_worker()
        self.start_scheduler()
        self.wait_worker_ready()
        api, worker = self.api, self.worker
        assert api is not None
        assert worker is not None
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic(), api.rss(), worker.rss()))
                stop.wait(s.memory_interval)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            report = self.accept("bench-memory", s.memory_count)
            self.wait_sent("bench-memory", s.memory_count, timeout=120 + s.memory_count / 100)
        finally:
            stop.set()
            sampler.join(timeout=5)
        for index, name in ((1, "api_rss_drift"), (2, "worker_rss_drift")):
            values = [sample[index] for sample in samples]
            quarter = len(values) // 4
            if quarter < 1:
                raise RuntimeError(f"only {len(values)} memory samples")
            second = statistics.median(values[quarter : 2 * quarter])
            last = statistics.median(values[3 * quarter :])
            drift = (last / second - 1) * 100
            self.figures[name] = figure(
                name,
                drift,
                10.0,
                "within",
                details={
                    "notifications": s.memory_count,
                    "samples": len(values),
                    "second_quarter_median_mib": second / MIB,
                    "last_quarter_median_mib": last / MIB,
                    "max_mib": max(values) / MIB,
                    "first_mib": values[0] / MIB,
                    "series_mib": [round(v / MIB, 1) for v in values[:: max(1, len(values) // 200)]],
                    **({"accept": report} if index == 1 else {}),
                },
            )
            log(f"{name}: {drift:+.1f}% ({second / MIB:.0f} -> {last / MIB:.0f} MiB)")

    def scheduled(self) -> None:
        from notifier import settings as settings_module
        from notifier.services.relay import Relay
        from notifier.services.rules import RuleScheduler
        from notifier.store.delivery import open_pool
        from notifier.worker.broker import build, enqueuer

        s = self.sizes
        self.stop_delivery()
        self.services.reset()
        self.start_api()
        started = time.monotonic()
        with self.services.connect() as conn:
            conn.execute(
                "INSERT INTO notifications (id, channel, recipient, body, metadata, send_at, status, created_at,"
                " updated_at) SELECT gen_random_uuid(), 'log', 'bench-scheduled-' || (g %% 1000),"
                " 'scheduled ahead', '{}'::jsonb, now() + interval '2 days' + g * interval '100 milliseconds',"
                " 'scheduled', now() - (%s - g) * interval '1 millisecond', now() FROM generate_series(1, %s) g",
                (s.scheduled_count, s.scheduled_count),
            )
            conn.execute("VACUUM ANALYZE notifications")
        log(f"inserted {s.scheduled_count:,} scheduled notifications in {time.monotonic() - started:.1f}s")
        with httpx.Client(base_url=self.api_url, timeout=30) as client:
            for i in range(s.rules):
                created = client.post(
                    "/rules",
                    json={
                        "name": f"bench-rule-{i}",
                        "schedule": "* * * * *",
                        "channel": "log",
                        "recipients": [f"bench-rule-{i}"],
                        "body": "tick at {{ local_time }}",
                    },
                )
                if created.status_code != 201:
                    raise RuntimeError(f"POST /rules answered {created.status_code}: {created.text[:500]}")
            pages = self._pages(client)

        settings = settings_module.load(self.services.notifier_env())
        pool = open_pool(settings.database.url, size=2)
        broker = build(settings)
        try:
            relay = Relay(settings, pool, enqueuer(broker))
            rules = RuleScheduler(settings, pool)
            relay_ms: list[float] = []
            tick_ms: list[float] = []
            relayed = fired = 0
            for _ in range(s.timing_runs):
                t0 = time.perf_counter()
                fired += rules.fire_due()
                t1 = time.perf_counter()
                relayed += relay.relay_once()
                t2 = time.perf_counter()
                tick_ms.append((t1 - t0) * 1000)
                relay_ms.append((t2 - t1) * 1000)
        finally:
            pool.close()
            broker.close()
        scale = {"scheduled": s.scheduled_count, "rules": s.rules, "runs": s.timing_runs}
        self.figures["relay_pass"] = figure(
            "relay_pass",
            max(relay_ms),
            100.0,
            details={**scale, "ms": relay_ms, "median_ms": statistics.median(relay_ms), "enqueued": relayed},
        )
        self.figures["rule_tick"] = figure(
            "rule_tick",
            max(tick_ms),
            100.0,
            details={**scale, "ms": tick_ms, "median_ms": statistics.median(tick_ms), "created": fired},
        )
        all_pages = [v * 1000 for values in pages.values() for v in values]
        self.figures["list_pages_p99"] = figure(
            "list_pages_p99",
            load.percentile(all_pages, 99),
            50.0,
            details={**scale, "requests": len(all_pages), **{k: load.summarise_ms(v) for k, v in pages.items()}},
        )
        log(
            f"with {s.scheduled_count:,} scheduled: relay worst {max(relay_ms):.1f} ms, tick worst"
            f" {max(tick_ms):.1f} ms, pages p99 {load.percentile(all_pages, 99) or 0:.1f} ms"
        )

    def _pages(self, client: httpx.Client) -> dict[str, list[float]]:
        """Seconds per ``GET /notifications`` page: first pages, and cursor walks, with and without a status."""
        s = self.sizes
        timings: dict[str, list[float]] = {}

        def get(key: str, params: dict[str, str | int]) -> dict[str, Any]:
            t0 = time.perf_counter()
            answer = client.get("/notifications", params=params)
            elapsed = time.perf_counter() - t0
            if answer.status_code != 200:
                raise RuntimeError(f"GET /notifications answered {answer.status_code}: {answer.text[:500]}")
            timings.setdefault(key, []).append(elapsed)
            page: dict[str, Any] = answer.json()
            return page

        for status in (None, "scheduled"):
            base: dict[str, str | int] = {"limit": 50, **({"status": status} if status else {})}
            suffix = f"_{status}" if status else ""
            for _ in range(5):
                get("warmup", base)
            for _ in range(s.page_requests):
                get(f"first_page{suffix}", base)
            cursor = None
            for _ in range(s.cursor_pages):
                page = get(f"cursor_walk{suffix}", {**base, **({"cursor": cursor} if cursor else {})})
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        timings.pop("warmup", None)
        return timings

    # --- the run -----------------------------------------------------------------------------------

    PHASES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        ("bare_api", "bare_api", ()),
        ("notify", "notify", ("notify_throughput", "notify_p99_at_1000")),
        ("batch", "batch", ("batch_throughput",)),
        ("bare_drain", "bare_drain", ()),
        ("drain", "drain", ("drain_rate",)),
        ("e2e", "e2e", ("e2e_p50", "e2e_p99")),
        ("burst", "burst", ("burst_first", "burst_last")),
        ("memory", "memory", ("api_rss_drift", "worker_rss_drift")),
        ("scheduled", "scheduled", ("relay_pass", "rule_tick", "list_pages_p99")),
    )

    def run(self, only: set[str] | None = None) -> list[str]:
        """Run the phases; the names of those that failed."""
        failures: list[str] = []
        first = True
        for phase, method, names in self.PHASES:
            if only and phase not in only:
                continue
            if not first:  # each phase starts empty: no backlog of the last one ahead of its messages
                self.stop_delivery()
                self.services.reset()
            first = False
            log(f"phase {phase}")
            started = time.monotonic()
            step: Callable[[], None] = getattr(self, method)
            try:
                step()
            except Exception as exc:
                failures.append(phase)
                log(f"phase {phase} failed: {exc!r}")
                traceback.print_exc()
                for name in names:
                    if name not in self.figures:
                        self.figures[name] = failed(name, *FIGURES[name], exc)
                if not names:
                    self.ceilings[phase] = {"value": None, "error": f"{type(exc).__name__}: {exc}"}
            self.phases[phase] = time.monotonic() - started
        return failures

    def ordered(self) -> list[Figure]:
        return [self.figures[name] for name in FIGURES if name in self.figures]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="notifier's benchmark suite (issue 5).")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the suite works (< 2 min)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="an admin PostgreSQL URL")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--output", type=Path, help="the JSON file (default: bench/results/<UTC timestamp>.json)")
    parser.add_argument("--only", help="comma-separated phases: " + ", ".join(p for p, _, _ in Suite.PHASES))
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs even when all went well")
    parser.add_argument(
        "--metrics",
        choices=("on", "off"),
        default="on",
        help="NOTIFIER_METRICS_ENABLED for the notifier processes (default: on, as shipped); compare the two",
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    started_at = datetime.now(UTC)
    suffix = ("-smoke" if args.smoke else "") + ("-metrics-off" if args.metrics == "off" else "")
    output: Path = args.output or RESULTS / f"{started_at:%Y%m%dT%H%M%SZ}{suffix}.json"
    log_dir = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    services = Services(args.database_url, args.redis_url, metrics=args.metrics == "on")
    processes = Processes(log_dir)
    suite = Suite(sizes, services, processes)
    failures: list[str] = []
    interrupted = False
    clock = time.monotonic()
    with terminate_as_interrupt():
        try:
            log(
                f"{'smoke' if args.smoke else 'full'} run, metrics {args.metrics}; database {services.database},"
                f" logs in {log_dir}"
            )
            services.create()
            only = {p.strip() for p in args.only.split(",")} if args.only else None
            failures = suite.run(only)
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted; stopping everything")
        except Exception as exc:
            failures.append(f"setup: {exc!r}")
            traceback.print_exc()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
                signal.signal(sig, signal.SIG_IGN)
            processes.stop_all()
            info = {}
            with contextlib.suppress(Exception):
                info = machine(services.database_url, services.redis_url)
            try:
                services.drop()
            except Exception as exc:
                log(f"could not drop {services.database}: {exc!r}")
    elapsed = time.monotonic() - clock
    figures = suite.ordered()
    print()
    print(table(figures))
    print()
    ceilings = ", ".join(
        f"{name} {c['value']:,.0f} {c['unit']}" for name, c in suite.ceilings.items() if c.get("value") is not None
    )
    print(f"ceilings: {ceilings or 'none measured'}; took {elapsed:.0f}s")
    document = {
        "mode": "smoke" if args.smoke else "full",
        "metrics": args.metrics,
        "started_at": started_at.isoformat(),
        "duration_s": elapsed,
        "phases_s": suite.phases,
        "failed_phases": failures,
        "interrupted": interrupted,
        "sizes": asdict(sizes),
        "database": services.database,
        "redis_namespace": services.namespace,
        "machine": info,
        "ceilings": suite.ceilings,
        "figures": as_json(figures),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2, default=str))
    print(f"results: {output}")
    if failures or interrupted or args.keep_logs:
        print(f"process logs: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    if interrupted:
        sys.exit(130)
    sys.exit(1 if failures else 0)
