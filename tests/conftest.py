"""Shared fixtures: PostgreSQL databases, in-process gRPC coordinators, coordinator processes."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from swarm.coordinator.server import Services, build_services
from swarm.coordinator.settings import CoordinatorSettings
from swarm.coordinator.storage import Job
from swarm.protocol import messages as m
from swarm.protocol.version import PROTOCOL_VERSION
from swarm.scheduler import JobSpec

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

MICRO_SPEC = JobSpec(
    model="micro-llama",
    num_rounds=2,
    inner_steps=2,
    warmup_steps=1,
    batch_size=2,
    seq_len=16,
    min_clients=2,
    num_shards=4,
    codec="fp16",
)
"""The smallest job the coordinator runs: 2 rounds of 2 tasks of 64 tokens each."""


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database at 127.0.0.1:5432, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"swarm_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):  # CI machines run PostgreSQL: its absence is a failure there
            pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def signed_registration(
    key: Ed25519PrivateKey | None = None,
    *,
    name: str = "tester",
    hardware: m.HardwareProfile | None = None,
    protocol_version: int = PROTOCOL_VERSION,
    public_key: bytes | None = None,
    signed_at: float | None = None,
    account_token: str = "",
) -> m.RegisterWorkerRequest:
    """A registration signed by `key` (a new one by default), as a real client sends it."""
    key = key or Ed25519PrivateKey.generate()
    if public_key is None:
        public_key = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signed_at = time.time() if signed_at is None else signed_at
    return m.RegisterWorkerRequest(
        protocol_version=protocol_version,
        name=name,
        public_key=public_key,
        hardware=hardware or m.HardwareProfile(memory_bytes=1 << 30, cpu_cores=2),
        client_version="test",
        signed_at_unix_s=signed_at,
        signature=key.sign(m.registration_signing_bytes(public_key, name, signed_at)),
        account_token=account_token,
    )


@dataclass
class LiveCoordinator:
    """A coordinator's services with its gRPC server listening on 127.0.0.1 (no HTTP)."""

    services: Services
    target: str


def wire_services(data_dir: Path, **overrides: Any) -> Services:
    """A coordinator's services on SQLite in `data_dir`, wired but not serving: tests drive
    them directly (`services.housekeeper.tick()` for one round of housekeeping)."""
    # Long polls kept short: tests ask for leases they expect to come back empty.
    overrides.setdefault("lease_long_poll_s", 0.2)
    # Plaintext gRPC: tests dial it directly (processes started with `start_coordinator` and
    # the TLS tests serve TLS, as a coordinator does by default).
    overrides.setdefault("tls", False)
    settings = CoordinatorSettings(
        host="127.0.0.1", grpc_port=0, http_port=0, data_dir=data_dir, **overrides
    )
    return build_services(settings)


def run_swarm(stack: ExitStack, root: Path, client_names: list[str]) -> str:
    """A coordinator process in `root` and a `swarmclient join` process per name, all stopped
    when `stack` closes; returns the coordinator's HTTP URL."""
    from swarm.coordinator.demo import start_client, start_coordinator, stop_process

    log = stack.enter_context((root / "coordinator.log").open("w"))
    coordinator, ready = start_coordinator(root / "coordinator", log)
    stack.callback(stop_process, coordinator, signal.SIGTERM)
    for name in client_names:
        client_log = stack.enter_context((root / f"{name}.log").open("w"))
        target = f"127.0.0.1:{ready['grpc_port']}"
        stack.callback(stop_process, start_client(target, name, root / name, client_log))
    return f"http://127.0.0.1:{ready['http_port']}"


def local_client(app: Any) -> Any:
    """A TestClient whose requests come from 127.0.0.1: before the first API key exists, the
    coordinator answers them as the local operator (setup mode)."""
    from fastapi.testclient import TestClient

    return TestClient(
        app,
        raise_server_exceptions=False,
        client=("127.0.0.1", 50000),
        base_url="http://127.0.0.1:8000",
    )


def start_job(services: Services, spec: JobSpec, **create: Any) -> Job:
    """Create a job, prepare it and let the scheduler start it, as the coordinator's threads
    would; the job as stored afterwards."""
    job = services.jobs.create_job(spec, **create)
    assert services.jobs.prepare_next() == job.id
    services.scheduler.admit_jobs()
    started = services.jobs.get_job(job.id)
    assert started.status == "running", (started.status, started.error)
    return started


def wait_until_running(services: Services, job_id: str, timeout_s: float = 60.0) -> Job:
    """A live coordinator's job once its own threads have prepared and started it."""
    deadline = time.monotonic() + timeout_s
    while (job := services.jobs.get_job(job_id)).status in ("validating_files", "queued"):
        assert time.monotonic() < deadline, f"job {job_id} is still {job.status}"
        time.sleep(0.05)
    assert job.status == "running", (job.status, job.error)
    return job


def start_live_coordinator(data_dir: Path, **overrides: Any) -> LiveCoordinator:
    services = wire_services(data_dir, **overrides)
    services.start()
    return LiveCoordinator(services=services, target=f"127.0.0.1:{services.grpc_port}")


def stop_live_coordinator(live: LiveCoordinator) -> None:
    live.services.stop()


@pytest.fixture
def live_coordinator(tmp_path: Path) -> Iterator[LiveCoordinator]:
    """An in-process coordinator on SQLite, serving real gRPC on a free loopback port."""
    live = start_live_coordinator(tmp_path / "coordinator", lease_ttl_s=5.0, solo_wait_s=2.0)
    try:
        yield live
    finally:
        stop_live_coordinator(live)
