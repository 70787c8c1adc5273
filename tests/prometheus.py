"""A real Prometheus server for the tests: Debian's ``prometheus`` binary on loopback, scraping
static targets every second, with a small client for its HTTP API.

Its configuration and its TSDB live in a temporary directory of its own, removed when it stops::

    targets = [Target("notifier-api", f"127.0.0.1:{api_port}"), Target("notifier-worker", ...)]
    with PrometheusServer(targets) as prometheus:
        prometheus.wait_targets_up()
        prometheus.query("sum(rate(notifier_api_requests_total[1m]))")

The job names are the metric contract's (:data:`JOBS`); the fixture ``start_prometheus`` in
``tests/e2e/conftest.py`` starts one per test and skips (or, under ``CI=true``, fails) when the
binary is missing.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from tests.conftest import free_port

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
JOBS = ("notifier-api", "notifier-worker", "notifier-scheduler")
"""The scrape job names every Prometheus configuration of the project uses (compose, tests, chart)."""
SCRAPE_INTERVAL = 1.0
"""Seconds between two scrapes of a target: short, so that a test sees rates within seconds."""


def find_prometheus() -> Path | None:
    """The ``prometheus`` binary: Debian's, else the first on ``PATH``; None when there is none."""
    if PROMETHEUS.exists():
        return PROMETHEUS
    found = shutil.which("prometheus")
    return Path(found) if found else None


@dataclass(frozen=True)
class Target:
    """One scrape target: a job name, a ``host:port`` and the path of its metrics."""

    job: str
    address: str
    metrics_path: str = "/metrics"
    bearer_token: str | None = None
    """Sent as ``Authorization: Bearer …`` (the API's metrics behind ``NOTIFIER_METRICS_AUTH=true``)."""


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and its ``(unix time, value)`` points (NaN kept as NaN)."""

    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def finite(self) -> list[float]:
        return [v for _, v in self.points if math.isfinite(v)]


class PrometheusError(AssertionError):
    """Prometheus answered a query with an error (a bad expression, a timeout), or never came up."""


def config(targets: Sequence[Target], rule_files: Sequence[Path] = ()) -> dict[str, Any]:
    """The ``prometheus.yml`` for ``targets``: one scrape job per job name, scraped every second."""
    jobs: dict[str, list[Target]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    scrape_configs = []
    for job, members in jobs.items():
        paths = {(t.metrics_path, t.bearer_token) for t in members}
        if len(paths) != 1:
            raise ValueError(f"the targets of job {job} differ in metrics path or credentials: {paths}")
        [(path, token)] = paths
        scrape: dict[str, Any] = {
            "job_name": job,
            "metrics_path": path,
            "static_configs": [{"targets": [t.address for t in members]}],
        }
        if token is not None:
            scrape["authorization"] = {"type": "Bearer", "credentials": token}
        scrape_configs.append(scrape)
    interval = f"{int(SCRAPE_INTERVAL * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": scrape_configs,
    }


class PrometheusServer:
    """A ``prometheus`` process on 127.0.0.1 and a free port, scraping ``targets``; a context manager.

    ``rule_files`` are loaded as recording/alerting rules, evaluated every second (see :meth:`rules`).
    """

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        rule_files: Sequence[Path] = (),
        binary: Path | None = None,
        work_dir: Path | None = None,
    ) -> None:
        found = binary or find_prometheus()
        if found is None:
            raise FileNotFoundError("no prometheus binary: apt-get install -y prometheus")
        self.binary = found
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self._own_dir = work_dir is None
        self.dir = work_dir or Path(tempfile.mkdtemp(prefix="notifier-prometheus-"))
        self.port = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- lifecycle

    def start(self, timeout: float = 30) -> Self:
        config_path = self.dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config(self.targets, self.rule_files), sort_keys=False))
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        self.port = free_port()
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={data}",
                    "--storage.tsdb.retention.time=1h",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._poll(self._ready, timeout, "Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise PrometheusError(f"prometheus exited with {self.popen.returncode}:\n{self.log()}")
        return self.client.get(f"{self.url}/-/ready").status_code == 200

    def stop(self) -> None:
        self.client.close()
        popen, self.popen = self.popen, None
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        # Its TSDB always goes; a directory it was given keeps the config and the log for a post-mortem.
        shutil.rmtree(self.dir if self._own_dir else self.dir / "data", ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP API

    def _get(self, path: str, **params: Any) -> Any:
        response = self.client.get(f"{self.url}{path}", params=params)
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusError(f"GET {path} {params}: {response.status_code} {response.text[:500]}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def targets_status(self) -> list[dict[str, Any]]:
        """The active targets as ``/api/v1/targets`` gives them (``labels.job``, ``health``, ``lastError``)."""
        active: list[dict[str, Any]] = self._get("/api/v1/targets", state="active")["activeTargets"]
        return active

    def wait_targets_up(self, jobs: Iterable[str] | None = None, timeout: float = 30) -> None:
        """Wait until every target of ``jobs`` (all configured jobs by default) has been scraped with
        success; on timeout, the error names each target still down and why."""
        wanted = set(jobs) if jobs is not None else {t.job for t in self.targets}
        down: list[str] = []

        def up() -> bool:
            down.clear()
            seen = set()
            for target in self.targets_status():
                job = target["labels"]["job"]
                if job not in wanted:
                    continue
                seen.add(job)
                if target["health"] != "up":
                    down.append(f"{job} {target['scrapeUrl']}: {target['health']} {target['lastError']}".strip())
            down.extend(f"{job}: not among the active targets" for job in sorted(wanted - seen))
            return not down

        self._poll(up, timeout, "the targets to be up", lambda: "; ".join(down))

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the ``result`` list (for a vector, ``[{"metric": {…}, "value": [t, "v"]}]``)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._get("/api/v1/query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """A range query, each series with its points as floats (``"NaN"``, ``"+Inf"`` become floats too)."""
        data = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)
        return [
            Series(labels=dict(item["metric"]), points=[(float(t), float(v)) for t, v in item["values"]])
            for item in data["result"]
        ]

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, as ``/api/v1/rules`` gives them (``name``, ``health``, ``lastError``, ``state``)."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def _poll(self, predicate: Any, timeout: float, what: str, detail: Any = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                extra = detail() if detail is not None else ""
                raise PrometheusError(f"timed out after {timeout}s waiting for {what}{': ' + extra if extra else ''}")
            time.sleep(0.1)


def scrape_samples(url: str, *, headers: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """A direct scrape of ``url``: each sample name (``x_total``, ``x_bucket``, …) with its family's type."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url, headers=headers, timeout=10)
    response.raise_for_status()
    samples: dict[str, dict[str, str]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {"family": family.name, "type": family.type})
    return samples
