"""Every route the README names exists in the app, with the method it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.routes import ASGIRoute, HTTPRoute

from notifier.settings import Settings
from tests.integration.conftest import make_app

README = Path(__file__).resolve().parents[2] / "README.md"
METHODS = "GET|POST|PUT|PATCH|DELETE"
PATH = r"/[\w{}<>\-./]*"
# `POST /rules`, `GET`, `PATCH`, `DELETE /rules/{id}`, GET /healthz: methods, then one path
NAMED = re.compile(rf"\b((?:(?:{METHODS})`?,?\s*`?)+)({PATH})")
CURL_URL = re.compile(rf"localhost:8000({PATH})")
CURL_METHOD = re.compile(rf"-X\s+({METHODS})\b")
BACKTICKED = re.compile(rf"`({PATH})`")
# Litestar's answer for unknown paths under /schema: it matches anything, so proves nothing.
CATCH_ALL = "/schema/{path:str}"


FILESYSTEM_ROOTS = {"bin", "dev", "etc", "home", "opt", "proc", "tmp", "usr", "var"}


def _on_disk(path: str) -> bool:
    """A backticked path such as `/usr/bin/chromium` (or `//host/...`) names no route."""
    segments = _segments(path)
    return path.startswith("//") or (bool(segments) and segments[0] in FILESYSTEM_ROOTS)


def _code_blocks(text: str) -> list[str]:
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def named_routes(text: str) -> set[tuple[str, str]]:
    """(method, path) for each route the text names: in prose and tables, in curl commands, and
    bare backticked paths (taken as GET)."""
    routes: set[tuple[str, str]] = set()
    for methods, path in NAMED.findall(text):
        routes.update((method, path) for method in re.findall(METHODS, methods))
    for block in _code_blocks(text):
        for command in block.replace("\\\n", " ").splitlines():
            if "curl" not in command:
                continue
            explicit = CURL_METHOD.search(command)
            method = explicit.group(1) if explicit else ("POST" if " -d " in command else "GET")
            routes.update((method, path) for path in CURL_URL.findall(command))
    routes.update(("GET", path) for path in BACKTICKED.findall(text) if not _on_disk(path))
    return {(method, path.rstrip("/.") or "/") for method, path in routes}


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


def _matches(named: str, template: str) -> bool:
    """``named`` (placeholders as ``{id}`` or ``<id>``) fits the route ``template``."""
    wanted, pattern = _segments(named), _segments(template)
    for i, segment in enumerate(pattern):
        if segment.startswith("{") and segment.endswith(":path}"):
            return len(wanted) > i
        if i >= len(wanted):
            return False
        placeholder = wanted[i][0] in "{<" and wanted[i][-1] in "}>"
        if segment.startswith("{") != placeholder or (not placeholder and segment != wanted[i]):
            return False
    return len(wanted) == len(pattern)


def test_the_parser_finds_what_it_should() -> None:
    text = (
        "| `GET`, `PATCH`, `DELETE /rules/{id}` | x |\n| `POST /rules`, `GET /rules` | y |\n"
        "a JSON `POST` of the body; `POST {base}/2010-04-01/Accounts` is the provider's; see `/schema/swagger`\n"
        "```sh\ncurl -s -X POST localhost:8000/notifications/<id>/cancel\n"
        "curl -s 'localhost:8000/notifications?status=sent'\n"
        "curl -s localhost:8000/notify -H 'a: b' \\\n  -d '{}'\n```\n"
    )
    assert named_routes(text) == {
        ("GET", "/rules/{id}"),
        ("PATCH", "/rules/{id}"),
        ("DELETE", "/rules/{id}"),
        ("POST", "/rules"),
        ("GET", "/rules"),
        ("GET", "/schema/swagger"),
        ("POST", "/notifications/<id>/cancel"),
        ("GET", "/notifications"),
        ("POST", "/notify"),
    }
    assert _matches("/notifications/<id>", "/notifications/{notification_id:uuid}")
    assert not _matches("/notifications/sent", "/notifications/{notification_id:uuid}")
    assert not _matches("/metrics", "/")
    assert named_routes("Chromium at `/usr/bin/chromium`; docs at `/schema`") == {("GET", "/schema")}


def _exists(app: Litestar, method: str, path: str) -> bool:
    mounted = any(
        path == route.path or path.startswith(f"{route.path}/") for route in app.routes if isinstance(route, ASGIRoute)
    )
    return mounted or any(
        method in route.methods and _matches(path, route.path)
        for route in app.routes
        if isinstance(route, HTTPRoute) and route.path != CATCH_ALL
    )


def test_every_route_the_readme_names_exists(settings: Settings) -> None:
    app = make_app(settings)
    named = named_routes(README.read_text())
    assert {("POST", "/notify/batch"), ("GET", "/schema/swagger"), ("GET", "/dramatiq")} <= named
    missing = [f"{method} {path}" for method, path in sorted(named) if not _exists(app, method, path)]
    assert missing == [], f"the README names routes the app does not have: {missing}"


@pytest.mark.parametrize(
    "route", ["GET /metricz", "POST /metrics", "POST /notify/batchx", "DELETE /notify", "GET /schema/nothing"]
)
def test_a_route_the_app_lacks_is_caught(settings: Settings, route: str) -> None:
    method, path = route.split()
    assert not _exists(make_app(settings), method, path)


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end == -1 else end]


def test_the_readme_gets_a_newcomer_started() -> None:
    text = README.read_text()
    quickstart = _section(text, "Quickstart")
    assert "pip install --user uv" in quickstart, "the quickstart says how to get uv on a machine with only Python"
    assert "UV_PYTHON_DOWNLOADS" in quickstart
    assert "--host" in quickstart
    assert re.search(r"^notifier dev \[.*--host H.*\]", text, flags=re.MULTILINE), "`notifier dev --host` is documented"

    routes = [line for line in text.splitlines() if line.startswith("| `")]
    assert any(line.startswith("| `POST /notify/batch` | ") for line in routes), (
        "the route table lists POST /notify/batch"
    )

    sending = _section(text, "Sending notifications")
    first_email = sending.index('"channel": "email"')
    assert "NOTIFIER_SMTP_URL" in sending[:first_email], "the note that email needs NOTIFIER_SMTP_URL comes first"


REPO = README.parent
REPO_FILE = re.compile(r"`((?:notifier|tests|bench)/[\w./-]+)`")


def test_every_file_the_readme_names_exists() -> None:
    named = sorted(set(REPO_FILE.findall(README.read_text())))
    assert named, "the pattern finds the README's file paths"
    missing = [path for path in named if "<" not in path and not (REPO / path).exists()]
    assert missing == [], f"the README names files that do not exist: {missing}"
