"""End to end: a coordinator process and client processes train a job over loopback."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarm.coordinator.demo import start_client, start_coordinator, stop_process

pytestmark = pytest.mark.integration

SMALL_JOB = {
    "num_rounds": 3,
    "inner_steps": 6,
    "batch_size": 8,
    "seq_len": 64,
    "num_shards": 8,
    "min_clients": 2,
}


@dataclass
class Swarm:
    http: httpx.Client
    target: str
    data_dir: Path
    clients: list[Any]
    logs: Path

    def create_job(self, **hyperparameters: Any) -> dict[str, Any]:
        response = self.http.post(
            "/v1/fine_tuning/jobs",
            json={"model": "tiny-llama", "hyperparameters": {**SMALL_JOB, **hyperparameters}},
        )
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_job(self, job_id: str, timeout_s: float = 240.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not finish in {timeout_s}s; logs in {self.logs}")

    def rounds(self, job_id: str) -> list[dict[str, Any]]:
        return self.http.get(f"/v1/swarm/jobs/{job_id}/rounds").json()["data"]

    def log_of(self, index: int) -> str:
        return (self.logs / f"client-{index}.log").read_text()


@contextmanager
def running_swarm(
    tmp_path: Path,
    num_clients: int = 2,
    db: str | None = None,
    env: dict[str, str] | None = None,
    client_env: list[dict[str, str]] | None = None,
) -> Iterator[Swarm]:
    """A coordinator process (`env` added to its environment) and `num_clients` clients (the
    i-th with `client_env[i]` added to its)."""
    with ExitStack() as stack:
        log = stack.enter_context((tmp_path / "coordinator.log").open("w"))
        coordinator, ready = start_coordinator(tmp_path / "coordinator", log, db, env)
        stack.callback(stop_process, coordinator, signal.SIGTERM)
        target = f"127.0.0.1:{ready['grpc_port']}"
        clients = []
        for i in range(num_clients):
            client_log = stack.enter_context((tmp_path / f"client-{i}.log").open("w"))
            client = start_client(
                target,
                f"test-client-{i}",
                tmp_path / f"client-{i}",
                client_log,
                extra_env=client_env[i] if client_env else None,
            )
            stack.callback(stop_process, client)
            clients.append(client)
        http = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{ready['http_port']}", timeout=60.0)
        )
        yield Swarm(
            http=http,
            target=target,
            data_dir=tmp_path / "coordinator",
            clients=clients,
            logs=tmp_path,
        )


def _assert_trained_by_both(swarm: Swarm, job: dict[str, Any]) -> None:
    assert job["status"] == "succeeded", job
    rounds = swarm.rounds(job["id"])
    # Three training rounds, then a final round that only measures the last version.
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    *training, final = rounds
    assert all(r["status"] == "closed" for r in rounds), rounds
    assert all(r["num_train_tasks"] == 2 and r["num_tasks"] == 3 for r in training), training
    assert all(r["num_clients"] == 2 for r in training), training
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in training), training
    assert (final["num_train_tasks"], final["num_tasks"], final["tokens"]) == (0, 1, 0), final
    assert final["bytes_up"] == 0, final  # evaluations send metrics only
    # Every round's held-out loss was measured by a client, for the version it started from.
    assert all(r["eval_loss"] is not None for r in rounds), rounds
    swarm_job = job["swarm"]
    assert swarm_job["initial_eval_loss"] == rounds[0]["eval_loss"]
    assert swarm_job["eval_loss"] == final["eval_loss"]
    assert swarm_job["eval_loss"] < swarm_job["initial_eval_loss"] * 0.8
    assert swarm_job["rounds_completed"] == 3
    assert swarm_job["artifacts"] == ["merged"]  # full fine-tuning: no adapter
    workers = swarm.http.get("/v1/swarm/workers").json()["data"]
    accepted = sorted(w["tasks_accepted"] for w in workers)
    # 3 train tasks each, and the 4 evaluations shared between them.
    assert sum(accepted) == 3 * 3 + 1 and accepted[0] >= 3, accepted
    logs = swarm.log_of(0) + swarm.log_of(1)
    assert logs.count("evaluated version") == 4, logs[-2000:]


def test_two_clients_train_a_job_on_sqlite(tmp_path: Path) -> None:
    with running_swarm(tmp_path) as swarm:
        job = swarm.wait_for_job(swarm.create_job()["id"])
        _assert_trained_by_both(swarm, job)
        events = swarm.http.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
        assert sum(e["type"] == "metrics" for e in events) == 4  # 3 rounds and the final
        assert any("final version" in e["message"] for e in events)


@pytest.mark.postgres
def test_two_clients_train_a_job_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    with running_swarm(tmp_path, db=postgres_url) as swarm:
        # This job also has each worker keep its inner AdamW state between its tasks.
        job = swarm.wait_for_job(swarm.create_job(inner_state="worker")["id"])
        _assert_trained_by_both(swarm, job)
        # Three train tasks per client: the second and third resume the first's optimizer.
        for index in (0, 1):
            assert swarm.log_of(index).count("inner optimizer") == 2, swarm.log_of(index)[-2000:]
    assert not (tmp_path / "coordinator" / "swarm.db").exists()


FAST_LEASES = {
    "SWARM_LEASE_TTL_S": "3",
    "SWARM_HEARTBEAT_INTERVAL_S": "1",
    "SWARM_SOLO_WAIT_S": "2",
}


def _wait_for_log(swarm: Swarm, index: int, needle: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in swarm.log_of(index):
        assert time.monotonic() < deadline, f"client {index} never logged {needle!r}"
        time.sleep(0.1)


def _leases(data_dir: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data_dir / "swarm.db") as db:
        return db.execute("SELECT task_id, worker_id, outcome FROM leases ORDER BY id").fetchall()


def test_round_completes_when_a_client_is_killed_mid_round(tmp_path: Path) -> None:
    with running_swarm(tmp_path, env=FAST_LEASES) as swarm:
        job = swarm.create_job(num_rounds=2, inner_steps=40)
        _wait_for_log(swarm, 1, "step 10/40")
        swarm.clients[1].send_signal(signal.SIGKILL)
        job = swarm.wait_for_job(job["id"])
        assert job["status"] == "succeeded", job
        assert all(r["status"] == "closed" for r in swarm.rounds(job["id"]))
        outcomes = [outcome for _, _, outcome in _leases(swarm.data_dir)]
        assert "expired" in outcomes, outcomes
        # the killed client's task was re-leased and finished by the survivor
        expired_task = next(t for t, _, o in _leases(swarm.data_dir) if o == "expired")
        assert (expired_task, "submitted") in {(t, o) for t, _, o in _leases(swarm.data_dir)}


def test_ctrl_c_hands_the_task_back_at_once(tmp_path: Path) -> None:
    with running_swarm(tmp_path, env={**FAST_LEASES, "SWARM_LEASE_TTL_S": "600"}) as swarm:
        job = swarm.create_job(num_rounds=1, inner_steps=40)
        _wait_for_log(swarm, 1, "step 10/40")
        assert stop_process(swarm.clients[1], signal.SIGINT) == 0
        assert "handing back task" in swarm.log_of(1)
        # With a 10-minute lease, only the hand-back lets the survivor finish in time.
        job = swarm.wait_for_job(job["id"], timeout_s=120)
        assert job["status"] == "succeeded"
        outcomes = [outcome for _, _, outcome in _leases(swarm.data_dir)]
        assert "handed_back" in outcomes and "expired" not in outcomes, outcomes


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_clients_reconnect_when_the_coordinator_restarts(tmp_path: Path) -> None:
    grpc_port, http_port = _free_port(), _free_port()
    env = {**FAST_LEASES, "SWARM_GRPC_PORT": str(grpc_port), "SWARM_HTTP_PORT": str(http_port)}
    data_dir = tmp_path / "coordinator"

    def start(log_name: str) -> Any:
        log = (tmp_path / log_name).open("w")
        command = [
            sys.executable,
            "-m",
            "swarm.coordinator",
            "coordinator",
            "--data-dir",
            str(data_dir),
        ]
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        deadline = time.monotonic() + 60
        while not (data_dir / "coordinator.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, log_name
            time.sleep(0.1)
        return process

    with ExitStack() as stack:
        coordinator = start("coordinator-1.log")
        target = f"127.0.0.1:{grpc_port}"
        for i in range(2):
            log = stack.enter_context((tmp_path / f"client-{i}.log").open("w"))
            stack.callback(stop_process, start_client(target, f"c{i}", tmp_path / f"c{i}", log))
        http = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60.0)
        )
        swarm = Swarm(http=http, target=target, data_dir=data_dir, clients=[], logs=tmp_path)
        job = swarm.create_job()
        while not any(r["status"] == "closed" for r in swarm.rounds(job["id"])):
            time.sleep(0.2)
        assert stop_process(coordinator, signal.SIGTERM) == 0
        # The clients now retry with backoff against a closed port (as soon as each next calls:
        # one may be training).
        deadline = time.monotonic() + 60
        # Each says so as it retries: a lease ("unreachable ...; retrying in") or a submission.
        while "retrying" not in swarm.log_of(0) + swarm.log_of(1):
            assert time.monotonic() < deadline, "no client noticed the coordinator was gone"
            time.sleep(0.2)
        coordinator = start("coordinator-2.log")
        stack.callback(stop_process, coordinator, signal.SIGTERM)
        job = swarm.wait_for_job(job["id"])
        assert job["status"] == "succeeded", job
        assert [r["status"] for r in swarm.rounds(job["id"])] == ["closed"] * 4


def test_a_result_killed_mid_upload_is_sent_again_on_restart_and_credited_once(
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        swarm = stack.enter_context(running_swarm(tmp_path, num_clients=0))
        data_dir = tmp_path / "volunteer"
        # A slow home link: the ~850 kB update would take two minutes to upload.
        first_log = stack.enter_context((tmp_path / "client-0.log").open("w"))
        slow = {"SWARM_MAX_UPLOAD_MBPS": "0.05"}
        client = start_client(swarm.target, "volunteer", data_dir, first_log, extra_env=slow)
        job = swarm.create_job(num_rounds=1, min_clients=1)
        _wait_for_log(swarm, 0, "submitting")
        client.kill()  # SIGKILL in the middle of the upload
        client.wait(timeout=30)
        saved = re.search(r"task (\S+): result saved", swarm.log_of(0))
        assert saved is not None
        task_id = saved.group(1)
        assert len(list((data_dir / "outbox").glob("*.json"))) == 1

        second_log = stack.enter_context((tmp_path / "client-1.log").open("w"))
        client = start_client(swarm.target, "volunteer", data_dir, second_log)
        stack.callback(stop_process, client)
        job = swarm.wait_for_job(job["id"])
        assert job["status"] == "succeeded", job
        assert f"re-submitting task {task_id}" in swarm.log_of(1)
        assert not list((data_dir / "outbox").glob("*.json"))
    with sqlite3.connect(tmp_path / "coordinator" / "swarm.db") as db:
        leases = db.execute(
            "SELECT outcome FROM leases WHERE task_id = ? ORDER BY id", (task_id,)
        ).fetchall()
        kinds = db.execute(
            "SELECT kind FROM ledger_transactions WHERE task_id = ?", (task_id,)
        ).fetchall()
    # One lease, submitted once (the restarted client is the same worker, its lease still
    # live), and each credit posting for the task made once.
    assert leases == [("submitted",)], leases
    assert kinds and len(kinds) == len(set(kinds)), kinds
