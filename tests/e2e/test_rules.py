"""Rules with real processes: expensive templates never stall the API."""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg

from tests.e2e.conftest import API_KEY, StartStack

EXPENSIVE = (
    "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(2) %}{% endfor %}{% endfor %}{% endfor %}"
)
NOTIFY = {"channel": "log", "recipient": "ops", "body": "x"}


def test_expensive_events_never_stall_other_requests(start_stack: StartStack, database_url: str) -> None:
    stack = start_stack()
    rule = stack.client.post(
        "/rules",
        json={"name": "costly", "event": "order.shipped", "channel": "log", "recipients": ["ops"], "body": "b"},
    ).json()
    with psycopg.connect(database_url, autocommit=True) as conn:  # saved before templates were test-rendered
        conn.execute("UPDATE rules SET body = %s WHERE id = %s", (EXPENSIVE, rule["id"]))

    async def measure() -> tuple[list[int], list[float]]:
        async with httpx.AsyncClient(
            base_url=stack.client.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
        ) as client:
            for _ in range(5):  # warm up the API's pools
                await client.post("/notify", json=NOTIFY)
            events = [
                asyncio.create_task(client.post("/events", json={"type": "order.shipped", "data": {}}))
                for _ in range(12)
            ]
            latencies = []
            while not all(e.done() for e in events) or len(latencies) < 50:
                started = time.perf_counter()
                response = await client.post("/notify", json=NOTIFY)
                assert response.status_code == 202, response.text
                latencies.append(time.perf_counter() - started)
            return [(await e).status_code for e in events], latencies

    statuses, latencies = asyncio.run(asyncio.wait_for(measure(), 120))
    assert statuses == [202] * 12
    latencies.sort()
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)]
    slowest = [round(x * 1000) for x in latencies[-5:]]
    assert p99 < 0.05, f"POST /notify p99 {p99 * 1000:.0f} ms over {len(latencies)} requests; slowest {slowest} ms"
    failed = stack.client.get("/notifications", params={"rule_id": rule["id"], "limit": 50}).json()["items"]
    assert len(failed) == 12
    assert all(n["status"] == "failed" and "budget" in n["last_error"] for n in failed)
