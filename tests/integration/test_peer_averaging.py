"""Peer averaging (`data_plane=hivemind`): three `swarmclient join` processes on loopback
average their updates over hivemind, and one update per round reaches the coordinator."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from swarm.coordinator.blobs import BlobStore
from tests.integration.test_training import Swarm, running_swarm

pytest.importorskip("hivemind")

pytestmark = pytest.mark.integration

JOB = {
    "data_plane": "hivemind",
    "num_rounds": 3,
    "inner_steps": 6,
    "batch_size": 8,
    "seq_len": 64,
    "num_shards": 6,
    "min_clients": 3,
    "max_clients": 3,
    "peer_timeout_s": 30.0,
}
LOOPBACK = {"SWARM_PEER_LISTEN": "/ip4/127.0.0.1/tcp/0"}


def run_job(swarm: Swarm, **overrides: Any) -> dict[str, Any]:
    # Every client registered first, so each takes one task of round 0.
    deadline = time.monotonic() + 120.0
    while len(swarm.http.get("/v1/swarm/workers").json()["data"]) < len(swarm.clients):
        assert time.monotonic() < deadline, f"the clients did not register; logs in {swarm.logs}"
        time.sleep(0.3)
    job = swarm.wait_for_job(swarm.create_job(**{**JOB, **overrides})["id"], timeout_s=300.0)
    assert job["status"] == "succeeded", job
    return job


def train_results(tmp_path: Path) -> dict[int, list[dict[str, Any]]]:
    """Each training round's accepted train tasks: id, payload digest, metrics (by round)."""
    import json

    with sqlite3.connect(tmp_path / "coordinator" / "swarm.db") as db:
        rows = db.execute(
            "SELECT round_index, id, result_sha256, metrics FROM tasks "
            "WHERE kind = 'train' AND status = 'accepted' ORDER BY round_index, id"
        ).fetchall()
    rounds: dict[int, list[dict[str, Any]]] = {}
    for index, task_id, sha, metrics in rows:
        rounds.setdefault(index, []).append(
            {"id": task_id, "sha": sha, "metrics": json.loads(metrics)}
        )
    return rounds


def test_three_workers_average_among_themselves_and_one_submits_per_round(
    tmp_path: Path,
) -> None:
    with running_swarm(tmp_path, 3, client_env=[LOOPBACK] * 3) as swarm:
        job = run_job(swarm)
        rounds = swarm.rounds(job["id"])
        workers = swarm.http.get("/v1/swarm/workers").json()["data"]
    assert job["swarm"]["eval_loss"] < job["swarm"]["initial_eval_loss"] * 0.9
    results = train_results(tmp_path)
    assert sorted(results) == [0, 1, 2]
    for index, tasks in results.items():
        # One payload per round: the leader's, which lists the whole group...
        (leader,) = [t for t in tasks if t["sha"]]
        assert len(tasks) == 3
        assert sorted(leader["metrics"]["group"]) == sorted(t["id"] for t in tasks), index
        assert leader["id"] == min(t["id"] for t in tasks)
        # ...and the two others defer to it, each from its own worker.
        members = [t for t in tasks if not t["sha"]]
        assert all(t["metrics"]["covered_by"] == leader["id"] for t in members), members
        assert len({t["metrics"]["worker_id"] for t in tasks}) == 3
    training = [r for r in rounds if r["num_train_tasks"]]
    assert all(r["num_clients"] == 3 for r in training), training
    # The coordinator received one update per round where it would receive three.
    blobs = BlobStore(tmp_path / "coordinator" / "blobs")
    for r in training:
        (leader,) = [t for t in results[r["round"]] if t["sha"]]
        assert r["bytes_up"] == blobs.path(leader["sha"]).stat().st_size, r
    # Every worker was credited for its own work (3 train tasks each, plus evaluations).
    assert all(w["tasks_accepted"] >= 3 for w in workers), workers
    for i in range(3):
        log = (tmp_path / f"client-{i}.log").read_text()
        assert log.count("averaged with 2 peer(s)") == 3, log[-3000:]
        # hivemind ignores SIGINT in the process that starts it; the client's Ctrl+C still works.
        assert "worker stopped" in log, log[-3000:]


def test_a_worker_without_peer_averaging_submits_directly_and_the_others_still_group(
    tmp_path: Path,
) -> None:
    alone = {**LOOPBACK, "SWARM_PEER_AVERAGING": "false"}
    with running_swarm(tmp_path, 3, client_env=[LOOPBACK, LOOPBACK, alone]) as swarm:
        # The pair waits half of peer_timeout_s for the third member, which never comes.
        job = run_job(swarm, peer_timeout_s=8.0)
    assert job["swarm"]["eval_loss"] < job["swarm"]["initial_eval_loss"] * 0.9
    for index, tasks in train_results(tmp_path).items():
        payloads = [t for t in tasks if t["sha"]]
        # The group of two sends one payload, the third worker its own.
        assert len(tasks) == 3 and len(payloads) == 2, (index, tasks)
        grouped = [t for t in payloads if "group" in t["metrics"]]
        assert len(grouped) == 1 and len(grouped[0]["metrics"]["group"]) == 2, tasks
    log = (tmp_path / "client-2.log").read_text()
    assert "--no-peer-averaging is set" in log
