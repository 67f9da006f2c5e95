"""The operator's dashboard at `/dashboard`, and the swarm-wide numbers it shows.

The page is static (HTML, CSS, one script, and uPlot vendored under `static/dashboard/vendor`,
so nothing is fetched from the internet and nothing needs building). Its script reads the
same `/v1` API everyone uses, with the API key the operator types in, and polls it every few
seconds.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import func, select

from swarm.coordinator.storage import Lease, Round, Task, Worker, count_by
from swarm.coordinator.storage import online as is_online

if TYPE_CHECKING:
    from fastapi import FastAPI

    from swarm.coordinator.server import Services

STATIC = Path(__file__).parent / "static" / "dashboard"
THROUGHPUT_WINDOW_S = 3600.0
THROUGHPUT_BUCKET_S = 60.0
RECENT_ROUNDS = 50


def mount_dashboard(app: FastAPI) -> None:
    """Serve the page at `/dashboard` and its files under `/dashboard/static/`."""
    router = APIRouter(include_in_schema=False)

    @router.get("/dashboard")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard")


def swarm_numbers(services: Services, now: float | None = None) -> dict[str, Any]:
    """Workers, throughput, queue depths, leases and round times, read from the database."""
    now = time.time() if now is None else now
    since = now - THROUGHPUT_WINDOW_S
    with services.db.transaction() as session:
        online = list(
            session.scalars(select(Worker).where(is_online(now, services.settings.worker_online_s)))
        )
        registered = session.scalar(select(func.count()).select_from(Worker)) or 0
        tasks = count_by(session, Task.status)
        leases = count_by(session, Lease.outcome)
        closed = session.execute(
            select(Round.closed_at, Round.tokens).where(Round.closed_at >= since)
        ).all()
        recent = session.execute(
            select(Round.closed_at, Round.opened_at)
            .where(Round.closed_at.is_not(None))
            .order_by(Round.closed_at.desc())
            .limit(RECENT_ROUNDS)
        ).all()
    by_device: dict[str, int] = {}
    for worker in online:
        device = str((worker.hardware or {}).get("device_type") or "unknown")
        by_device[device] = by_device.get(device, 0) + 1
    buckets = [0] * int(THROUGHPUT_WINDOW_S // THROUGHPUT_BUCKET_S)
    for closed_at, tokens in closed:
        index = min(len(buckets) - 1, int((closed_at - since) // THROUGHPUT_BUCKET_S))
        buckets[index] += int(tokens or 0)
    durations = [closed_at - opened_at for closed_at, opened_at in recent]
    recent_tokens = sum(int(t or 0) for c, t in closed if c >= now - 600.0)
    return {
        "workers_online": len(online),
        "workers_registered": registered,
        "workers_by_device": by_device,
        "flops_per_s": sum(w.flops_per_s or 0.0 for w in online),
        "tokens_per_s": round(recent_tokens / 600.0, 3),
        "throughput": {
            "bucket_s": THROUGHPUT_BUCKET_S,
            "start": since,
            "tokens_per_s": [round(b / THROUGHPUT_BUCKET_S, 3) for b in buckets],
        },
        "tasks": tasks,
        "leases": leases,
        "round_seconds": {
            "median": statistics.median(durations) if durations else None,
            "max": max(durations) if durations else None,
            "rounds": len(durations),
        },
    }
