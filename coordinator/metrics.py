"""Prometheus metrics at `GET /metrics`: the swarm's numbers, and how fast HTTP and gRPC answer.

Numbers kept in the database (workers, jobs, tasks, leases, rounds, credits) are read at each
scrape by `SwarmCollector`, so they are the dashboard's numbers and survive restarts; request
counts and latencies are the process's own, since it started. Each app's metrics live in
registries of their own (never the global one), so tests can build many apps in one process.

`create_app` wires both: `instrument_http(app)`, then `app.include_router(metrics_router(...))`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement
from starlette.routing import BaseRoute, Match, Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swarm.coordinator.servicer import RPC_BUCKETS_S, RpcStats, WorkerServicer
from swarm.coordinator.storage import (
    Job,
    Lease,
    LedgerTransaction,
    Round,
    Task,
    Worker,
    count_by,
)
from swarm.coordinator.storage import online as is_online
from swarm.scheduler import MICRO_PER_CREDIT, RESEARCH_POOL
from swarm.scheduler.jobs import JobStatus, LeaseOutcome, TaskStatus

if TYPE_CHECKING:
    from swarm.coordinator.server import Services

logger = logging.getLogger(__name__)

ROUND_BUCKETS_S = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
"""Upper bounds of the round duration buckets: seconds for a tiny job, hours for a large one."""

HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

DEVICE_TYPES = frozenset({"cpu", "cuda", "rocm", "mps", "xpu", "unknown"})
"""Device types exported as themselves; a worker reporting anything else counts as `other`,
so a volunteer cannot add series by inventing names."""

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route matched (a 404): never its raw path."""

_REGISTRY_STATE = "metrics_registry"


def metrics_router(services: Services) -> APIRouter:
    """`GET /metrics` in Prometheus's text format (version 0.0.4), with no API key needed.

    It serves the swarm's numbers from `services` and, when `instrument_http` was called on
    the app that includes this router, that app's HTTP request metrics.
    """
    registry = CollectorRegistry()
    registry.register(SwarmCollector(services))
    router = APIRouter()

    @router.get("/metrics", tags=["health"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics: workers, jobs, tasks, leases, rounds, credits, the database,
        and request counts and latencies of the HTTP API and the workers' gRPC service."""
        body = generate_latest(registry)
        http_registry = getattr(request.app.state, _REGISTRY_STATE, None)
        if http_registry is not None:
            body += generate_latest(http_registry)
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return router


def instrument_http(app: FastAPI) -> None:
    """Count and time every HTTP request `app` answers, by method, route template (such as
    `/v1/fine_tuning/jobs/{job_id}`, never the raw path) and status code."""
    registry = CollectorRegistry()
    requests = Counter(
        "swarm_http_requests_total",
        "HTTP requests answered since the coordinator started, by method, route template "
        "and status code.",
        ["method", "route", "code"],
        registry=registry,
    )
    durations = Histogram(
        "swarm_http_request_duration_seconds",
        "Time from an HTTP request's arrival until its response was sent, by method and "
        "route template.",
        ["method", "route"],
        buckets=HTTP_BUCKETS_S,
        registry=registry,
    )
    setattr(app.state, _REGISTRY_STATE, registry)
    app.add_middleware(
        _HttpMetricsMiddleware, router=app.router, requests=requests, durations=durations
    )


class _HttpMetricsMiddleware:
    """Pure ASGI, so a streamed response (a file download) is timed until its last byte."""

    def __init__(
        self, app: ASGIApp, *, router: Router, requests: Counter, durations: Histogram
    ) -> None:
        self._app = app
        self._router = router
        self._requests = requests
        self._durations = durations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client gets if the app raises before it answers
        # Routing rewrites the path and root path of a mount's requests: keep what matched.
        target = {
            "type": "http",
            "method": scope["method"],
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
        }

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_and_note_status)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            route = _route_template(scope.get("route"), target, self._router.routes)
            self._requests.labels(method, route, str(status)).inc()
            self._durations.labels(method, route).observe(time.perf_counter() - began)


def _route_template(answered: object, target: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template (`/v1/fine_tuning/jobs/{job_id}`) of the route that answered `target`.

    FastAPI records its own routes in the scope (`answered`); a plain Starlette route or mount
    (the OpenAPI document, the dashboard's static files) is found by matching it again.
    """
    if answered is None:  # as the router chose: the first full match, else the first partial
        partial = None
        for route in routes:
            if not isinstance(route, Route | Mount):
                continue
            match, _ = route.matches(target)
            if match is Match.FULL:
                answered = route
                break
            if match is Match.PARTIAL and partial is None:
                partial = route
        else:
            answered = partial
    return str(getattr(answered, "path_format", None) or UNMATCHED_ROUTE)


class SwarmCollector(Collector):
    """The swarm's numbers, read from the database and the gRPC servicer at each scrape."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def collect(self) -> Iterator[Metric]:
        yield from _rpc_families(self._services.servicer)
        try:
            families = _database_families(self._services)
        except SQLAlchemyError as exc:  # still serve the process's own numbers
            logger.warning("metrics: cannot read the database: %s", exc)
            families = []
        yield GaugeMetricFamily(
            "swarm_database_up",
            "Whether this scrape could read the database (1) or not (0, and the metrics read "
            "from it are missing).",
            value=1.0 if families else 0.0,
        )
        yield from families


def _database_families(services: Services) -> list[Metric]:
    """Every metric read from the database, in one transaction, after timing a ping."""
    ping_s = services.db.ping_s()
    now = time.time()
    with services.db.transaction() as session:
        families = [
            *_worker_families(session, is_online(now, services.settings.worker_online_s)),
            _by_status(
                "swarm_jobs",
                "Fine-tuning jobs by status.",
                count_by(session, Job.status),
                [s.value for s in JobStatus],
            ),
            _by_status(
                "swarm_tasks",
                "Tasks by status: pending ones are the queue depth.",
                count_by(session, Task.status),
                [s.value for s in TaskStatus],
            ),
            *_lease_families(session),
            *_round_families(session),
            *_credit_families(session, services),
        ]
    families.append(
        GaugeMetricFamily(
            "swarm_database_ping_seconds",
            "Round-trip time of a trivial query to the database, measured at this scrape.",
            value=ping_s,
        )
    )
    return families


def _worker_families(session: Session, online: ColumnElement[bool]) -> list[Metric]:
    registered = session.scalar(select(func.count()).select_from(Worker)) or 0
    workers = session.execute(select(Worker.hardware, Worker.flops_per_s).where(online)).all()
    by_device = dict.fromkeys([*DEVICE_TYPES, "other"], 0)
    for hardware, _ in workers:
        device = str((hardware or {}).get("device_type") or "unknown")
        by_device[device if device in DEVICE_TYPES else "other"] += 1
    workers_online = GaugeMetricFamily(
        "swarm_workers_online",
        "Workers seen within the online window (SWARM_WORKER_ONLINE_S), by device type.",
        labels=["device_type"],
    )
    for device, count in sorted(by_device.items()):  # every type present: zeros do not vanish
        workers_online.add_metric([device], count)
    return [
        workers_online,
        CounterMetricFamily(
            "swarm_workers_registered_total",
            "Workers that have ever registered (a worker that rejoins with its key counts once).",
            value=registered,
        ),
        GaugeMetricFamily(
            "swarm_workers_online_flops",
            "Measured training throughput of the online workers together, in FLOP/s.",
            value=sum(flops or 0.0 for _, flops in workers),
        ),
    ]


def _lease_families(session: Session) -> list[Metric]:
    counts = count_by(session, Lease.outcome)
    ended = CounterMetricFamily(
        "swarm_leases_ended_total",
        "Task leases that ended, by outcome: submitted, expired (the deadline passed without a "
        "result), handed_back, superseded or cancelled.",
        labels=["outcome"],
    )
    for outcome in LeaseOutcome:
        if outcome is not LeaseOutcome.ACTIVE:
            ended.add_metric([outcome.value], counts.get(outcome.value, 0))
    return [
        GaugeMetricFamily(
            "swarm_leases_active",
            "Task leases held by workers now.",
            value=counts.get(LeaseOutcome.ACTIVE.value, 0),
        ),
        ended,
    ]


def _round_families(session: Session) -> list[Metric]:
    duration_s = Round.closed_at - Round.opened_at
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(Round.tokens), 0),
            func.coalesce(func.sum(Round.bytes_up), 0),
            func.coalesce(func.sum(Round.bytes_down), 0),
            func.coalesce(func.sum(duration_s), 0.0),
            *(
                func.coalesce(func.sum(case((duration_s <= le, 1), else_=0)), 0)
                for le in ROUND_BUCKETS_S
            ),
        ).where(Round.closed_at.is_not(None))
    ).one()
    # PostgreSQL sums integers as NUMERIC: every number is made an int or a float here.
    closed, tokens, bytes_up, bytes_down = (int(n) for n in row[:4])
    sum_s, within = float(row[4]), [int(n) for n in row[5:]]
    return [
        CounterMetricFamily(
            "swarm_rounds_closed_total",
            "Training rounds closed (their next version published).",
            value=closed,
        ),
        CounterMetricFamily(
            "swarm_trained_tokens_total",
            "Tokens trained on in closed rounds.",
            value=tokens,
        ),
        CounterMetricFamily(
            "swarm_upload_bytes_total",
            "Bytes workers uploaded (their results) in closed rounds.",
            value=bytes_up,
        ),
        CounterMetricFamily(
            "swarm_download_bytes_total",
            "Bytes workers downloaded (parameters and data) in closed rounds.",
            value=bytes_down,
        ),
        HistogramMetricFamily(
            "swarm_round_duration_seconds",
            "Time from a round's opening to its close, over every closed round.",
            buckets=_cumulative_buckets(ROUND_BUCKETS_S, [*within, closed]),
            sum_value=float(sum_s),
        ),
    ]


def _credit_families(session: Session, services: Services) -> list[Metric]:
    ledger = services.ledger
    granted = session.scalar(
        select(func.coalesce(func.sum(Task.credits), 0))
        .join(LedgerTransaction, LedgerTransaction.task_id == Task.id)
        .where(LedgerTransaction.kind == "grant")
    )
    return [
        CounterMetricFamily(
            "swarm_credits_granted_total",
            "Credits granted to workers for verified work (1 credit = 10^15 FLOPs).",
            value=_credits(granted),
        ),
        GaugeMetricFamily(
            "swarm_research_pool_credits",
            "The research pool's balance: its share of every job's spending, and donations.",
            value=_credits(ledger.balance(session, RESEARCH_POOL)),
        ),
    ]


def _rpc_families(servicer: WorkerServicer) -> list[Metric]:
    stats: dict[str, RpcStats] = servicer.rpc_stats()
    requests = CounterMetricFamily(
        "swarm_grpc_requests_total",
        "Worker RPCs answered since the coordinator started, by method and gRPC status code.",
        labels=["method", "code"],
    )
    durations = HistogramMetricFamily(
        "swarm_grpc_request_duration_seconds",
        "Time the coordinator spent on each worker RPC (a stream: until its last message), by "
        "method.",
        labels=["method"],
    )
    for method, calls in sorted(stats.items()):
        for code, count in sorted(calls.codes.items()):
            requests.add_metric([method, code], count)
        durations.add_metric(
            [method],
            _cumulative_buckets(RPC_BUCKETS_S, list(accumulate(calls.bucket_counts))),
            calls.sum_s,
        )
    counters = servicer.counters()
    results = CounterMetricFamily(
        "swarm_results_total",
        "Results workers submitted since the coordinator started, by what became of them: "
        "accepted, rejected (bad bytes or signature) or ignored (late, duplicate or stale).",
        labels=["outcome"],
    )
    for outcome in ("accepted", "rejected", "ignored"):
        results.add_metric([outcome], counters.get(f"results_{outcome}", 0))
    return [requests, durations, results]


def _by_status(
    name: str, documentation: str, counts: dict[str, int], statuses: list[str]
) -> GaugeMetricFamily:
    """A gauge by status, with every known status present (zero if none), so a series that
    drops to zero reads zero instead of vanishing."""
    family = GaugeMetricFamily(name, documentation, labels=["status"])
    for status in [*statuses, *sorted(set(counts) - set(statuses))]:
        family.add_metric([status], counts.get(status, 0))
    return family


def _cumulative_buckets(
    bounds: Sequence[float], cumulative: Sequence[int]
) -> list[tuple[str, float]]:
    """Prometheus's `(le, count)` pairs: `cumulative[i]` observations up to `bounds[i]`, and the
    last, every observation (`+Inf`)."""
    assert len(cumulative) == len(bounds) + 1, (len(cumulative), len(bounds))
    return [
        (floatToGoString(le), float(count))
        for le, count in zip([*bounds, float("inf")], cumulative, strict=True)
    ]


def _credits(micro: int | None) -> float:
    return int(micro or 0) / MICRO_PER_CREDIT
