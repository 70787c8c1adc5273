"""Figures, the table the suite prints, and the JSON it writes (with what machine it ran on)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stack import ROOT


@dataclass
class Figure:
    """One measured figure and how it compares with the issue's target.

    ``ceiling`` is what the figure is compared with (measured in the same run) and ``ratio`` the
    value over it; ``target`` is the bound (on the ratio when there is a ceiling, else on the
    value) and ``comparison`` says which way: ``>=``, ``<=`` or ``within`` (± target, in %).
    ``ok`` is ``None`` when there was nothing to compare (the figure is not available).
    """

    name: str
    title: str
    value: float | None
    unit: str
    target: float | None
    comparison: str = "<="
    ceiling: float | None = None
    ceiling_name: str | None = None
    ratio: float | None = None
    ok: bool | None = None
    available: bool = True
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def judge(self) -> Figure:
        if self.value is not None and self.ceiling:
            self.ratio = self.value / self.ceiling
        compared = self.ratio if self.ceiling_name is not None else self.value
        if compared is None or self.target is None:
            self.ok = None
        elif self.comparison == ">=":
            self.ok = compared >= self.target
        elif self.comparison == "within":
            self.ok = abs(compared) <= self.target
        else:
            self.ok = compared <= self.target
        return self

    def target_text(self) -> str:
        if self.target is None:
            return ""
        if self.ceiling_name is not None:
            return f"{self.comparison} {self.target:.0%} of ceiling"
        if self.comparison == "within":
            return f"within ±{self.target:g} {self.unit}"
        return f"{self.comparison} {_number(self.target)} {self.unit}"


def unavailable(name: str, title: str, unit: str, reason: str) -> Figure:
    return Figure(name, title, None, unit, None, available=False, note=reason)


def failed(name: str, title: str, unit: str, error: BaseException) -> Figure:
    return Figure(name, title, None, unit, None, ok=False, note=f"error: {type(error).__name__}: {error}")


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "ceiling", "ratio", "target", "ok")]
    for f in figures:
        value = f"{_number(f.value)} {f.unit}" if f.available else "not available"
        ceiling = f"{_number(f.ceiling)} ({f.ceiling_name})" if f.ceiling_name else ""
        ratio = f"{f.ratio:.0%}" if f.ratio is not None else ""
        ok = {True: "yes", False: "NO", None: "-"}[f.ok]
        rows.append((f.title, value, ceiling, ratio, f.target_text(), ok))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {f.title}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def as_json(figures: list[Figure]) -> list[dict[str, Any]]:
    return [{**asdict(f), "target_text": f.target_text()} for f in figures]


PACKAGES = (
    "litestar",
    "uvicorn",
    "msgspec",
    "asyncpg",
    "psycopg",
    "piccolo",
    "dramatiq",
    "redis",
    "uvloop",
    "httptools",
)


def machine(database_url: str, redis_url: str) -> dict[str, Any]:
    import psycopg
    import redis

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "packages": {},
    }
    with contextlib.suppress(ImportError):
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_average"] = os.getloadavg()
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info["packages"][name] = importlib.metadata.version(name)
    with contextlib.suppress(Exception), psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        info["postgresql"] = row[0] if row else None
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(redis_url)
        info["redis"] = client.info("server").get("redis_version")
        client.close()
    with contextlib.suppress(Exception):
        info["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
        info["git"] = {"commit": commit.strip(), "dirty": bool(dirty.strip())}
    return info
