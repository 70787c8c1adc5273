"""Generate ``dashboards/notifier.json``, the Grafana dashboard, with Grafana's foundation SDK.

``uv run python dashboards/generate.py`` rewrites the file; ``--check`` rewrites nothing and exits
1 when the committed file differs from what this code generates. Every query is written against
the metric contract in ``dashboards/metrics.py``; the thresholds repeat those of ``alerts.yaml``
so a panel turns red where the alert fires.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

if __package__ in (None, ""):  # run as a script: make `dashboards` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboards.metrics import DASHBOARD, WORKER_JOB

UID = "notifier"
# The uid of the datasource compose provisions (dashboards/grafana/provisioning/datasources/).
DATASOURCE_UID = "notifier-prometheus"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
WORKER = f'job="{WORKER_JOB}", instance=~"$instance"'

# The alert thresholds (alerts.yaml) the panels colour at.
FAILURE_RATIO = 0.10
API_ERROR_RATIO = 0.05
OLDEST_READY_AGE = 300
LATENESS_P99 = 60

# The three failed attempt outcomes, and every attempt (abandoned and dead_lettered are no attempts).
FAILED = "transient_error|permanent_error|timeout"
ATTEMPTS = f"sent|{FAILED}"


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    """A range query on the dashboard's datasource."""
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE).range()


def quantiles(
    histogram: str, by: str, legend: str, levels: Sequence[float] = (0.5, 0.95, 0.99)
) -> list[prometheus.Dataquery]:
    """One ``histogram_quantile`` query per level, over ``histogram``'s buckets summed ``by`` labels."""
    return [
        query(
            f"histogram_quantile({level}, sum by ({by}, le) (rate({histogram}_bucket[{RATE}])))",
            f"p{round(level * 100)} {legend}",
            chr(ord("A") + i),
        )
        for i, level in enumerate(levels)
    ]


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (from minus infinity)."""
    return (
        dash.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def series(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    width: int = 8,
    stacked: bool = False,
    limits: dash.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    """A time series panel: legend as a table with mean and max, a line at each threshold."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(targets))
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max"])
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if limits is not None:
        panel = panel.thresholds(limits).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    return panel


def single(
    title: str, description: str, unit: str, target: prometheus.Dataquery, limits: dash.ThresholdsConfig
) -> stat.Panel:
    """A stat panel: the last value, coloured by ``limits``, with its sparkline."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(target)
        .unit(unit)
        .span(4)
        .height(8)
        .thresholds(limits)
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def overview(board: dash.Dashboard) -> dash.Dashboard:
    """Traffic in and out per channel, what became of it, and what failed for good."""
    return (
        board.with_row(dash.Row("Overview"))
        .with_panel(
            series(
                "Accepted per channel",
                "Notifications accepted per second, by channel and source (api, batch, event, rule).",
                "ops",
                [
                    query(
                        f"sum by (channel, source) (rate(notifier_notifications_accepted_total[{RATE}]))",
                        "{{channel}} ({{source}})",
                    )
                ],
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Delivered per channel",
                "Notifications sent per second (the provider accepted them), by channel.",
                "ops",
                [query(f'sum by (channel) (rate(notifier_deliveries_total{{outcome="sent"}}[{RATE}]))', "{{channel}}")],
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Delivery outcomes",
                "Per second: each attempt's outcome, messages abandoned unattempted, notifications dead-lettered.",
                "ops",
                [query(f"sum by (outcome) (rate(notifier_deliveries_total[{RATE}]))", "{{outcome}}")],
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Failure ratio per channel",
                "Failed attempts (transient, permanent, timeout) over all attempts. The alert fires above "
                f"{FAILURE_RATIO:.0%} for 10 minutes.",
                "percentunit",
                [
                    query(
                        f'sum by (channel) (rate(notifier_deliveries_total{{outcome=~"{FAILED}"}}[{RATE}]))'
                        f' / sum by (channel) (rate(notifier_deliveries_total{{outcome=~"{ATTEMPTS}"}}[{RATE}]))',
                        "{{channel}}",
                    )
                ],
                width=8,
                limits=thresholds((None, "green"), (FAILURE_RATIO / 2, "orange"), (FAILURE_RATIO, "red")),
            )
        )
        .with_panel(
            series(
                "Notifications by status",
                "Rows in PostgreSQL by status (read by the API at scrape, cached a few seconds).",
                "short",
                [query("max by (status) (notifier_notifications)", "{{status}}")],
                width=8,
            )
        )
        .with_panel(
            single(
                "Dead letters",
                "Notifications in the dead-letter stream: failed for good, waiting for an operator.",
                "short",
                query("max(notifier_dead_letters)", "dead letters"),
                thresholds((None, "green"), (1, "red")),
            )
        )
        .with_panel(
            single(
                "Processes up",
                "Scrape targets up, by job: the API, the workers, the schedulers.",
                "short",
                query('sum by (job) (up{job=~"notifier-.+"})', "{{job}}"),
                thresholds((None, "red"), (1, "green")),
            )
        )
    )


def latency(board: dash.Dashboard) -> dash.Dashboard:
    """How long the provider takes, how long a notification waits, how late its first attempt starts."""
    return (
        board.with_row(dash.Row("Latency"))
        .with_panel(
            series(
                "Provider call duration",
                "The provider call alone (SMTP session, SMS or webhook request), p50/p95/p99 by channel.",
                "s",
                quantiles("notifier_delivery_duration_seconds", "channel", "{{channel}}"),
            )
        )
        .with_panel(
            series(
                "Due → sent latency",
                "From when a notification was due (send_at, else creation) until it was sent, retries included.",
                "s",
                quantiles("notifier_delivery_latency_seconds", "channel", "{{channel}}"),
            )
        )
        .with_panel(
            series(
                "Lateness (due → first attempt)",
                "How late the first attempt started (the scheduler, the relay and the queue's delay). The alert "
                f"fires when p99 exceeds {LATENESS_P99} s for 10 minutes.",
                "s",
                quantiles("notifier_delivery_lateness_seconds", "channel", "{{channel}}", (0.5, 0.99)),
                limits=thresholds((None, "green"), (LATENESS_P99, "red")),
            )
        )
    )


def queues(board: dash.Dashboard) -> dash.Dashboard:
    """What waits in Redis, what the relay had to enqueue itself, and the scheduler's heartbeat."""
    return (
        board.with_row(dash.Row("Queues"))
        .with_panel(
            series(
                "Queue depth by state",
                "Messages in Redis: ready (waiting for a worker), delayed (retries, near schedules), dead.",
                "short",
                [query("max by (queue, state) (notifier_queue_messages)", "{{queue}} {{state}}")],
            )
        )
        .with_panel(
            series(
                "Oldest ready message age",
                f"Age of the oldest message waiting for a worker; the alert fires above {OLDEST_READY_AGE} s.",
                "s",
                [query("max by (queue) (notifier_queue_oldest_message_age_seconds)", "{{queue}}")],
                limits=thresholds((None, "green"), (OLDEST_READY_AGE, "red")),
            )
        )
        .with_panel(
            series(
                "Relay enqueued by reason",
                "Per second: due (a schedule fell due), missed (the API could not enqueue), lost (never "
                "delivered), lease_expired (a dead worker's). Anything but due means something went wrong.",
                "ops",
                [query(f"sum by (reason) (rate(notifier_relay_enqueued_total[{RATE}]))", "{{reason}}")],
                stacked=True,
            )
        )
        .with_panel(
            series(
                "Scheduler ticks",
                "Minute ticks sent by the scheduler and run to their end by a worker; both should stay at 1/min.",
                "opm",
                [
                    query(f"sum(rate(notifier_scheduler_ticks_sent_total[{RATE}])) * 60", "sent", "A"),
                    query(f"sum(rate(notifier_scheduler_ticks_total[{RATE}])) * 60", "run", "B"),
                ],
                width=12,
            )
        )
        .with_panel(
            series(
                "Rule firings",
                "Rule firings per minute, by outcome (fired, failed).",
                "opm",
                [query(f"sum by (outcome) (rate(notifier_rule_firings_total[{RATE}])) * 60", "{{outcome}}")],
                width=12,
                stacked=True,
            )
        )
    )


def api(board: dash.Dashboard) -> dash.Dashboard:
    """Requests per route template, the share of 5xx, and latency per route."""
    return (
        board.with_row(dash.Row("API"))
        .with_panel(
            series(
                "Request rate per route",
                "Requests per second by method and route template.",
                "reqps",
                [
                    query(
                        f"sum by (method, path) (rate(notifier_api_requests_total[{RATE}]))",
                        "{{method}} {{path}}",
                    )
                ],
                stacked=True,
            )
        )
        .with_panel(
            series(
                "5xx ratio",
                "Answers with a 5xx status over all answers; the alert fires above "
                f"{API_ERROR_RATIO:.0%} for 5 minutes.",
                "percentunit",
                [
                    query(
                        f'(sum(rate(notifier_api_requests_total{{status_code=~"5.."}}[{RATE}])) or vector(0))'
                        f" / sum(rate(notifier_api_requests_total[{RATE}]))",
                        "5xx",
                    )
                ],
                limits=thresholds((None, "green"), (API_ERROR_RATIO, "red")),
            )
        )
        .with_panel(
            series(
                "Latency per route",
                "Request duration p50 and p99 by route template.",
                "s",
                quantiles("notifier_api_request_duration_seconds", "method, path", "{{method}} {{path}}", (0.5, 0.99)),
            )
        )
    )


def workers(board: dash.Dashboard) -> dash.Dashboard:
    """Dramatiq's own metrics, one series per worker instance (every process of it summed)."""
    return (
        board.with_row(dash.Row("Dramatiq workers"))
        .with_panel(
            series(
                "Messages processed",
                "Messages per second handled by each worker instance, by actor.",
                "ops",
                [
                    query(
                        f"sum by (instance, actor_name) (rate(dramatiq_messages_total{{{WORKER}}}[{RATE}]))",
                        "{{instance}} {{actor_name}}",
                    )
                ],
                width=6,
            )
        )
        .with_panel(
            series(
                "Errors and retries",
                "Messages per second whose actor raised, and those Dramatiq retried, by worker instance.",
                "ops",
                [
                    query(
                        f"sum by (instance) (rate(dramatiq_message_errors_total{{{WORKER}}}[{RATE}]))",
                        "errors {{instance}}",
                        "A",
                    ),
                    query(
                        f"sum by (instance) (rate(dramatiq_message_retries_total{{{WORKER}}}[{RATE}]))",
                        "retries {{instance}}",
                        "B",
                    ),
                ],
                width=6,
            )
        )
        .with_panel(
            series(
                "In progress",
                "Messages being processed now, and delayed messages held in memory, by worker instance.",
                "short",
                [
                    query(f"sum by (instance) (dramatiq_messages_inprogress{{{WORKER}}})", "running {{instance}}", "A"),
                    query(
                        f"sum by (instance) (dramatiq_delayed_messages_inprogress{{{WORKER}}})",
                        "delayed {{instance}}",
                        "B",
                    ),
                ],
                width=6,
            )
        )
        .with_panel(
            series(
                "Message duration",
                "Time an actor took per message (claim, provider call, outcome), p50 and p99 by worker instance.",
                "ms",
                [
                    query(
                        f"histogram_quantile({level}, sum by (instance, le) "
                        f"(rate(dramatiq_message_duration_milliseconds_bucket{{{WORKER}}}[{RATE}])))",
                        f"p{round(level * 100)} {{{{instance}}}}",
                        ref,
                    )
                    for level, ref in ((0.5, "A"), (0.99, "B"))
                ],
                width=6,
            )
        )
    )


def build() -> models.Dashboard:
    """The whole dashboard: variables, then one row per concern; panels numbered top to bottom."""
    board = (
        dash.Dashboard("notifier")
        .uid(UID)
        .description("Notifications in and out per channel, latency, queues, the API and the Dramatiq workers.")
        .tags(["notifier", "generated"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone(common.TimeZoneBrowser)
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
            .current(models.VariableOption(text="Prometheus", value=DATASOURCE_UID))
        )
        .with_variable(
            dash.QueryVariable("instance")
            .label("Worker")
            .description("The worker instances the Dramatiq row shows.")
            .datasource(DATASOURCE)
            .query(f'label_values(up{{job="{WORKER_JOB}"}}, instance)')
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
            .current(models.VariableOption(text="All", value="$__all"))
        )
    )
    for section in (overview, latency, queues, api, workers):
        board = section(board)
    built = board.build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


def render() -> str:
    """The dashboard as the JSON Grafana loads: keys sorted, two-space indent, one final newline."""
    encoded = JSONEncoder(sort_keys=True, indent=2).encode(build())
    return json.dumps(json.loads(encoded), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the dashboard, or with ``--check`` report whether the committed one is current."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs; write nothing")
    args = parser.parse_args(argv)
    wanted = render()
    if args.check:
        if not DASHBOARD.is_file() or DASHBOARD.read_text() != wanted:
            print(f"{DASHBOARD} is out of date: run `uv run python dashboards/generate.py`", file=sys.stderr)
            return 1
        return 0
    DASHBOARD.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
