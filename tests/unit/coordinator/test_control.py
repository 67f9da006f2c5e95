"""Bans and drains: what a banned worker and a draining swarm get, through the real servicer
and the HTTP routes, on a real SQLite database."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from swarm.coordinator.server import Services
from swarm.coordinator.storage import Task
from swarm.coordinator.workers import WorkerRegistry
from swarm.protocol import messages as m
from swarm.protocol.errors import IntegrityError, PermissionDeniedError
from tests.conftest import MICRO_SPEC, signed_registration, start_job
from tests.unit.coordinator.test_scheduling import Swarm


def join(services: Services, name: str) -> m.Session:
    worker, token = WorkerRegistry(services.db).register(
        signed_registration(name=name), "ipv4:127.0.0.1:1"
    )
    return m.Session(worker_id=worker.id, token=token)


def lease(services: Services, session: m.Session) -> m.LeaseTaskResponse:
    return services.servicer.lease_task(m.LeaseTaskRequest(session=session))


def test_a_banned_worker_loses_its_tasks_and_gets_no_more(
    client: TestClient, services: Services
) -> None:
    sessions = [join(services, f"w{i}") for i in range(2)]
    job = start_job(services, MICRO_SPEC)
    held = lease(services, sessions[0]).task
    assert held is not None and held.job_id == job.id
    banned = client.post(
        f"/v1/swarm/workers/{sessions[0].worker_id}/ban", json={"reason": "sign-flipped updates"}
    ).json()
    assert banned == {
        "id": sessions[0].worker_id,
        "banned": True,
        "ban_reason": "sign-flipped updates",
    }
    with services.db.transaction() as session:
        task = session.get_one(Task, held.task_id)
        assert (task.status, task.worker_id) == ("pending", None)  # handed out again
    refused = lease(services, sessions[0])
    assert refused.task is None and "banned by the operator: sign-flipped" in refused.reason
    assert lease(services, sessions[1]).task is not None  # the others carry on
    status = client.get("/v1/swarm/status").json()
    assert status["workers_online"] == 1  # a banned worker is not online anywhere
    workers = {w["id"]: w for w in client.get("/v1/swarm/workers").json()["data"]}
    assert workers[sessions[0].worker_id]["banned"] is True

    header = Swarm(services).header(sessions[0].worker_id, held)
    header = m.ResultHeader(**{**header.__dict__, "session": sessions[0]})
    with pytest.raises(PermissionDeniedError, match="banned"):
        services.servicer._submit_result(header, iter([]))

    client.post(f"/v1/swarm/workers/{sessions[0].worker_id}/unban")
    assert client.get("/v1/swarm/status").json()["workers_online"] == 2
    assert lease(services, sessions[0]).task is not None


def test_a_draining_swarm_hands_out_nothing_until_undrained(
    client: TestClient, services: Services
) -> None:
    sessions = [join(services, f"w{i}") for i in range(2)]
    start_job(services, MICRO_SPEC)
    running = lease(services, sessions[0]).task
    assert running is not None
    drained = client.post("/v1/swarm/drain", json={"reason": "upgrading"}).json()
    assert drained["draining"]["reason"] == "upgrading"
    again = client.post("/v1/swarm/drain", json={"reason": "twice"}).json()
    assert again["draining"]["since"] == drained["draining"]["since"]  # still the first drain
    idle = lease(services, sessions[1])
    assert idle.task is None and idle.reason == "the swarm is draining: upgrading"
    assert client.get("/v1/swarm/status").json()["draining"]["reason"] == "upgrading"
    with services.db.transaction() as session:  # the running task is left to finish
        assert session.get_one(Task, running.task_id).status == "leased"
    client.post("/v1/swarm/undrain")
    assert client.get("/v1/swarm/status").json()["draining"] is None
    assert lease(services, sessions[1]).task is not None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/swarm/workers/WORKER/ban", {"reason": "x"}),
        ("/v1/swarm/workers/WORKER/unban", None),
        ("/v1/swarm/drain", {}),
        ("/v1/swarm/undrain", None),
    ],
)
def test_only_operators_ban_and_drain(
    client: TestClient, services: Services, path: str, body: dict[str, Any] | None
) -> None:
    worker_id = join(services, "w").worker_id
    admin = client.post("/v1/swarm/keys", json={"user": "root", "role": "operator"}).json()
    researcher = client.post(
        "/v1/swarm/keys",
        json={"user": "alice"},
        headers={"Authorization": f"Bearer {admin['key']}"},
    ).json()
    path = path.replace("WORKER", worker_id)
    denied = client.post(path, json=body, headers={"Authorization": f"Bearer {researcher['key']}"})
    assert denied.status_code == 403, denied.text
    allowed = client.post(path, json=body, headers={"Authorization": f"Bearer {admin['key']}"})
    assert allowed.status_code == 200, allowed.text


def test_banning_an_unknown_worker_is_a_404(client: TestClient) -> None:
    response = client.post("/v1/swarm/workers/wk-nope/ban", json={})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no worker 'wk-nope'"


def test_rejected_results_are_listed_newest_first(client: TestClient, services: Services) -> None:
    sessions = [join(services, f"w{i}") for i in range(2)]
    start_job(services, MICRO_SPEC)
    task = lease(services, sessions[0]).task
    assert task is not None
    header = m.ResultHeader(
        **{**Swarm(services).header(sessions[0].worker_id, task).__dict__, "session": sessions[0]}
    )
    with pytest.raises(IntegrityError):  # the header is unsigned
        services.servicer._submit_result(header, iter([b"garbage"]))
    rejected = client.get("/v1/swarm/rejections").json()["data"]
    assert [(r["worker_id"], r["task_id"]) for r in rejected] == [
        (sessions[0].worker_id, task.task_id)
    ]
    assert "signature" in rejected[0]["reason"] and rejected[0]["worker_name"] == "w0"
    assert client.get("/v1/swarm/status").json()["results"]["rejected"] == 1


def test_trust_counts_accepted_results_in_a_row_and_a_rejection_resets_it(
    client: TestClient, services: Services
) -> None:
    swarm = Swarm(services)
    sessions = [join(services, f"w{i}") for i in range(2)]
    start_job(services, MICRO_SPEC)

    def trust() -> list[int]:
        workers = {w["id"]: w for w in client.get("/v1/swarm/workers").json()["data"]}
        return [int(workers[s.worker_id]["trust"]) for s in sessions]

    def leased(session: m.Session) -> m.Task:
        task = lease(services, session).task
        assert task is not None
        return task

    for session in sessions:  # round 0: both results accepted
        assert swarm.submit(session.worker_id, leased(session)).accepted
    assert trust() == [1, 1]
    assert swarm.submit(sessions[0].worker_id, leased(sessions[0])).accepted  # its evaluation
    swarm.tick()  # round 1 opens
    task = leased(sessions[1])
    header = m.ResultHeader(
        **{**swarm.header(sessions[1].worker_id, task).__dict__, "session": sessions[1]}
    )
    with pytest.raises(IntegrityError):  # unsigned: rejected
        services.servicer._submit_result(header, iter([b"garbage"]))
    assert trust() == [2, 0]
