"""The PromQL expressions of the dashboard and the alerts, and the metric names each one reads.

:func:`metric_names` tokenizes an expression and keeps only the identifiers that select series:
not functions, aggregations, keywords, label names (inside ``{…}`` or a ``by``/``without``/
``on``/``ignoring``/``group_left``/``group_right`` list), strings, numbers or durations. A
``{__name__="…"}`` matcher counts as the name it gives. :func:`family` maps a histogram's
``_bucket``/``_sum``/``_count`` series back to the family it belongs to.

:func:`dashboard_expressions` walks a Grafana dashboard's JSON (``panels``, nested ``rows`` and
collapsed rows' ``panels``) for every ``targets[].expr``; :func:`alert_expressions` reads
``groups[].rules[].expr`` from a Prometheus rules file. Grafana's template variables are replaced
(:func:`substitute`) so that Prometheus accepts the expression as a dashboard would send it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KEYWORDS = frozenset(
    {
        # aggregation operators
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
        # binary operators and modifiers
        "and", "or", "unless", "atan2", "by", "without", "on", "ignoring", "group_left",
        "group_right", "bool", "offset",
        # numbers
        "inf", "nan",
    }
)  # fmt: skip
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>[{}()\[\],@]|=~|!~|!=|==|<=|>=|[-+*/%^=<>])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    """The tokens of ``expr``, blanks and comments left out; ValueError on a character PromQL has not."""
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot tokenize {expr!r} at {position}: {expr[position : position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(Token(kind, match.group()))
        position = match.end()
    return tokens


def _unquote(text: str) -> str:
    return text[1:-1].encode().decode("unicode_escape") if text[0] != "`" else text[1:-1]


def metric_names(expr: str) -> set[str]:
    """The metric (series) names ``expr`` selects, e.g. ``{"notifier_deliveries_total"}`` for
    ``sum by (channel) (rate(notifier_deliveries_total{outcome="sent"}[5m]))``."""
    tokens = tokenize(expr)
    names: set[str] = set()
    braces = brackets = 0
    skip_list = False  # inside the label list after by/without/on/…
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.text == "{":
            braces += 1
        elif token.text == "}":
            braces -= 1
        elif token.text == "[":
            brackets += 1
        elif token.text == "]":
            brackets -= 1
        elif skip_list:
            if token.text == ")":
                skip_list = False
        elif braces:
            # A label matcher: only __name__="x" names a metric.
            if token.kind == "ident" and token.text == "__name__" and following and following.text == "=":
                value = tokens[index + 2] if index + 2 < len(tokens) else None
                if value is not None and value.kind == "string":
                    names.add(_unquote(value.text))
        elif brackets:
            pass  # a range or subquery duration
        elif token.kind == "ident":
            lowered = token.text.lower()
            if lowered in LABEL_LISTS and following is not None and following.text == "(":
                skip_list = True
                index += 1
            elif lowered in KEYWORDS or (following is not None and following.text == "("):
                pass  # a keyword, or a function called
            else:
                names.add(token.text)
        index += 1
    return names


def family(name: str, samples: Mapping[str, Mapping[str, str]]) -> str:
    """The family a series name belongs to, given a scrape's samples (``scrape_samples``): a
    histogram's ``x_bucket`` is ``x``; a counter's ``x_total`` stays ``x_total`` (its series name)."""
    known = samples.get(name)
    if known is not None and known.get("type") in ("histogram", "summary", "gaugehistogram"):
        return known["family"]
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


# -------------------------------------------------------------------------- Grafana variables

_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<old>\w+)(?::[^\]]*)?\]\]|\$(?P<plain>\w+)")


def substitute(expr: str, variables: Mapping[str, str], *, interval: str = "1m") -> str:
    """``expr`` with Grafana's variables replaced: ``$__rate_interval``, ``$__interval`` and
    ``$__range`` by ``interval``; a dashboard variable by its value in ``variables`` (``.*``, as
    Grafana's *All*, when it has none)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("old") or match.group("plain")
        if name.startswith("__"):
            return {"__interval_ms": str(_seconds(interval) * 1000)}.get(name, interval)
        return variables.get(name, ".*")

    return _VARIABLE.sub(replace, expr)


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]]


def dashboard_variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Each templating variable with the value the rendered dashboard would use: its ``allValue``
    (or ``.*``) when it includes *All*, else its current value."""
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable.get("name")
        if not name or variable.get("type") == "datasource":
            continue
        current = variable.get("current", {}).get("value")
        if variable.get("includeAll") or current in (None, "$__all", ["$__all"]):
            values[name] = variable.get("allValue") or ".*"
        elif isinstance(current, list):
            values[name] = "|".join(current) or ".*"
        else:
            values[name] = str(current)
    return values


# -------------------------------------------------------------------------- sources of expressions


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from (``dashboard: <panel> [A]``, ``alert: <name>``)."""

    source: str
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel to render: its title, its unit (Grafana's unit names: ``s``, ``reqps``, ``percentunit``, …)
    and its queries."""

    title: str
    unit: str = ""
    targets: list[Expression] = field(default_factory=list)


def _walk_panels(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        for key in ("panels", "rows"):
            for child in node.get(key, []) or []:
                if isinstance(child, Mapping):
                    yield child
                    yield from _walk_panels(child)


def dashboard_panels(dashboard: Mapping[str, Any], *, interval: str = "1m") -> list[Panel]:
    """The panels of a Grafana dashboard that query something, in order, their variables replaced."""
    variables = dashboard_variables(dashboard)
    panels = []
    for panel in _walk_panels(dashboard):
        targets = [t for t in panel.get("targets", []) or [] if isinstance(t, Mapping) and t.get("expr")]
        if not targets:
            continue
        title = str(panel.get("title") or f"panel {panel.get('id', '?')}")
        unit = str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit") or "")
        panels.append(
            Panel(
                title=title,
                unit=unit,
                targets=[
                    Expression(
                        source=f"dashboard: {title} [{target.get('refId', index)}]",
                        expr=substitute(str(target["expr"]), variables, interval=interval),
                        legend=str(target.get("legendFormat") or ""),
                    )
                    for index, target in enumerate(targets)
                ],
            )
        )
    return panels


def dashboard_expressions(path: Path, *, interval: str = "1m") -> list[Expression]:
    """Every query of the dashboard at ``path``, its variables replaced."""
    dashboard = json.loads(path.read_text())
    return [target for panel in dashboard_panels(dashboard, interval=interval) for target in panel.targets]


def alert_expressions(path: Path) -> list[Expression]:
    """Every rule's expression in the Prometheus rules file at ``path``."""
    document = yaml.safe_load(path.read_text()) or {}
    return [
        Expression(source=f"alert: {rule.get('alert') or rule.get('record')}", expr=str(rule["expr"]))
        for group in document.get("groups", [])
        for rule in group.get("rules", [])
        if rule.get("expr")
    ]
