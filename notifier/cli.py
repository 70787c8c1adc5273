"""The composition root: ``notifier api | worker | migrate | dev | settings``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from notifier import settings as settings_module
from notifier.errors import ConfigurationError
from notifier.observability import tracing
from notifier.observability.logging import configure_logging

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

logger = logging.getLogger("notifier.cli")

DRAIN_TIMEOUT_MS = 30_000
WORKER_POLL_MS = 100


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="notifier",
        description="Self-hosted notification service. Every setting is a NOTIFIER_* variable: "
        "`notifier settings` lists them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    api = commands.add_parser("api", help="serve the REST API", description="Serve the REST API with uvicorn.")
    api.add_argument("--host", help="address to bind (default: NOTIFIER_API_HOST)")
    api.add_argument("--port", type=int, help="port to bind (default: NOTIFIER_API_PORT)")
    api.set_defaults(run=run_api)

    worker = commands.add_parser(
        "worker", help="deliver notifications", description="Run Dramatiq worker processes that deliver notifications."
    )
    worker.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    worker.add_argument("--threads", type=int, default=32, help="threads per process (default: 32)")
    worker.set_defaults(run=run_worker)

    scheduler = commands.add_parser(
        "scheduler",
        help="send periodic ticks and relay the outbox",
        description="Run periodiq (a tick a minute that fires recurring rules) and the outbox relay "
        "(every NOTIFIER_DELIVERY_OUTBOX_INTERVAL: promotes due notifications to the queue). "
        "Two at once are safe: both share the work without doubling it.",
    )
    scheduler.set_defaults(run=run_scheduler)

    migrate = commands.add_parser(
        "migrate",
        help="apply database migrations",
        description="Apply pending migrations to NOTIFIER_DATABASE_URL; safe to run from several places at once.",
    )
    migrate.set_defaults(run=run_migrate)

    dev = commands.add_parser(
        "dev",
        help="run everything locally",
        description="Run the API, a worker and the scheduler for local use. Without "
        "NOTIFIER_DATABASE_URL / NOTIFIER_REDIS_URL, start an embedded PostgreSQL and Redis "
        "that keep their data under --data-dir.",
    )
    dev.add_argument(
        "--data-dir", type=Path, default=Path(".notifier"), help="where embedded data lives (default: .notifier)"
    )
    dev.add_argument("--host", default="127.0.0.1", help="API address (default: 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8000, help="API port (default: 8000)")
    dev.set_defaults(run=run_dev)

    table = commands.add_parser("settings", help="print the NOTIFIER_* variables as a Markdown table")
    table.set_defaults(run=run_settings)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ConfigurationError as exc:
        sys.exit(f"notifier: configuration error: {exc}")


def run_api(args: argparse.Namespace) -> None:
    import uvicorn

    from notifier.api.app import create_app
    from notifier.worker.broker import AsyncEnqueuer, queue_depths, ticker
    from notifier.worker.broker import build as build_broker

    settings = settings_module.load()
    if not settings.api.keys and not settings.auth.disabled:
        raise ConfigurationError(
            "NOTIFIER_API_KEYS is empty: set API keys, or NOTIFIER_AUTH_DISABLED=true to run without authentication"
        )
    configure_logging(settings.log.level)
    if settings.auth.disabled and not settings.api.keys:
        logger.warning("authentication is disabled (NOTIFIER_AUTH_DISABLED=true)")
    tracing.configure("notifier-api")
    broker = build_broker(settings)
    uvicorn.run(
        create_app(settings, broker, AsyncEnqueuer(broker, settings.redis.url), ticker(broker), queue_depths),
        host=args.host or settings.api.host,
        port=settings.api.port if args.port is None else args.port,
        log_config=None,
        proxy_headers=True,
        access_log=settings.api.access_log,
        server_header=False,
    )


def run_worker(args: argparse.Namespace) -> None:
    # An idle consumer polls Redis this often (Dramatiq's default is 1 s). A delayed message takes
    # two hops (its delay queue, then the work queue), so this bounds how late a send_at fires.
    os.environ.setdefault("dramatiq_worker_timeout", str(WORKER_POLL_MS))
    settings = settings_module.load()  # fail here, once, rather than in every forked process
    with _metrics_directory(settings) as directory:
        if directory is not None:
            # Read as prometheus-client and Dramatiq's Prometheus middleware are imported, by the
            # worker processes and the exposition server this process forks: so set before both.
            os.environ.update(
                {
                    "PROMETHEUS_MULTIPROC_DIR": directory,
                    "dramatiq_prom_db": directory,
                    "dramatiq_prom_host": settings.metrics.host,
                    "dramatiq_prom_port": str(settings.worker.metrics_port),
                }
            )
        code = _run_dramatiq(args)
    sys.exit(code)


@contextlib.contextmanager
def _metrics_directory(settings: settings_module.Settings) -> Iterator[str | None]:
    """The directory the worker processes share their metrics through, emptied of an earlier run's
    files (``NOTIFIER_METRICS_DIR``, else one of this run's own, removed after); ``None`` when
    metrics are off."""
    if not settings.metrics.enabled:
        yield None
        return
    if settings.metrics.dir:
        directory = Path(settings.metrics.dir)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):  # prometheus-client's files only: the directory may hold others
            stale.unlink(missing_ok=True)
        yield str(directory)
        return
    own = tempfile.mkdtemp(prefix="notifier-worker-metrics-")
    try:
        yield own
    finally:
        shutil.rmtree(own, ignore_errors=True)


def _run_dramatiq(args: argparse.Namespace) -> int:
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    dramatiq_args = make_argument_parser().parse_args(
        [
            "notifier.worker.app:setup",  # each worker process builds its broker and actors with this
            "--processes",
            str(args.processes),
            "--threads",
            str(args.threads),
            "--skip-logging",
            "--worker-shutdown-timeout",
            str(DRAIN_TIMEOUT_MS),
        ]
    )
    code: int = dramatiq_main(dramatiq_args)
    return code


def run_scheduler(args: argparse.Namespace) -> None:
    from notifier.services.relay import Relay
    from notifier.worker import schedules
    from notifier.worker.app import Resources, install_broker
    from notifier.worker.broker import enqueuer

    settings = settings_module.load()
    configure_logging(settings.log.level)
    tracing.configure("notifier-scheduler")
    exposition = _serve_metrics(settings.metrics, settings.scheduler.metrics_port)
    broker = install_broker(settings)
    resources = Resources(settings)  # the relay's pool; the tick only needs declaring, to be sent
    schedules.declare(broker, resources.rules)
    stop = threading.Event()
    relay = threading.Thread(
        target=Relay(settings, resources.pool(), enqueuer(broker)).run, args=(stop,), name="outbox-relay", daemon=True
    )
    relay.start()

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    logger.info("scheduler started", extra={"tick": schedules.TICK})
    periodic = [actor for actor in broker.actors.values() if "periodic" in actor.options]
    scheduler = schedules.TickScheduler(actors=periodic)
    try:
        scheduler.schedule()
        scheduler.loop()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        relay.join(timeout=10)
        tracing.flush()
        if exposition is not None:
            exposition.shutdown()


def _serve_metrics(config: settings_module.MetricsSettings, port: int) -> WSGIServer | None:
    """Count this process's metrics on prometheus-client's default registry (with its ``process_*``
    and ``python_*`` families) and serve them on ``NOTIFIER_METRICS_HOST:port``; ``None`` when off."""
    if not config.enabled:
        return None
    from prometheus_client import start_http_server

    from notifier.observability import metrics

    metrics.install("scheduler")
    try:
        server, _ = start_http_server(port, addr=config.host)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {config.host}:{port}: {exc}") from None
    logger.info("serving metrics", extra={"host": config.host, "port": port})
    return server


def run_migrate(args: argparse.Namespace) -> None:
    from notifier.store.schema import migrate

    migrate(settings_module.load_database().url)


def run_settings(args: argparse.Namespace) -> None:
    print("| Variable | Type | Default | Meaning |")
    print("|---|---|---|---|")
    for row in settings_module.describe():
        print(f"| `{row.env}` | {row.type} | {row.default} | {row.description} |")


def run_dev(args: argparse.Namespace) -> None:
    from notifier.dev import EmbeddedServices

    data_dir: Path = args.data_dir.resolve()
    env = dict(os.environ)
    try:
        with EmbeddedServices(data_dir) as services:
            if "NOTIFIER_DATABASE_URL" not in env:
                env["NOTIFIER_DATABASE_URL"] = services.postgres()
            if "NOTIFIER_REDIS_URL" not in env:
                env["NOTIFIER_REDIS_URL"] = services.redis()
            if not env.get("NOTIFIER_API_KEYS"):
                env.setdefault("NOTIFIER_AUTH_DISABLED", "true")
            # Local use: a webhook receiver on this machine is the usual first target.
            env.setdefault("NOTIFIER_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
            # ... and metrics for this machine only.
            env.setdefault("NOTIFIER_METRICS_HOST", "127.0.0.1")
            settings_module.load(env)
            from notifier.store.schema import migrate

            migrate(env["NOTIFIER_DATABASE_URL"])
            _serve_dev(args, env, data_dir)
    except KeyboardInterrupt:  # Ctrl-C while starting up: the embedded servers are already stopped
        pass


DEV_COMMANDS = {
    "api": ["api"],
    "worker": ["worker", "--processes", "1", "--threads", "4"],
    "scheduler": ["scheduler"],
}


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _serve_dev(args: argparse.Namespace, env: dict[str, str], data_dir: Path) -> None:
    """Run the API, a worker and the scheduler until Ctrl-C (or SIGTERM, SIGHUP), then stop them.

    Each child runs in a session of its own, so a Ctrl-C at the terminal reaches this process
    alone and each child gets exactly one SIGTERM from it: a second signal would make Dramatiq kill
    its worker processes mid-drain, and an embedded Redis stopped by the same Ctrl-C would leave
    the draining worker with connection errors. The embedded servers stop after the children.
    """
    base = f"http://{args.host}:{args.port}"
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    extra = {"api": ["--host", args.host, "--port", str(args.port)]}
    settings = settings_module.load(env)
    metrics = (
        f"  metrics    {base}/metrics, worker http://{settings.metrics.host}:{settings.worker.metrics_port}/metrics,"
        f" scheduler http://{settings.metrics.host}:{settings.scheduler.metrics_port}/metrics\n"
        if settings.metrics.enabled
        else ""
    )
    children = {
        name: subprocess.Popen(
            [sys.executable, "-m", "notifier", *command, *extra.get(name, [])], env=env, start_new_session=True
        )
        for name, command in DEV_COMMANDS.items()
    }
    print(
        f"\nnotifier dev is running\n"
        f"  API        {base}   (GET / leads to the docs)\n"
        f"  API docs   {base}/schema   (OpenAPI: {base}/schema/openapi.json)\n"
        f"  queues     {base}/dramatiq\n"
        f"{metrics}"
        f"  data       {data_dir}\n"
        f"  database   {env['NOTIFIER_DATABASE_URL']}\n"
        f"  redis      {env['NOTIFIER_REDIS_URL']}\n"
        f"Stop with Ctrl-C; the data stays for the next start.\n",
        flush=True,
    )
    exited: list[str] = []
    try:
        while not exited:
            time.sleep(0.2)
            exited = [name for name, child in children.items() if child.poll() is not None]
        logger.error("notifier dev: %s exited; stopping the others", ", ".join(exited))
    except KeyboardInterrupt:
        print("\nnotifier dev: stopping (the worker finishes what it is sending; Ctrl-C again to kill)", flush=True)
    finally:
        _stop_dev_children(list(children.values()))
    if exited:
        sys.exit(1)


def _stop_dev_children(children: list[subprocess.Popen[bytes]]) -> None:
    """Send each child one SIGTERM and wait for it (the worker drains for up to DRAIN_TIMEOUT_MS);
    on timeout or a second Ctrl-C, kill what is left, with the processes it started."""
    try:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT_MS / 1000 + 5
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # a leader's group: Dramatiq's worker processes too
            child.wait()
