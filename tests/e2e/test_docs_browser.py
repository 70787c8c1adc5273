"""The API docs in a real headless Chromium, with every request off the API's origin cut.

Chromium is Debian's (``.ci/run`` installs it); Playwright drives it through ``executable_path``
and never downloads a browser of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import free_port, notifier_env
from tests.e2e.conftest import Process, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
API_KEY = "docs-key"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; .ci/run installs it (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (under CI=true this test fails instead)")
    return CHROMIUM


@pytest.fixture
def api(database_url: str, redis_url: str, redis_namespace: str, tmp_path: Path) -> Iterator[str]:
    """A real ``notifier api`` process with an API key; yields its base URL."""
    port = free_port()
    env = notifier_env(database_url, redis_url, redis_namespace, NOTIFIER_API_KEYS=API_KEY)
    process = Process("api", ["api", "--port", str(port)], env, tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 60, "the API to be ready")
        yield base
    finally:
        process.stop()


def test_swagger_ui_lists_the_operations_with_the_network_cut(chromium: Path, api: str) -> None:
    from playwright.sync_api import Route, sync_playwright

    origin = urlsplit(api).netloc
    elsewhere: list[str] = []

    def only_the_api(route: Route) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {API_KEY}"})
            context.route("**/*", only_the_api)
            page = context.new_page()
            for path in ("/schema/swagger", "/schema"):
                page.goto(f"{api}{path}")
                notify = page.locator(".opblock-post .opblock-summary-path[data-path='/notify']")
                notify.wait_for(timeout=15_000)
                assert notify.is_visible()
                assert page.locator(".opblock-get .opblock-summary-path[data-path='/notifications']").count() == 1
        finally:
            browser.close()
    assert elsewhere == [], f"the docs tried to load from outside the API: {elsewhere}"


def test_the_assets_are_public_and_root_leads_to_the_docs(api: str) -> None:
    with httpx.Client(base_url=api, timeout=10) as client:
        page = client.get("/schema/swagger", headers={"Authorization": f"Bearer {API_KEY}"})
        assert page.status_code == 200
        assert "/static/swagger-ui/swagger-ui-bundle.js" in page.text
        assets = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
        assert assets, page.text
        assert all(url.startswith("/static/") for url in assets), assets

        bundle = client.get("/static/swagger-ui/swagger-ui-bundle.js")  # no key: public, like /healthz
        assert bundle.status_code == 200
        assert "SwaggerUIBundle" in bundle.text
        assert client.get("/static/swagger-ui/swagger-ui.css").status_code == 200

        root = client.get("/", headers={"Authorization": f"Bearer {API_KEY}"})
        assert root.status_code in (302, 307)
        assert root.headers["location"] == "/schema"
