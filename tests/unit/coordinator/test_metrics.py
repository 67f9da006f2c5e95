"""`GET /metrics`: the swarm's numbers as the database holds them, HTTP requests by route
template, and worker RPCs by method and status code, after real work over HTTP and gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from swarm.coordinator.http import create_app
from swarm.coordinator.server import Services
from swarm.coordinator.storage import Lease, LedgerTransaction, Round, Task, Worker
from swarm.coordinator.workers import WorkerRegistry
from swarm.protocol import messages as m
from swarm.protocol.errors import UnauthenticatedError
from swarm.protocol.service import WorkerClient, open_channel
from swarm.scheduler import MICRO_PER_CREDIT, RESEARCH_POOL
from tests.conftest import local_client, signed_registration, wire_services
from tests.unit.coordinator.test_http_scheduling import HYPERPARAMETERS
from tests.unit.coordinator.test_scheduling import Swarm


@dataclass
class Scrape:
    """One scrape of `/metrics`, parsed by Prometheus's own parser."""

    families: list[Metric]

    @property
    def samples(self) -> list[Sample]:
        return [s for f in self.families for s in f.samples]

    def family(self, name: str) -> Metric | None:
        return next((f for f in self.families if f.name == name), None)

    def value(self, name: str, **labels: str) -> float:
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def by(self, name: str, label: str) -> dict[str, float]:
        return {s.labels[label]: s.value for s in self.samples if s.name == name}


def scrape(client: TestClient) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(families=list(text_string_to_metric_families(response.text)))


pytestmark = pytest.mark.settings(lease_ttl_s=10.0, solo_wait_s=5.0)


@pytest.fixture
def worker_client(services: Services) -> Iterator[WorkerClient]:
    """Real gRPC to the coordinator's servicer on a loopback port (no housekeeping threads)."""
    services.grpc_server.start()
    channel = open_channel(f"127.0.0.1:{services.grpc_port}")
    try:
        yield WorkerClient(channel)
    finally:
        channel.close()
        services.grpc_server.stop(grace=None)


def create_job(client: TestClient, services: Services) -> str:
    """Create a job over HTTP and let the coordinator prepare and start it."""
    response = client.post(
        "/v1/fine_tuning/jobs", json={"model": "micro-llama", "hyperparameters": HYPERPARAMETERS}
    )
    assert response.status_code == 200, response.text
    services.jobs.prepare_next()
    services.scheduler.admit_jobs()
    return str(response.json()["id"])


def register(worker_client: WorkerClient, device_type: str) -> tuple[m.Session, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    request = signed_registration(
        key,
        name=f"{device_type}-worker",
        hardware=m.HardwareProfile(device_type=device_type, memory_bytes=1 << 30),
    )
    return worker_client.register_worker(request).session, key


def submit_over_grpc(
    worker_client: WorkerClient, swarm: Swarm, session: m.Session, key: Ed25519PrivateKey
) -> None:
    """Lease a task, fetch its parameters and submit a signed result, all over gRPC."""
    task = worker_client.lease_task(m.LeaseTaskRequest(session=session)).task
    assert task is not None
    params = task.train or task.evaluate
    assert params is not None
    fetched = worker_client.fetch_blob(
        m.FetchBlobRequest(session=session, sha256=params.params_sha256), timeout_s=30
    )
    assert b"".join(chunk.data for chunk in fetched)
    header = swarm.header(session.worker_id, task)
    header = replace(
        header,
        session=session,
        signature=key.sign(
            m.result_signing_bytes(task.task_id, header.payload_sha256, header.metrics)
        ),
    )
    payload = swarm.services.blobs.path(header.payload_sha256).read_bytes()
    response = worker_client.submit_result(header, iter([payload]), timeout_s=30)
    assert response.accepted, response.message


def test_a_finished_job_reads_the_same_in_metrics_as_in_the_database(
    client: TestClient, services: Services, worker_client: WorkerClient
) -> None:
    cuda, cuda_key = register(worker_client, "cuda")
    cpu, _ = register(worker_client, "cpu")
    with pytest.raises(UnauthenticatedError):
        worker_client.heartbeat(
            m.HeartbeatRequest(session=m.Session(worker_id=cuda.worker_id, token=b"x" * 32))
        )
    job_id = create_job(client, services)
    for path, amount in (("issue", 2.5), ("donate", 1.0)):  # the research pool gets 1 credit
        response = client.post(
            f"/v1/swarm/credits/{path}", json={"account": "user:ann", "amount": amount}
        )
        assert response.status_code == 200, response.text
    swarm = Swarm(services)
    submit_over_grpc(worker_client, swarm, cuda, cuda_key)
    assert swarm.finish_job(job_id, [cuda.worker_id, cpu.worker_id]).status == "succeeded"
    for _ in range(3):
        assert client.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200
    gone = signed_registration(name="gone", hardware=m.HardwareProfile(device_type="mps"))
    gone_id = WorkerRegistry(services.db).register(gone, "ipv4:127.0.0.1:1")[0].id
    with services.db.transaction() as session:  # last seen just before the online window
        session.get_one(Worker, gone_id).last_seen_at = (
            time.time() - services.settings.worker_online_s - 1
        )

    metrics = scrape(client)

    assert metrics.by("swarm_jobs", "status") == {
        "validating_files": 0,
        "queued": 0,
        "running": 0,
        "paused": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
    }
    online = metrics.by("swarm_workers_online", "device_type")
    assert (online["cuda"], online["cpu"], online["mps"], sum(online.values())) == (1, 1, 0, 2)
    assert metrics.value("swarm_workers_registered_total") == 3
    with services.db.transaction() as session:
        tasks = {
            status: count
            for status, count in session.execute(
                select(Task.status, func.count()).group_by(Task.status)
            )
        }
        submitted = session.scalar(
            select(func.count()).select_from(Lease).where(Lease.outcome == "submitted")
        )
        rounds = session.execute(
            select(
                Round.tokens, Round.bytes_up, Round.bytes_down, Round.opened_at, Round.closed_at
            ).where(Round.closed_at.is_not(None))
        ).all()
        granted = session.scalar(
            select(func.sum(Task.credits))
            .join(LedgerTransaction, LedgerTransaction.task_id == Task.id)
            .where(LedgerTransaction.kind == "grant")
        )
        pool = services.ledger.balance(session, RESEARCH_POOL)
    assert metrics.by("swarm_tasks", "status") == {
        "pending": 0,
        "leased": 0,
        "cancelled": 0,
        **tasks,
    }
    assert tasks["accepted"] > 0
    assert metrics.value("swarm_leases_ended_total", outcome="submitted") == submitted > 0
    assert metrics.value("swarm_leases_active") == 0

    assert metrics.value("swarm_rounds_closed_total") == len(rounds) >= 2  # and the final one
    assert metrics.value("swarm_trained_tokens_total") == sum(r.tokens for r in rounds) > 0
    assert metrics.value("swarm_upload_bytes_total") == sum(r.bytes_up for r in rounds) > 0
    assert metrics.value("swarm_download_bytes_total") == sum(r.bytes_down for r in rounds) > 0
    assert metrics.value("swarm_round_duration_seconds_count") == len(rounds)
    assert metrics.value("swarm_round_duration_seconds_bucket", le="+Inf") == len(rounds)
    assert metrics.value("swarm_round_duration_seconds_bucket", le="1.0") == sum(
        r.closed_at - r.opened_at <= 1.0 for r in rounds
    )
    assert metrics.value("swarm_round_duration_seconds_sum") == pytest.approx(
        sum(r.closed_at - r.opened_at for r in rounds)
    )
    assert metrics.value("swarm_credits_granted_total") == granted / MICRO_PER_CREDIT > 0
    assert metrics.value("swarm_research_pool_credits") == pool / MICRO_PER_CREDIT >= 1
    assert 0 < metrics.value("swarm_database_ping_seconds") < 5
    assert metrics.value("swarm_database_up") == 1

    grpc_calls = {
        (s.labels["method"], s.labels["code"]): s.value
        for s in metrics.samples
        if s.name == "swarm_grpc_requests_total"
    }
    assert grpc_calls == {
        ("RegisterWorker", "OK"): 2,
        ("Heartbeat", "UNAUTHENTICATED"): 1,
        ("LeaseTask", "OK"): 1,
        ("FetchBlob", "OK"): 1,
        ("SubmitResult", "OK"): 1,
    }
    for method in ("RegisterWorker", "Heartbeat", "LeaseTask", "FetchBlob", "SubmitResult"):
        count = metrics.value("swarm_grpc_request_duration_seconds_count", method=method)
        assert count == metrics.value(
            "swarm_grpc_request_duration_seconds_bucket", method=method, le="+Inf"
        )
        assert count == sum(v for (rpc, _), v in grpc_calls.items() if rpc == method)
    assert metrics.value("swarm_results_total", outcome="accepted") == 1

    http = {
        (s.labels["method"], s.labels["route"], s.labels["code"]): s.value
        for s in metrics.samples
        if s.name == "swarm_http_requests_total"
    }
    assert http[("POST", "/v1/fine_tuning/jobs", "200")] == 1
    assert http[("GET", "/v1/fine_tuning/jobs/{job_id}", "200")] == 3
    assert not [labels for labels in http if job_id in "".join(labels)]
    assert (
        metrics.value(
            "swarm_http_request_duration_seconds_count",
            method="GET",
            route="/v1/fine_tuning/jobs/{job_id}",
        )
        == 3
    )


def test_an_expired_lease_moves_its_task_back_to_the_queue_in_metrics(
    client: TestClient, services: Services
) -> None:
    swarm = Swarm(services)
    workers = [swarm.register(f"w{i}") for i in range(2)]
    create_job(client, services)
    assert swarm.lease(workers[0]) is not None
    before = scrape(client)
    assert before.value("swarm_leases_active") == 1
    assert before.value("swarm_leases_ended_total", outcome="expired") == 0

    assert services.tasks.expire_leases(now=time.time() + 3600) == 1

    after = scrape(client)
    assert after.value("swarm_leases_active") == 0
    assert after.value("swarm_leases_ended_total", outcome="expired") == 1
    assert (
        after.value("swarm_tasks", status="leased")
        == before.value("swarm_tasks", status="leased") - 1
    )
    assert (
        after.value("swarm_tasks", status="pending")
        == before.value("swarm_tasks", status="pending") + 1
    )
    assert after.value("swarm_jobs", status="running") == 1


def test_metrics_need_no_key_and_label_requests_by_route_template(
    client: TestClient, services: Services
) -> None:
    services.keys.create("user:ops", "operator")  # setup mode ends: /v1 needs a key now
    assert client.get("/v1/fine_tuning/jobs/ftjob-0123abcd").status_code == 401
    assert client.get("/v1/swarm/jobs/ftjob-0123abcd/artifacts/merged/a/b.bin").status_code == 401
    assert client.get("/no/such/page/ftjob-0123abcd").status_code == 404
    assert client.delete("/healthz").status_code == 405

    metrics = scrape(client)

    http = {
        (s.labels["method"], s.labels["route"], s.labels["code"]): s.value
        for s in metrics.samples
        if s.name == "swarm_http_requests_total"
    }
    assert http == {
        ("GET", "/v1/fine_tuning/jobs/{job_id}", "401"): 1,
        ("GET", "/v1/swarm/jobs/{job_id}/artifacts/{kind}/{path}", "401"): 1,
        ("GET", "unmatched", "404"): 1,
        ("DELETE", "/healthz", "405"): 1,
    }  # a scrape is counted only once it has been answered: the next one shows it
    assert (
        scrape(client).value(
            "swarm_http_requests_total", method="GET", route="/metrics", code="200"
        )
        == 1
    )
    for family in metrics.families:
        assert family.name.startswith("swarm_"), family.name
        assert family.documentation.strip(), f"{family.name} has no HELP text"
        if family.type == "counter":
            names = {f"{family.name}_total", f"{family.name}_created"}
            assert {s.name for s in family.samples} <= names, family.name


def test_an_unreadable_database_still_serves_the_process_metrics(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable() -> float:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    assert scrape(client).value("swarm_database_up") == 1
    monkeypatch.setattr(services.db, "ping_s", unreachable)

    metrics = scrape(client)

    assert metrics.value("swarm_database_up") == 0
    assert metrics.family("swarm_jobs") is None
    assert metrics.family("swarm_database_ping_seconds") is None
    assert metrics.value("swarm_http_requests_total", method="GET", route="/metrics", code="200")
    assert metrics.family("swarm_grpc_requests") is not None


def test_the_sums_read_the_same_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    services = wire_services(tmp_path, db=postgres_url, lease_ttl_s=10.0, solo_wait_s=5.0)
    try:
        with local_client(create_app(services)) as client:
            swarm = Swarm(services)
            workers = [swarm.register(f"w{i}") for i in range(2)]
            job_id = create_job(client, services)
            assert swarm.finish_job(job_id, workers).status == "succeeded"
            metrics = scrape(client)
        with services.db.transaction() as session:
            tokens, closed = session.execute(
                select(func.sum(Round.tokens), func.count()).where(Round.closed_at.is_not(None))
            ).one()
        assert metrics.value("swarm_trained_tokens_total") == tokens > 0
        assert metrics.value("swarm_rounds_closed_total") == closed
        assert metrics.value("swarm_round_duration_seconds_bucket", le="+Inf") == closed
        assert metrics.value("swarm_credits_granted_total") > 0
    finally:
        services.db.dispose()
