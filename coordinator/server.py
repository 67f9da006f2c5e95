"""One coordinator process: gRPC for workers, HTTP for people, and a housekeeping thread."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
import numpy as np
import uvicorn

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.control import SwarmControl
from swarm.coordinator.files import FileService
from swarm.coordinator.http import create_app
from swarm.coordinator.jobs import JobService
from swarm.coordinator.keys import KeyService
from swarm.coordinator.ledger import Ledger
from swarm.coordinator.presence import Presence, load_coordinator_id
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.scheduling import Scheduler
from swarm.coordinator.servicer import WorkerServicer, WorkSignal
from swarm.coordinator.settings import CoordinatorSettings
from swarm.coordinator.storage import Database
from swarm.coordinator.tasks import TaskService
from swarm.coordinator.throttle import CallThrottle
from swarm.coordinator.workers import WorkerRegistry
from swarm.protocol import tls
from swarm.protocol.errors import ConfigError
from swarm.protocol.service import add_worker_service, new_server
from swarm.scheduler import ResearchShare

logger = logging.getLogger(__name__)

READY_FILE = "coordinator.json"


class Housekeeper(threading.Thread):
    """Expires leases, closes rounds that may close, starts queued jobs and places workers;
    wakes early when a result is accepted or a job is queued."""

    def __init__(
        self,
        tasks: TaskService,
        rounds: RoundService,
        scheduler: Scheduler,
        *,
        presence: Presence | None = None,
        work: WorkSignal | None = None,
        wake: threading.Event | None = None,
        period_s: float = 0.5,
        placement_period_s: float = 2.0,
        recover_period_s: float = 5.0,
    ) -> None:
        super().__init__(name="housekeeper", daemon=True)
        self._presence = presence
        self._work = work
        self._last_opened_at: float | None = None
        self._recover_period_s = recover_period_s
        self._next_recover = 0.0
        self._tasks = tasks
        self._rounds = rounds
        self._scheduler = scheduler
        self._period_s = period_s
        self._placement_period_s = placement_period_s
        self._wake = wake or threading.Event()
        self._stopping = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        next_placement = 0.0
        while not self._stopping.is_set():
            self._wake.wait(self._period_s)
            self._wake.clear()
            try:
                place = time.monotonic() >= next_placement
                self.tick(place=place)
                if place:
                    next_placement = time.monotonic() + self._placement_period_s
            except Exception:  # the top of a loop: log and keep the coordinator alive
                logger.exception("housekeeping failed; retrying in %.1fs", self._period_s)
                time.sleep(self._period_s)

    def tick(self, *, place: bool = True) -> None:
        """One round of housekeeping (tests call it directly)."""
        if self._presence is not None:
            self._presence.touch()
        if time.monotonic() >= self._next_recover:  # rounds a vanished coordinator held
            self._rounds.recover()
            self._next_recover = time.monotonic() + self._recover_period_s
        expired = self._tasks.expire_leases()
        for round_id in self._rounds.rounds_ready():
            self._rounds.close_round(round_id)
        started = self._scheduler.admit_jobs()
        if place or started:
            self._scheduler.place_workers()
        if self._work is not None:
            # A round opened (the next after a close, or a job's first) by this coordinator or
            # another on the same database, or tasks freed by expired leases: wake the polls.
            opened_at = self._rounds.latest_opened_at()
            if expired or opened_at != self._last_opened_at:
                self._work.pulse()
            self._last_opened_at = opened_at


class Preparer(threading.Thread):
    """Prepares jobs that are validating (loading models, tokenizing data), one at a time, off
    the housekeeper's thread; a job left validating by a crash is prepared again."""

    def __init__(
        self, jobs: JobService, *, wake: threading.Event, on_queued: Callable[[], None]
    ) -> None:
        super().__init__(name="preparer", daemon=True)
        self._jobs = jobs
        self._wake = wake
        self._on_queued = on_queued
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(5.0)
            self._wake.clear()
            try:
                while not self._stopping.is_set() and self._jobs.prepare_next() is not None:
                    self._on_queued()
            except Exception:  # the top of a loop: log and keep the coordinator alive
                logger.exception("preparing jobs failed; retrying")
                time.sleep(1.0)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


PROBE_BYTES = 1 << 20


@functools.lru_cache(maxsize=1)
def probe_bytes() -> bytes:
    """What new workers download once to measure their link: 1 MiB that zstd cannot shrink,
    the same on every start (so the blob store keeps one copy)."""
    return np.random.default_rng(0x5EED).bytes(PROBE_BYTES)


def _grpc_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Services:
    """Everything one coordinator process runs, wired together but not yet serving."""

    settings: CoordinatorSettings
    db: Database
    blobs: BlobStore
    rounds: RoundService
    tasks: TaskService
    catalog: ModelCatalog
    ledger: Ledger
    jobs: JobService
    files: FileService
    keys: KeyService
    control: SwarmControl
    scheduler: Scheduler
    servicer: WorkerServicer
    housekeeper: Housekeeper
    preparer: Preparer
    grpc_server: grpc.Server
    grpc_port: int
    presence: Presence
    certificate: tls.Certificate | None = None
    """What gRPC is served with (None: plaintext, --no-tls)."""

    def start(self) -> None:
        self.grpc_server.start()
        self.housekeeper.start()
        self.preparer.start()

    def stop(self) -> None:
        self.housekeeper.stop()
        self.preparer.stop()
        self.grpc_server.stop(grace=2.0).wait()
        self.housekeeper.join(timeout=10)
        self.preparer.join(timeout=60)
        self.db.dispose()


def build_services(settings: CoordinatorSettings) -> Services:
    """Open the database (migrating it), the blob store and a gRPC server bound to its port."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url())
    db.migrate()
    blobs = BlobStore(settings.blobs_dir())
    catalog = ModelCatalog(settings.data_dir / "models", blobs)
    ledger = Ledger(ResearchShare(ppm=round(settings.research_share * 1_000_000)))
    rounds = RoundService(
        db,
        blobs,
        catalog,
        ledger,
        worker_online_s=settings.worker_online_s,
        max_task_s=settings.max_task_s,
        coordinator_id=load_coordinator_id(settings.data_dir),
        coordinator_timeout_s=settings.coordinator_timeout_s,
    )
    presence = Presence(db, rounds.coordinator_id, timeout_s=settings.coordinator_timeout_s)
    reopened = rounds.recover(startup=True)
    if reopened:
        logger.warning("reopened %d round(s) left mid-aggregation by a previous run", reopened)
    wake = threading.Event()
    prepare = threading.Event()
    tasks = TaskService(
        db,
        settings.lease_policy(),
        blobs,
        ledger,
        worker_online_s=settings.worker_online_s,
        on_result_accepted=wake.set,
    )
    scheduler = Scheduler(
        db,
        rounds,
        ledger,
        worker_online_s=settings.worker_online_s,
        require_credits=settings.require_credits,
    )
    forgiven = tasks.forgive_leases()
    if forgiven:
        logger.warning(
            "gave %d lease(s) a fresh deadline so their workers can report back", forgiven
        )
    work = WorkSignal(max_waiters=settings.grpc_threads // 2)
    housekeeper = Housekeeper(tasks, rounds, scheduler, presence=presence, work=work, wake=wake)
    files = FileService(db, blobs)
    jobs = JobService(
        db,
        blobs,
        rounds,
        catalog,
        ledger,
        settings.data_dir / "datasets",
        files=files,
        on_created=prepare.set,
    )
    control = SwarmControl(db)
    keys = KeyService(db)
    servicer = WorkerServicer(
        WorkerRegistry(db, accounts=lambda token, peer: keys.authenticate(token, peer).account),
        tasks,
        blobs,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        control=control,
        probe_sha256=blobs.put_bytes(probe_bytes()),
        work=work if settings.lease_long_poll_s > 0 else None,
        long_poll_s=settings.lease_long_poll_s,
        throttle=CallThrottle(settings.worker_rpc_rate, settings.worker_rpc_burst),
    )
    grpc_server = new_server(settings.grpc_threads, settings.max_concurrent_rpcs)
    add_worker_service(
        grpc_server,
        servicer,
        on_internal_error=lambda rpc: servicer.count(f"internal_errors:{rpc}"),
    )
    certificate = _certificate(settings)
    target = _grpc_target(settings.host, settings.grpc_port)
    grpc_port = (
        grpc_server.add_secure_port(
            target, grpc.ssl_server_credentials([(certificate.key_pem, certificate.cert_pem)])
        )
        if certificate is not None
        else grpc_server.add_insecure_port(target)
    )
    if grpc_port == 0:
        raise OSError(f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}")
    presence.announce(settings.host, grpc_port, 0)
    return Services(
        settings=settings,
        db=db,
        blobs=blobs,
        rounds=rounds,
        tasks=tasks,
        catalog=catalog,
        ledger=ledger,
        jobs=jobs,
        files=files,
        keys=keys,
        control=control,
        scheduler=scheduler,
        servicer=servicer,
        housekeeper=housekeeper,
        preparer=Preparer(jobs, wake=prepare, on_queued=wake.set),
        grpc_server=grpc_server,
        grpc_port=grpc_port,
        presence=presence,
        certificate=certificate,
    )


def _certificate(settings: CoordinatorSettings) -> tls.Certificate | None:
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("give --tls-cert and --tls-key together")
    if not settings.tls:
        if settings.http_tls:
            raise ConfigError("--http-tls needs TLS: drop --no-tls")
        return None
    if settings.tls_cert is not None and settings.tls_key is not None:
        return tls.load(settings.tls_cert, settings.tls_key)
    return tls.self_signed(settings.tls_files()[0].parent)


def run(settings: CoordinatorSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    services = build_services(settings)
    grpc_port = services.grpc_port
    http_socket = _bind(settings.host, settings.http_port)
    http_port = http_socket.getsockname()[1]

    app = create_app(services)
    cert_file, key_file = settings.tls_files()
    http_server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=str(cert_file) if settings.http_tls else None,
            ssl_keyfile=str(key_file) if settings.http_tls else None,
        )
    )

    services.start()
    services.presence.announce(settings.host, grpc_port, http_port)
    if not services.keys.has_keys():
        logger.warning(
            "no API keys yet: until the first exists, the HTTP API answers only requests from "
            "this machine, as the operator; make one with `swarm keys create USER --role operator`"
        )
    certificate = services.certificate
    _write_ready_file(
        settings.data_dir,
        settings.host,
        grpc_port,
        http_port,
        certificate.fingerprint if certificate is not None else None,
    )
    logger.info(
        "coordinator %s serving gRPC on %s:%d (%s) and HTTP on %s://%s:%d (data in %s)",
        services.rounds.coordinator_id,
        settings.host,
        grpc_port,
        f"TLS, certificate {certificate.fingerprint}" if certificate else "plaintext: --no-tls",
        "https" if settings.http_tls else "http",
        settings.host,
        http_port,
        settings.data_dir,
    )

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; shutting down", signal.Signals(signum).name)
        http_server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        http_server.run(sockets=[http_socket])
    finally:
        services.stop()
        (settings.data_dir / READY_FILE).unlink(missing_ok=True)
        logger.info("coordinator stopped")


def _write_ready_file(
    data_dir: Path, host: str, grpc_port: int, http_port: int, fingerprint: str | None
) -> None:
    """Tell launchers (the demo, tests) which ports were bound and the gRPC certificate's
    fingerprint (None: plaintext), atomically."""
    temp = data_dir / (READY_FILE + ".tmp")
    temp.write_text(
        json.dumps(
            {
                "host": host,
                "grpc_port": grpc_port,
                "http_port": http_port,
                "pid": os.getpid(),
                "tls_fingerprint": fingerprint,
            }
        )
    )
    os.replace(temp, data_dir / READY_FILE)
