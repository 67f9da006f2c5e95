"""The coordinator's HTTP API: OpenAI-shaped fine-tuning jobs over a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from swarm.coordinator.http import create_app
from tests.conftest import local_client, wire_services

HYPERPARAMETERS: dict[str, Any] = {
    "num_rounds": 2,
    "inner_steps": 2,
    "warmup_steps": 1,
    "batch_size": 2,
    "seq_len": 16,
    "min_clients": 2,
    "num_shards": 4,
}
JOB_FIELDS = {
    "id",
    "object",
    "model",
    "created_at",
    "finished_at",
    "fine_tuned_model",
    "organization_id",
    "status",
    "training_file",
    "validation_file",
    "hyperparameters",
    "result_files",
    "trained_tokens",
    "error",
    "seed",
    "metadata",
    "estimated_finish",
}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    services = wire_services(tmp_path)
    try:
        with local_client(create_app(services)) as test_client:
            yield test_client
    finally:
        services.db.dispose()


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    """Create a job over HTTP; it is `validating_files` until the coordinator prepares it."""
    body = {"model": "micro-llama", "hyperparameters": HYPERPARAMETERS, **body}
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def settle(client: TestClient) -> None:
    """What the coordinator's preparer and housekeeper threads do: prepare, then start jobs."""
    services = client.app.state.services  # type: ignore[attr-defined]
    while services.jobs.prepare_next() is not None:
        pass
    services.scheduler.admit_jobs()


def assert_openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    return error


def test_create_job_returns_an_openai_fine_tuning_job(client: TestClient) -> None:
    job = create(client, seed=7, metadata={"owner": "alice"})
    assert set(job) >= JOB_FIELDS
    assert job["object"] == "fine_tuning.job"
    assert job["id"].startswith("ftjob-")
    assert job["model"] == "micro-llama"
    assert job["status"] == "validating_files"
    assert isinstance(job["created_at"], int) and job["created_at"] > 1_600_000_000
    assert job["finished_at"] is None
    assert job["training_file"] == "builtin:tiny_corpus"
    assert job["hyperparameters"]["batch_size"] == 2
    assert {"n_epochs", "batch_size", "learning_rate_multiplier"} <= set(job["hyperparameters"])
    assert job["trained_tokens"] == 0
    assert job["error"] is None
    assert job["seed"] == 7
    assert job["metadata"] == {"owner": "alice"}
    assert job["result_files"] == []
    assert job["swarm"]["num_rounds"] == 2
    assert job["swarm"]["rounds_completed"] == 0
    assert job["swarm"]["spec"]["inner_steps"] == 2
    assert job["swarm"]["owner"] == "user:default"
    settle(client)
    started = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert started["status"] == "running"
    assert started["swarm"]["num_trainable_params"] > 0
    assert started["swarm"]["estimated_credits"] > 0
    assert started["swarm"]["credits_consumed"] == 0


def test_created_job_can_be_fetched_by_id(client: TestClient) -> None:
    job = create(client)
    settle(client)
    response = client.get(f"/v1/fine_tuning/jobs/{job['id']}")
    assert response.status_code == 200
    fetched = response.json()
    assert fetched["id"] == job["id"]
    assert fetched["object"] == "fine_tuning.job"
    assert fetched["status"] == "running"


def test_list_jobs_is_an_openai_list_with_pagination(client: TestClient) -> None:
    empty = client.get("/v1/fine_tuning/jobs").json()
    assert empty == {"object": "list", "data": [], "has_more": False}

    ids = [create(client, seed=i)["id"] for i in range(3)]
    everything = client.get("/v1/fine_tuning/jobs").json()
    assert everything["object"] == "list"
    assert [j["id"] for j in everything["data"]] == ids[::-1]
    assert all(j["object"] == "fine_tuning.job" for j in everything["data"])
    assert everything["has_more"] is False

    first = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == ids[:0:-1]
    assert first["has_more"] is True
    rest = client.get(
        "/v1/fine_tuning/jobs", params={"limit": 2, "after": first["data"][-1]["id"]}
    ).json()
    assert [j["id"] for j in rest["data"]] == ids[:1]
    assert rest["has_more"] is False


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_list_jobs_rejects_a_limit_out_of_range(client: TestClient, limit: int) -> None:
    error = assert_openai_error(client.get("/v1/fine_tuning/jobs", params={"limit": limit}), 400)
    assert "limit" in error["message"]


def test_list_jobs_after_unknown_id_is_404(client: TestClient) -> None:
    response = client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"})
    assert_openai_error(response, 404)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/fine_tuning/jobs/ftjob-nope",
        "/v1/fine_tuning/jobs/ftjob-nope/events",
        "/v1/swarm/jobs/ftjob-nope/rounds",
    ],
)
def test_unknown_job_is_404_with_openai_error(client: TestClient, path: str) -> None:
    error = assert_openai_error(client.get(path), 404)
    assert "ftjob-nope" in error["message"]
    assert error["code"] == "not_found"


@pytest.mark.parametrize(
    ("hyperparameters", "field"),
    [
        ({"no_such_knob": 1}, "no_such_knob"),
        ({"num_rounds": 0}, "num_rounds"),
        ({"num_rounds": 10**9}, "num_rounds"),
        ({"outer_lr": -1.0}, "outer_lr"),
        ({"batch_size": "big"}, "batch_size"),
        ({"seq_len": 4}, "seq_len"),
        ({"warmup_steps": 5}, "warmup_steps"),
    ],
)
def test_bad_hyperparameter_is_400_naming_the_field(
    client: TestClient, hyperparameters: dict[str, Any], field: str
) -> None:
    body = {"model": "micro-llama", "hyperparameters": {**HYPERPARAMETERS, **hyperparameters}}
    error = assert_openai_error(client.post("/v1/fine_tuning/jobs", json=body), 400)
    assert field in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"training_file": "file-abc123"}, "file-abc123"),
    ],
)
def test_unknown_model_or_dataset_is_400(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    request = {"model": "micro-llama", "hyperparameters": HYPERPARAMETERS, **body}
    error = assert_openai_error(client.post("/v1/fine_tuning/jobs", json=request), 400)
    assert field in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "micro-llama", "suffix": "no spaces allowed"}, "suffix"),
        ({"model": "micro-llama", "suffix": "x" * 65}, "suffix"),
        ({"model": "micro-llama", "hyperparameters": [1, 2]}, "hyperparameters"),
        ({"model": "micro-llama", "seed": "abc"}, "seed"),
    ],
)
def test_malformed_body_is_400_with_param(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(client.post("/v1/fine_tuning/jobs", json=body), 400)
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize("field", ["inner_steps", "seq_len", "num_rounds"])
def test_fractional_value_for_an_integer_hyperparameter_is_400(
    client: TestClient, field: str
) -> None:
    body = {
        "model": "micro-llama",
        "hyperparameters": {**HYPERPARAMETERS, field: HYPERPARAMETERS[field] + 0.5},
    }
    error = assert_openai_error(client.post("/v1/fine_tuning/jobs", json=body), 400)
    assert field in error["message"]


def test_events_and_rounds_of_a_job(client: TestClient) -> None:
    job = create(client)
    settle(client)
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()
    assert events["object"] == "list"
    assert events["data"]
    assert all(e["object"] == "fine_tuning.job.event" for e in events["data"])
    assert any("validated" in e["message"] for e in events["data"])

    rounds = client.get(f"/v1/swarm/jobs/{job['id']}/rounds").json()
    assert [(r["round"], r["status"], r["num_tasks"]) for r in rounds["data"]] == [(0, "open", 3)]


def test_healthz_reports_ok_and_job_counts(client: TestClient) -> None:
    assert client.get("/healthz").json()["jobs"] == {}
    create(client)
    assert client.get("/healthz").json()["jobs"] == {"validating_files": 1}
    settle(client)
    response = client.get("/healthz")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    assert health["database"] == "ok"
    assert health["workers_online"] == 0
    assert health["jobs"] == {"running": 1}
    assert health["database_latency_ms"] >= 0


def test_openapi_document_lists_the_job_routes(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"get", "post"} <= set(paths["/v1/fine_tuning/jobs"])
    assert "get" in paths["/v1/fine_tuning/jobs/{job_id}"]
    assert "get" in paths["/v1/fine_tuning/jobs/{job_id}/events"]
    assert "/healthz" in paths
