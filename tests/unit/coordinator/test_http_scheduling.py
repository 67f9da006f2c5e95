"""The scheduler's HTTP surface: job control, checkpoints, tasks, the queue and credits."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from swarm.coordinator.server import Services
from swarm.coordinator.workers import WorkerRegistry
from tests.conftest import MICRO_SPEC, signed_registration
from tests.unit.coordinator.test_scheduling import Swarm

HYPERPARAMETERS = {
    k: v
    for k, v in replace(MICRO_SPEC, seq_len=32, batch_size=4, inner_steps=4).to_dict().items()
    if k in ("num_rounds", "inner_steps", "batch_size", "seq_len", "min_clients", "num_shards")
}


pytestmark = pytest.mark.settings(lease_ttl_s=10.0, solo_wait_s=5.0)


def create(client: TestClient, services: Services, **body: Any) -> dict[str, Any]:
    """Create a job over HTTP and let the coordinator prepare it and (if it can) start it."""
    response = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "micro-llama", "hyperparameters": HYPERPARAMETERS, **body},
    )
    assert response.status_code == 200, response.text
    services.jobs.prepare_next()
    services.scheduler.admit_jobs()
    return client.get(f"/v1/fine_tuning/jobs/{response.json()['id']}").json()  # type: ignore[no-any-return]


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_a_job_is_paused_resumed_and_cancelled_over_http(
    client: TestClient, services: Services
) -> None:
    job = create(client, services)
    assert job["status"] == "running"
    paused = client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()
    assert paused["object"] == "fine_tuning.job" and paused["status"] == "paused"
    error = error_of(client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause"), 409)
    assert (
        error["code"] == "invalid_state" and "paused job cannot become paused" in error["message"]
    )
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "running"
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    error_of(client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume"), 409)
    error_of(client.post("/v1/fine_tuning/jobs/ftjob-nope/cancel"), 404)
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert [e["message"] for e in events[:3]] == [
        "cancelled",
        "resumed (running)",
        "paused (0 running tasks revoked)",
    ]


def test_a_queued_job_shows_its_position_and_the_reason_it_waits(
    client: TestClient, services: Services
) -> None:
    WorkerRegistry(services.db).register(signed_registration(name="w"), "ipv4:127.0.0.1:1")
    create(client, services)
    second = create(client, services, seed=1)
    assert second["status"] == "queued"
    assert second["swarm"]["queue_position"] == 1
    assert second["swarm"]["queue_reason"].startswith("waiting for workers")
    assert second["swarm"]["estimated_credits"] > 0
    queue = client.get("/v1/swarm/queue").json()
    assert queue["data"] == [
        {"job_id": second["id"], "position": 1, "reason": second["swarm"]["queue_reason"]}
    ]


def test_checkpoints_and_tasks_are_listed_in_openai_and_swarm_shapes(
    client: TestClient, services: Services
) -> None:
    swarm = Swarm(services)
    workers = [swarm.register(f"w{i}") for i in range(2)]
    job = create(client, services)
    swarm.finish_job(job["id"], workers)
    listing = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert listing["object"] == "list" and listing["has_more"] is False
    assert [c["step_number"] for c in listing["data"]] == [2, 1]
    first = listing["data"][0]
    assert set(first) >= {
        "object",
        "id",
        "created_at",
        "fine_tuned_model_checkpoint",
        "fine_tuning_job_id",
        "metrics",
        "step_number",
    }
    assert first["object"] == "fine_tuning.job.checkpoint"
    assert (listing["first_id"], listing["last_id"]) == (first["id"], listing["data"][1]["id"])
    page = client.get(
        f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", params={"limit": 1, "after": first["id"]}
    ).json()
    assert [c["step_number"] for c in page["data"]] == [1] and page["has_more"] is False
    error_of(client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints?limit=0"), 400)

    tasks = client.get(f"/v1/swarm/jobs/{job['id']}/tasks").json()["data"]
    train = [t for t in tasks if t["kind"] == "train"]
    assert train and all(t["status"] == "accepted" for t in train)
    assert all(t["spans"] and t["spans"][0]["state"] == "consumed" for t in train)
    assert all(t["credits"] > 0 and t["applied_round"] == t["round"] for t in train)


def test_credits_are_shown_issued_donated_and_add_up(
    client: TestClient, services: Services
) -> None:
    issued = client.post("/v1/swarm/credits/issue", json={"account": "user:ann", "amount": 2.5})
    assert issued.status_code == 200, issued.text
    assert issued.json()["balance"] == 2.5
    donated = client.post("/v1/swarm/credits/donate", json={"account": "user:ann", "amount": 1})
    assert donated.json()["balance"] == 1.5
    shown = client.get("/v1/swarm/credits", params={"account": "user:ann"}).json()
    assert shown["object"] == "swarm.credits"
    assert [h["kind"] for h in shown["history"]] == ["donate", "issue"]
    assert [h["amount"] for h in shown["history"]] == [-1.0, 2.5]
    board = client.get("/v1/swarm/credits/leaderboard").json()
    assert board["data"][0] == {"account": "user:ann", "kind": "user", "balance": 1.5}
    assert board["research_pool"] == 1.0
    ledger = client.get("/v1/swarm/ledger").json()
    assert ledger["balanced"] is True and ledger["minted"] == 2.5 == ledger["balances"]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("issue", {"account": "mint", "amount": 1}, "must be user:NAME"),
        ("issue", {"account": "user:ann", "amount": -1}, "amount"),
        ("issue", {"account": "user:ann", "amount": 1e-9}, "0.000001"),
        ("issue", {"account": "user:ann", "amount": 1e13}, "amount"),
        ("donate", {"account": "user:nobody", "amount": 1}, "fewer than the 1.000000 to donate"),
        ("donate", {"account": "pool:research", "amount": 1}, "cannot donate to itself"),
    ],
)
def test_bad_credit_requests_are_400s_that_move_nothing(
    client: TestClient, path: str, body: dict[str, Any], message: str
) -> None:
    error = error_of(client.post(f"/v1/swarm/credits/{path}", json=body), 400)
    assert message in error["message"]
    assert client.get("/v1/swarm/ledger").json()["minted"] == 0


def test_a_job_names_who_pays_and_a_bad_owner_is_refused(
    client: TestClient, services: Services
) -> None:
    job = create(client, services, owner="user:carol")
    assert job["swarm"]["owner"] == "user:carol"
    response = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "micro-llama", "hyperparameters": HYPERPARAMETERS, "owner": "root"},
    )
    assert "must be user:NAME" in error_of(response, 400)["message"]


def test_openai_n_epochs_trains_for_that_many_epochs(
    client: TestClient, services: Services
) -> None:
    hyper = {k: v for k, v in HYPERPARAMETERS.items() if k != "num_rounds"}
    response = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "micro-llama",
            "method": {"type": "lm", "lm": {"hyperparameters": {"n_epochs": 3}}},
            "hyperparameters": hyper,
        },
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["swarm"]["spec"]["num_epochs"] == 3
    assert job["hyperparameters"]["n_epochs"] == 3
