"""Buffered multiprocess values, in a process of their own (prometheus-client picks its value class
from the environment as it is imported): exact across threads, on the files within the interval and
at the final flush, read by prometheus-client's own multiprocess collector."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from notifier.observability import multiprocess
from tests.e2e.conftest import wait_until
from tests.scrape import Scrape, parse

COUNTING = """
import sys, threading, time
from notifier.observability import multiprocess
multiprocess.install(interval=float(sys.argv[1]))
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
registry = CollectorRegistry()
counter = Counter("notifier_test", "t", ["outcome"], registry=registry)
histogram = Histogram("notifier_test_seconds", "t", registry=registry, buckets=(0.1, 1.0))
gauge = Gauge("notifier_test_inprogress", "t", registry=registry, multiprocess_mode="livesum")
sent = counter.labels("sent")
tally = multiprocess.counts()
tallied = Counter("notifier_tallied", "t", ["outcome"], registry=registry).labels("sent")
tallied_histogram = Histogram("notifier_tallied_seconds", "t", registry=registry, buckets=(0.1, 1.0))

def count():
    for _ in range(1000):
        sent.inc()
        histogram.observe(0.5)
        gauge.inc()
        gauge.dec()
        tally.count(tallied, 1)
        tally.observe(tallied_histogram, 0.5)

threads = [threading.Thread(target=count) for _ in range(32)]
[t.start() for t in threads]
[t.join() for t in threads]
gauge.set(3)
if sys.argv[2] == "flush":
    multiprocess.flush()
else:
    print("counted", flush=True)
    time.sleep(60)  # until the test has seen the files change, and stops this process
"""


def counting(directory: Path, interval: float, end: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    code = textwrap.dedent(COUNTING)
    return subprocess.Popen(
        [sys.executable, "-c", code, str(interval), end], env=env, text=True, stdout=subprocess.PIPE
    )


def collected(directory: Path) -> Scrape:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return parse(generate_latest(registry).decode())


def test_counts_from_32_threads_are_exact_on_the_files_after_the_final_flush(tmp_path: Path) -> None:
    process = counting(tmp_path, 3600, "flush")  # no periodic copy: only the flush writes
    assert process.wait(timeout=60) == 0
    got = collected(tmp_path)
    assert got.value("notifier_test_total", outcome="sent") == 32_000
    assert got.value("notifier_test_seconds_count") == 32_000
    assert got.value("notifier_test_seconds_bucket", le="1.0") == 32_000
    assert got.value("notifier_test_seconds_bucket", le="0.1") == 0
    assert got.value("notifier_test_inprogress") == 3
    assert got.value("notifier_tallied_total", outcome="sent") == 32_000
    assert got.value("notifier_tallied_seconds_count") == 32_000
    assert got.value("notifier_tallied_seconds_bucket", le="1.0") == 32_000
    assert got.value("notifier_tallied_seconds_sum") == 16_000


def test_the_flusher_copies_the_counts_within_its_interval(tmp_path: Path) -> None:
    process = counting(tmp_path, 0.05, "wait")
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "counted"
        wait_until(
            lambda: (
                collected(tmp_path).value("notifier_test_total", outcome="sent") == 32_000
                and collected(tmp_path).value("notifier_tallied_total", outcome="sent") == 32_000
            ),
            10,
            "the flusher to copy the counts",
        )
    finally:
        process.kill()
        process.wait(timeout=10)


def test_nothing_changes_outside_multiprocess_mode() -> None:
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    before = values.ValueClass
    multiprocess.install()
    assert values.ValueClass is before
    multiprocess.flush()  # nothing to write, and no error
