"""``/healthz`` (the process is alive) and ``/readyz`` (PostgreSQL and Redis answer)."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import SecurityRequirement

from notifier.api.errors import problems
from notifier.api.schemas import Health

PUBLIC: list[SecurityRequirement] = [{}]
"""No key needed: the empty requirement overrides the document's bearer default."""


# Health takes no parameters, but refuses unknown ones as every route does.
_UNKNOWN_PARAMETER = {422: problems()[422]}


@get("/healthz", summary="Liveness", tags=["health"], security=PUBLIC, responses=_UNKNOWN_PARAMETER)
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    summary="Readiness: PostgreSQL and Redis reachable",
    tags=["health"],
    security=PUBLIC,
    responses={
        503: ResponseSpec(Health, description="PostgreSQL or Redis is unreachable; `checks` says which."),
        **_UNKNOWN_PARAMETER,
    },
)
async def readyz(state: State) -> Response[Health]:
    checks: dict[str, str] = {}

    async def check(name: str, probe: asyncio.Future[object] | object) -> None:
        try:
            await asyncio.wait_for(probe, timeout=2)  # type: ignore[arg-type]
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unavailable: {type(exc).__name__}"

    await asyncio.gather(
        check("postgresql", state.notifications.ready()),
        check("redis", state.redis.ping()),
    )
    ok = all(v == "ok" for v in checks.values())
    return Response(Health(status="ok" if ok else "unavailable", checks=checks), status_code=200 if ok else 503)
