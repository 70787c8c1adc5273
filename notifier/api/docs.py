"""The API's documentation pages: Swagger UI served from vendored assets, and ``/`` leading to it.

The UI's scripts, stylesheet and icon live in ``static/swagger-ui`` (see ``static/README``), so the
docs work on a machine without internet access and load nothing from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router, get
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import OpenAPIRenderPlugin, SwaggerRenderPlugin
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static"
SWAGGER_UI = f"{STATIC_PATH}/swagger-ui"
DOCS_PATH = "/schema"


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Swagger UI at ``/schema`` and ``/schema/swagger``, on the vendored assets."""
    return [
        SwaggerRenderPlugin(
            path="/swagger",
            js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER_UI}/swagger-ui.css",
            standalone_preset_js_url=f"{SWAGGER_UI}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_UI}/favicon-32x32.png'>",
        )
    ]


def static_files() -> Router:
    """The vendored assets under ``/static``; they change only with a release, so caches may keep them a day."""
    return create_static_files_router(
        path=STATIC_PATH,
        directories=[STATIC_DIR],
        cache_control=CacheControlHeader(max_age=86_400, public=True),
        include_in_schema=False,
    )


@get("/", include_in_schema=False, sync_to_thread=False)
def index() -> Redirect:
    """``GET /`` leads to the interactive API docs."""
    return Redirect(DOCS_PATH)
