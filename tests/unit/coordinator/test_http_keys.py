"""API keys over HTTP: setup mode, bearer keys stored hashed, roles, and each researcher seeing
only their own files, jobs, models and credits (a real SQLite database, the real app)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from swarm.coordinator.http import create_app
from swarm.coordinator.keys import AttemptThrottle
from swarm.coordinator.server import Services
from swarm.coordinator.storage import ApiKey
from swarm.models import load_builtin_bytes
from swarm.protocol.errors import RateLimitedError
from swarm.scheduler.jobs import default_learning_rate
from tests.unit.coordinator.test_http import HYPERPARAMETERS, assert_openai_error

CHAT = load_builtin_bytes("builtin:smol_instruct")


def make_key(client: TestClient, user: str, role: str = "researcher", **headers: str) -> str:
    response = client.post("/v1/swarm/keys", json={"user": user, "role": role}, headers=headers)
    assert response.status_code == 200, response.text
    key = response.json()
    assert key["key"].startswith("sk-swarm-") and key["user"] == f"user:{user}"
    return str(key["key"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys(client: TestClient) -> dict[str, dict[str, str]]:
    """An operator's key (made in setup mode) and two researchers' keys, as headers."""
    admin = make_key(client, "admin", "operator")
    return {
        "admin": bearer(admin),
        "alice": bearer(make_key(client, "alice", **bearer(admin))),
        "bob": bearer(make_key(client, "bob", **bearer(admin))),
    }


def upload(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post(
        "/v1/files",
        files={"file": ("chat.jsonl", CHAT, "application/jsonl")},
        data={"purpose": "fine-tune"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def create_job(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    body = {"model": "micro-llama", "hyperparameters": HYPERPARAMETERS, **body}
    return client.post("/v1/fine_tuning/jobs", json=body, headers=headers)


# -- setup mode and keys ------------------------------------------------------------------


def test_setup_mode_answers_this_machine_as_the_operator(client: TestClient) -> None:
    assert client.get("/healthz").json()["auth"] == "setup"
    me = client.get("/v1/swarm/me").json()
    assert me == {"object": "swarm.caller", "user": "user:default", "role": "operator"} | {
        "key_id": None
    }


@pytest.mark.parametrize(
    "headers",
    [{"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"}],
)
def test_setup_mode_refuses_requests_a_local_proxy_relays(
    client: TestClient, headers: dict[str, str]
) -> None:
    error = assert_openai_error(client.get("/v1/fine_tuning/jobs", headers=headers), 401)
    assert error["code"] == "invalid_api_key"
    assert "swarm keys create" in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "rebind.attacker.example:8000"},  # DNS rebinding: a page on a name for 127.0.0.1
        {"Origin": "https://evil.example"},  # any web page's request
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_setup_mode_refuses_what_a_web_page_sends(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = client.post(
        "/v1/swarm/keys", json={"user": "mallory", "role": "operator"}, headers=headers
    )
    assert_openai_error(response, 401)
    assert client.get("/healthz").json()["auth"] == "setup"


def test_the_first_key_must_be_an_operators(client: TestClient) -> None:
    response = client.post("/v1/swarm/keys", json={"user": "alice"})
    assert assert_openai_error(response, 400)["param"] == "role"
    assert client.get("/healthz").json()["auth"] == "setup"


def test_setup_mode_refuses_other_machines(services: Services) -> None:
    with TestClient(create_app(services), client=("198.51.100.7", 4000)) as remote:
        response = remote.get("/v1/files")
        assert_openai_error(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert remote.get("/healthz").status_code == 200  # liveness needs no key


def test_keys_are_stored_hashed_and_only_shown_once(client: TestClient, services: Services) -> None:
    secret = make_key(client, "carol", "operator")
    with services.db.transaction() as session:
        row = session.scalars(select(ApiKey)).one()
    assert row.sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {row.id, row.hint, row.name, row.account}
    assert row.hint.startswith(secret[:13]) and row.hint.endswith(secret[-4:])
    listed = client.get("/v1/swarm/keys", headers=bearer(secret)).json()["data"]
    assert [k["id"] for k in listed] == [row.id] and "key" not in listed[0]


def test_the_first_key_ends_setup_mode(client: TestClient) -> None:
    key = make_key(client, "admin", "operator")
    assert client.get("/healthz").json()["auth"] == "keys"
    assert_openai_error(client.get("/v1/fine_tuning/jobs"), 401)
    assert client.get("/v1/fine_tuning/jobs", headers=bearer(key)).status_code == 200


@pytest.mark.parametrize(
    "authorization", ["Bearer sk-swarm-not-a-real-key", "Bearer ", "Basic YWxhZGRpbjpvcGVu"]
)
def test_a_wrong_key_is_a_401(
    client: TestClient, keys: dict[str, dict[str, str]], authorization: str
) -> None:
    response = client.get("/v1/fine_tuning/jobs", headers={"Authorization": authorization})
    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"


def test_a_revoked_key_stops_working(client: TestClient, keys: dict[str, dict[str, str]]) -> None:
    mine = client.get("/v1/swarm/keys", headers=keys["alice"]).json()["data"]
    assert [k["user"] for k in mine] == ["user:alice"]
    revoked = client.delete(f"/v1/swarm/keys/{mine[0]['id']}", headers=keys["alice"]).json()
    assert revoked["revoked"] is True
    error = assert_openai_error(client.get("/v1/files", headers=keys["alice"]), 401)
    assert "revoked" in error["message"]


def test_a_researcher_cannot_revoke_anothers_key(
    client: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    bobs = client.get("/v1/swarm/keys", headers=keys["bob"]).json()["data"][0]["id"]
    assert_openai_error(client.delete(f"/v1/swarm/keys/{bobs}", headers=keys["alice"]), 404)
    assert client.get("/v1/files", headers=keys["bob"]).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/swarm/keys", {"user": "mallory", "role": "operator"}),
        ("post", "/v1/swarm/credits/issue", {"account": "user:alice", "amount": 5}),
        ("get", "/v1/swarm/ledger", None),
    ],
)
def test_operator_routes_refuse_researchers(
    client: TestClient,
    keys: dict[str, dict[str, str]],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    response = client.request(method, path, json=body, headers=keys["alice"])
    error = assert_openai_error(response, 403)
    assert error["code"] == "insufficient_permissions"
    assert client.request(method, path, json=body, headers=keys["admin"]).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user": "alice", "role": "admin"}, "role"),
        ({"user": "pool:research"}, "user:NAME"),
        ({"user": "bad name!"}, "must be user:NAME"),
    ],
)
def test_bad_key_requests_are_400s(
    client: TestClient, keys: dict[str, dict[str, str]], body: dict[str, Any], message: str
) -> None:
    response = client.post("/v1/swarm/keys", json=body, headers=keys["admin"])
    assert message in assert_openai_error(response, 400)["message"]


# -- who sees what --------------------------------------------------------------------------


def test_a_researcher_sees_only_their_own_files(
    client: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    file_id = upload(client, keys["alice"])["id"]
    assert [f["id"] for f in client.get("/v1/files", headers=keys["alice"]).json()["data"]] == [
        file_id
    ]
    assert client.get("/v1/files", headers=keys["bob"]).json()["data"] == []
    for method, path in (
        ("get", f"/v1/files/{file_id}"),
        ("get", f"/v1/files/{file_id}/content"),
        ("delete", f"/v1/files/{file_id}"),
    ):
        error = assert_openai_error(client.request(method, path, headers=keys["bob"]), 404)
        assert error["message"] == f"no file {file_id!r}"
    assert client.get(f"/v1/files/{file_id}", headers=keys["alice"]).status_code == 200
    assert client.get(f"/v1/files/{file_id}", headers=keys["admin"]).status_code == 200


def test_a_job_cannot_train_on_anothers_file(
    client: TestClient, keys: dict[str, dict[str, str]], services: Services
) -> None:
    file_id = upload(client, keys["alice"])["id"]
    response = create_job(client, keys["bob"], method={"type": "supervised"}, training_file=file_id)
    error = assert_openai_error(response, 400)
    assert error["param"] == "training_file" and file_id in error["message"]
    assert services.jobs.list_jobs().jobs == []  # nothing queued


def test_a_researcher_sees_only_their_own_jobs(
    client: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    response = create_job(client, keys["alice"])
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["organization_id"] == "user:alice" and job["swarm"]["owner"] == "user:alice"
    job_id = job["id"]
    listed = client.get("/v1/fine_tuning/jobs", headers=keys["bob"]).json()
    assert listed["data"] == []
    for method, path in (
        ("get", f"/v1/fine_tuning/jobs/{job_id}"),
        ("get", f"/v1/fine_tuning/jobs/{job_id}/events"),
        ("get", f"/v1/fine_tuning/jobs/{job_id}/checkpoints"),
        ("post", f"/v1/fine_tuning/jobs/{job_id}/cancel"),
        ("post", f"/v1/fine_tuning/jobs/{job_id}/pause"),
        ("get", f"/v1/swarm/jobs/{job_id}/rounds"),
        ("get", f"/v1/swarm/jobs/{job_id}/tasks"),
        ("get", f"/v1/swarm/jobs/{job_id}/artifacts"),
    ):
        error = assert_openai_error(client.request(method, path, headers=keys["bob"]), 404)
        assert error["message"] == f"no job {job_id!r}", path
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=keys["alice"]).status_code == 200
    everyone = client.get("/v1/fine_tuning/jobs", headers=keys["admin"]).json()["data"]
    assert [j["id"] for j in everyone] == [job_id]
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=keys["alice"])
    assert cancelled.json()["status"] == "cancelled"


def test_a_researcher_pays_for_their_own_jobs(
    client: TestClient, keys: dict[str, dict[str, str]], services: Services
) -> None:
    response = create_job(client, keys["alice"], owner="pool:research")
    assert assert_openai_error(response, 403)["message"].startswith("owner:")
    assert services.jobs.list_jobs().jobs == []
    research = create_job(client, keys["admin"], owner="pool:research")
    assert research.json()["swarm"]["owner"] == "pool:research"


def test_only_operators_raise_a_jobs_priority(
    client: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    high = {"hyperparameters": {**HYPERPARAMETERS, "priority": 100}}
    assert assert_openai_error(create_job(client, keys["alice"], **high), 403)[
        "message"
    ].startswith("priority:")
    low = {"hyperparameters": {**HYPERPARAMETERS, "priority": -5}}
    assert create_job(client, keys["alice"], **low).status_code == 200
    assert create_job(client, keys["admin"], **high).status_code == 200


def test_anothers_ids_are_no_cursor(client: TestClient, keys: dict[str, dict[str, str]]) -> None:
    file_id = upload(client, keys["bob"])["id"]
    job_id = create_job(client, keys["bob"]).json()["id"]
    for path, after in (("/v1/files", file_id), ("/v1/fine_tuning/jobs", job_id)):
        response = client.get(path, params={"after": after}, headers=keys["alice"])
        assert_openai_error(response, 404)
        assert client.get(path, params={"after": after}, headers=keys["bob"]).status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/swarm/credits", {"before": 10**30}),
        ("/v1/swarm/credits", {"before": -1}),
        ("EVENTS", {"after": "ftevent-99999999999999999999999"}),
        ("EVENTS", {"after": "ftevent-\u00b2"}),
    ],
)
def test_out_of_range_cursors_are_400s(
    client: TestClient, path: str, params: dict[str, Any]
) -> None:
    if path == "EVENTS":
        path = f"/v1/fine_tuning/jobs/{create_job(client, {}).json()['id']}/events"
    assert_openai_error(client.get(path, params=params), 400)


def test_credits_are_the_callers_own_by_default(
    client: TestClient, keys: dict[str, dict[str, str]]
) -> None:
    grant = {"account": "user:alice", "amount": 3}
    client.post("/v1/swarm/credits/issue", json=grant, headers=keys["admin"])
    mine = client.get("/v1/swarm/credits", headers=keys["alice"]).json()
    assert (mine["account"], mine["balance"]) == ("user:alice", 3.0)
    assert client.get("/v1/swarm/credits", headers=keys["bob"]).json()["balance"] == 0.0
    response = client.get(
        "/v1/swarm/credits", params={"account": "user:alice"}, headers=keys["bob"]
    )
    assert_openai_error(response, 403)
    pool = client.get("/v1/swarm/credits", params={"account": "pool:research"}, headers=keys["bob"])
    assert pool.status_code == 200
    steal = {"account": "user:alice", "amount": 1}
    assert_openai_error(
        client.post("/v1/swarm/credits/donate", json=steal, headers=keys["bob"]), 403
    )
    donated = client.post("/v1/swarm/credits/donate", json=steal, headers=keys["alice"]).json()
    assert donated["balance"] == 2.0


# -- OpenAI fields beyond the basics ----------------------------------------------------------


def test_learning_rate_multiplier_scales_the_methods_default(client: TestClient) -> None:
    hyperparameters = {"learning_rate_multiplier": 0.5}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    job = create_job(client, {}, method=method, hyperparameters={**HYPERPARAMETERS, "seq_len": 200})
    assert job.status_code == 200, job.text
    spec = job.json()["swarm"]["spec"]
    assert spec["inner_lr"] == pytest.approx(0.5 * default_learning_rate("sft", "lora"))
    assert job.json()["hyperparameters"]["learning_rate_multiplier"] == 0.5
    assert job.json()["method"]["type"] == "supervised"


@pytest.mark.parametrize("multiplier", [0, -1, 1000, "fast", True])
def test_a_bad_learning_rate_multiplier_is_a_400(client: TestClient, multiplier: Any) -> None:
    body = {"hyperparameters": {**HYPERPARAMETERS, "learning_rate_multiplier": multiplier}}
    error = assert_openai_error(create_job(client, {}, **body), 400)
    assert error["param"] == "learning_rate_multiplier"


def test_swarm_settings_are_accepted_as_extra_top_level_fields(client: TestClient) -> None:
    job = create_job(client, {}, inner_steps=3, max_clients=5)
    assert job.status_code == 200, job.text
    assert (
        job.json()["swarm"]["spec"]["inner_steps"],
        job.json()["swarm"]["spec"]["max_clients"],
    ) == (3, 5)
    error = assert_openai_error(create_job(client, {}, integrations=[{"type": "wandb"}]), 400)
    assert "integrations" in error["message"]


def test_a_hyperparameter_error_names_its_param(client: TestClient) -> None:
    body = {"hyperparameters": {**HYPERPARAMETERS, "n_epochs": -2}}
    assert assert_openai_error(create_job(client, {}, **body), 400)["param"] == "n_epochs"


def test_events_page_with_after(client: TestClient, services: Services) -> None:
    job_id = create_job(client, {}).json()["id"]
    services.jobs.prepare_next()
    client.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    client.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    everything = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()
    assert len(everything["data"]) == 4 and not everything["has_more"]
    first = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 3}).json()
    assert first["has_more"]
    rest = client.get(
        f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": first["data"][-1]["id"]}
    ).json()
    assert [e["id"] for e in first["data"] + rest["data"]] == [e["id"] for e in everything["data"]]
    assert not rest["has_more"]
    assert_openai_error(
        client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": "nope"}), 400
    )


def test_swarm_status_and_model_retrieval(client: TestClient) -> None:
    status = client.get("/v1/swarm/status").json()
    assert status["object"] == "swarm.status"
    assert (status["workers_online"], status["workers_by_device"], status["queue_length"]) == (
        0,
        {},
        0,
    )
    model = client.get("/v1/models/micro-llama").json()
    assert (model["id"], model["object"]) == ("micro-llama", "model")
    assert_openai_error(client.get("/v1/models/gpt-5"), 404)


def test_a_researcher_sees_where_their_own_jobs_wait(
    client: TestClient, keys: dict[str, dict[str, str]], services: Services
) -> None:
    mine = create_job(client, keys["alice"]).json()["id"]
    theirs = create_job(client, keys["bob"]).json()["id"]
    while services.jobs.prepare_next():
        pass
    everyone = client.get("/v1/swarm/queue", headers=keys["admin"]).json()["data"]
    assert sorted(e["job_id"] for e in everyone) == sorted([mine, theirs])
    alices = client.get("/v1/swarm/queue", headers=keys["alice"]).json()["data"]
    assert [e["job_id"] for e in alices] == [mine]
    assert alices[0]["position"] == next(e["position"] for e in everyone if e["job_id"] == mine)


# -- guessing keys ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_guessing_keys_gets_429s_but_valid_keys_still_work(
    client: TestClient, services: Services, keys: dict[str, dict[str, str]]
) -> None:
    clock = Clock()
    services.keys.throttle = AttemptThrottle(limit=3, window_s=60.0, clock=clock)
    for _ in range(3):
        assert_openai_error(client.get("/v1/files", headers=bearer("sk-swarm-guess")), 401)
    clock.now += 20
    response = client.get("/v1/files", headers=bearer("sk-swarm-guess-again"))
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")  # OpenAI's
    assert "try again in 40 s" in error["message"]
    assert response.headers["retry-after"] == "40"
    # One bad client behind a shared address locks nobody else out.
    assert client.get("/v1/files", headers=keys["alice"]).status_code == 200
    clock.now += 41
    assert_openai_error(client.get("/v1/files", headers=bearer("sk-swarm-guess")), 401)


def test_the_throttle_forgets_the_oldest_addresses_first() -> None:
    clock = Clock()
    throttle = AttemptThrottle(limit=1, window_s=60.0, max_addresses=2, clock=clock)
    for address in ("a", "b", "c"):
        throttle.failed(address)
    throttle.check("a")  # forgotten: a third address pushed it out
    for address in ("b", "c"):
        with pytest.raises(RateLimitedError):
            throttle.check(address)


def test_a_snapshot_whose_job_is_gone_breaks_no_listing(
    client: TestClient, services: Services, keys: dict[str, dict[str, str]]
) -> None:
    folder = services.catalog.root / "ftjob-gone"
    folder.mkdir(parents=True)
    manifest = {"name": "ftjob-gone", "source": "job:ftjob-gone", "model_type": "llama"}
    (folder / "manifest.json").write_text(
        json.dumps({**manifest, "num_parameters": 1, "created_at": 1.0})
    )
    seen = {m["id"] for m in client.get("/v1/models", headers=keys["alice"]).json()["data"]}
    assert "micro-llama" in seen and "ftjob-gone" not in seen
    everyone = client.get("/v1/models", headers=keys["admin"]).json()["data"]
    assert "ftjob-gone" in {m["id"] for m in everyone}
