"""A bounded load run on loopback: concurrent clients, a fixed number of requests, no error, memory flat.

The long runs (1, 4 and 16 clients on a gallery of 1,000+ identities) are in benchmarks/serve.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

CLIENTS = 4
REQUESTS_PER_CLIENT = 10


def rss_mb() -> float:
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("reads the resident memory from /proc")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def load(url: str, photo: bytes, clients: int, requests: int) -> tuple[list[float], list[str]]:
    """`clients` concurrent clients, each sending `requests` queries; (latencies in s, errors)."""
    latencies, errors = [], []

    async def one_client():
        async with httpx.AsyncClient(base_url=url, timeout=120, trust_env=False) as c:
            for _ in range(requests):
                started = time.perf_counter()
                r = await c.post("/v1/query", files={"photo": ("a.jpg", photo, "image/jpeg")})
                latencies.append(time.perf_counter() - started)
                if r.status_code != 200 or r.json()["faces"][0]["verdict"] != "eileen":
                    errors.append(f"{r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors


def test_concurrent_clients_get_answers_with_no_error_and_memory_stays_flat(server, photos):
    photo = (photos / "astronaut.jpg").read_bytes()
    asyncio.run(load(server.url, photo, CLIENTS, 3))  # warm: thread pool, allocator, first-use caches
    before = rss_mb()
    started = time.perf_counter()
    latencies, errors = asyncio.run(load(server.url, photo, CLIENTS, REQUESTS_PER_CLIENT))
    seconds = time.perf_counter() - started
    after = rss_mb()
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    print(f"{CLIENTS} clients x {REQUESTS_PER_CLIENT} queries: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
          f"{len(latencies) / seconds:.1f} queries/s, RSS {before:.0f} -> {after:.0f} MB")
    assert not errors, errors[:3]
    assert len(latencies) == CLIENTS * REQUESTS_PER_CLIENT
    assert after - before < 50, f"resident memory grew by {after - before:.0f} MB over {len(latencies)} queries"
