"""One coordinator process: gRPC for workers, HTTP for people, and a housekeeping thread."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
import uvicorn

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.http import create_app
from swarm.coordinator.jobs import JobService
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.servicer import WorkerServicer
from swarm.coordinator.settings import CoordinatorSettings
from swarm.coordinator.storage import Database
from swarm.coordinator.tasks import TaskService
from swarm.coordinator.workers import WorkerRegistry
from swarm.protocol.service import add_worker_service, new_server

logger = logging.getLogger(__name__)

READY_FILE = "coordinator.json"


class Housekeeper(threading.Thread):
    """Expires leases and closes complete rounds; wakes early when a result is accepted."""

    def __init__(
        self,
        tasks: TaskService,
        rounds: RoundService,
        *,
        wake: threading.Event | None = None,
        period_s: float = 0.5,
    ) -> None:
        super().__init__(name="housekeeper", daemon=True)
        self._tasks = tasks
        self._rounds = rounds
        self._period_s = period_s
        self._wake = wake or threading.Event()
        self._stopping = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._period_s)
            self._wake.clear()
            try:
                self._tasks.expire_leases()
                for round_id in self._rounds.rounds_ready():
                    self._rounds.close_round(round_id)
            except Exception:  # the top of a loop: log and keep the coordinator alive
                logger.exception("housekeeping failed; retrying in %.1fs", self._period_s)
                time.sleep(self._period_s)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


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
    jobs: JobService
    servicer: WorkerServicer
    housekeeper: Housekeeper
    grpc_server: grpc.Server
    grpc_port: int


def build_services(settings: CoordinatorSettings) -> Services:
    """Open the database (migrating it), the blob store and a gRPC server bound to its port."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url())
    db.migrate()
    blobs = BlobStore(settings.data_dir / "blobs")
    catalog = ModelCatalog(settings.data_dir / "models", blobs)
    rounds = RoundService(db, blobs, catalog, worker_online_s=settings.worker_online_s)
    reopened = rounds.recover()
    if reopened:
        logger.warning("reopened %d round(s) left mid-aggregation by a previous run", reopened)
    wake = threading.Event()
    tasks = TaskService(db, settings.lease_policy(), on_result_accepted=wake.set)
    housekeeper = Housekeeper(tasks, rounds, wake=wake)
    servicer = WorkerServicer(
        WorkerRegistry(db), tasks, blobs, heartbeat_interval_s=settings.heartbeat_interval_s
    )
    grpc_server = new_server(settings.grpc_threads)
    add_worker_service(
        grpc_server,
        servicer,
        on_internal_error=lambda rpc: servicer.count(f"internal_errors:{rpc}"),
    )
    grpc_port = grpc_server.add_insecure_port(_grpc_target(settings.host, settings.grpc_port))
    if grpc_port == 0:
        raise OSError(f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}")
    return Services(
        settings=settings,
        db=db,
        blobs=blobs,
        rounds=rounds,
        tasks=tasks,
        catalog=catalog,
        jobs=JobService(db, blobs, rounds, catalog, settings.data_dir / "datasets"),
        servicer=servicer,
        housekeeper=housekeeper,
        grpc_server=grpc_server,
        grpc_port=grpc_port,
    )


def run(settings: CoordinatorSettings) -> None:
    """Serve until SIGINT or SIGTERM."""
    services = build_services(settings)
    db, servicer, grpc_server, housekeeper = (
        services.db,
        services.servicer,
        services.grpc_server,
        services.housekeeper,
    )
    grpc_port = services.grpc_port
    http_socket = _bind(settings.host, settings.http_port)
    http_port = http_socket.getsockname()[1]

    app = create_app(db, services.jobs, services.catalog, services.blobs)
    app.state.servicer = servicer
    http_server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )

    grpc_server.start()
    housekeeper.start()
    _write_ready_file(settings.data_dir, settings.host, grpc_port, http_port)
    logger.info(
        "coordinator serving gRPC on %s:%d and HTTP on http://%s:%d (data in %s)",
        settings.host,
        grpc_port,
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
        housekeeper.stop()
        grpc_server.stop(grace=2.0).wait()
        housekeeper.join(timeout=10)
        db.dispose()
        (settings.data_dir / READY_FILE).unlink(missing_ok=True)
        logger.info("coordinator stopped")


def _write_ready_file(data_dir: Path, host: str, grpc_port: int, http_port: int) -> None:
    """Tell launchers (the demo, tests) which ports were bound, atomically."""
    temp = data_dir / (READY_FILE + ".tmp")
    temp.write_text(
        json.dumps(
            {"host": host, "grpc_port": grpc_port, "http_port": http_port, "pid": os.getpid()}
        )
    )
    os.replace(temp, data_dir / READY_FILE)
