"""`/v1/files`: uploaded datasets, checked line by line, that jobs train on by id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from swarm.coordinator.files import check_dataset, clean_filename
from swarm.coordinator.server import Services
from swarm.coordinator.storage import File, Job
from swarm.models import MAX_DATASET_BYTES
from swarm.models.corpus import load_builtin_bytes
from swarm.protocol.errors import ConfigError
from tests.unit.coordinator.test_http_scheduling import error_of

CHAT = load_builtin_bytes("builtin:smol_instruct")
PREFS = load_builtin_bytes("builtin:smol_prefs")
SFT = {
    "model": "micro-llama",
    "method": {"type": "supervised"},
    "hyperparameters": {"seq_len": 200, "num_rounds": 1, "inner_steps": 4, "batch_size": 2},
}


def upload(
    client: TestClient, data: bytes, name: str = "train.jsonl", purpose: str = "fine-tune"
) -> Any:
    return client.post(
        "/v1/files", files={"file": (name, data, "application/jsonl")}, data={"purpose": purpose}
    )


def uploaded(client: TestClient, data: bytes, name: str = "train.jsonl") -> dict[str, Any]:
    response = upload(client, data, name)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def num_files(services: Services) -> int:
    with services.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(File)) or 0)


def test_an_uploaded_chat_file_is_an_openai_file_object(client: TestClient) -> None:
    file = uploaded(client, CHAT, "my data/train.jsonl")
    assert file["object"] == "file" and file["id"].startswith("file-")
    assert file["bytes"] == len(CHAT) and file["purpose"] == "fine-tune"
    assert file["filename"] == "train.jsonl" and file["status"] == "processed"
    assert file["swarm"]["kind"] == "chat" and file["swarm"]["num_examples"] == 480
    assert client.get(f"/v1/files/{file['id']}").json() == file
    content = client.get(f"/v1/files/{file['id']}/content")
    assert content.status_code == 200 and content.content == CHAT


def test_a_preference_file_is_told_apart_from_a_chat_file(client: TestClient) -> None:
    file = uploaded(client, PREFS, "prefs.jsonl")
    assert file["swarm"] == {
        "kind": "preference",
        "num_examples": 320,
        "sha256": file["swarm"]["sha256"],
    }


def test_files_are_listed_newest_first_with_a_cursor(client: TestClient) -> None:
    ids = [uploaded(client, CHAT, f"{i}.jsonl")["id"] for i in range(3)]
    listed = client.get("/v1/files").json()
    assert [f["id"] for f in listed["data"]] == ids[::-1]
    assert listed["has_more"] is False and listed["first_id"] == ids[2]
    page = client.get("/v1/files", params={"limit": 1, "after": ids[2]}).json()
    assert [f["id"] for f in page["data"]] == [ids[1]] and page["has_more"] is True
    oldest = client.get("/v1/files", params={"order": "asc", "limit": 2}).json()
    assert [f["id"] for f in oldest["data"]] == ids[:2]
    assert client.get("/v1/files", params={"purpose": "batch"}).json()["data"] == []


def test_a_deleted_file_is_gone_from_the_api(client: TestClient) -> None:
    file_id = uploaded(client, CHAT)["id"]
    deleted = client.delete(f"/v1/files/{file_id}")
    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    for response in (
        client.get(f"/v1/files/{file_id}"),
        client.get(f"/v1/files/{file_id}/content"),
        client.delete(f"/v1/files/{file_id}"),
    ):
        assert "no file" in error_of(response, 404)["message"]
    assert client.get("/v1/files").json()["data"] == []


def test_a_job_trains_on_an_uploaded_file(client: TestClient, services: Services) -> None:
    train = uploaded(client, CHAT)["id"]
    heldout = uploaded(client, load_builtin_bytes("builtin:smol_instruct_heldout"))["id"]
    response = client.post(
        "/v1/fine_tuning/jobs", json={**SFT, "training_file": train, "validation_file": heldout}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["training_file"] == train and job["validation_file"] == heldout
    # Deleting the file after the job was created does not take its data away.
    client.delete(f"/v1/files/{train}")
    assert services.jobs.prepare_next() == job["id"]
    prepared = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert prepared["status"] in ("queued", "running"), prepared
    assert prepared["swarm"]["estimated_credits"] > 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"training_file": "file-nope"}, "training_file: no file 'file-nope'"),
        ({"validation_file": "file-nope"}, "validation_file: no file"),
    ],
)
def test_a_job_on_a_missing_file_is_refused_and_nothing_is_stored(
    client: TestClient, services: Services, body: dict[str, Any], message: str
) -> None:
    body = {"training_file": uploaded(client, CHAT)["id"], **body}
    error = error_of(client.post("/v1/fine_tuning/jobs", json={**SFT, **body}), 400)
    assert message in error["message"]
    with services.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_a_file_in_the_wrong_format_for_the_method_says_which_is_which(
    client: TestClient,
) -> None:
    prefs = uploaded(client, PREFS)["id"]
    error = error_of(client.post("/v1/fine_tuning/jobs", json={**SFT, "training_file": prefs}), 400)
    assert f"{prefs} holds preference pairs" in error["message"]
    assert "supervised fine-tuning needs chat examples" in error["message"]
    dpo = {**SFT, "method": {"type": "dpo"}, "training_file": uploaded(client, CHAT)["id"]}
    error = error_of(client.post("/v1/fine_tuning/jobs", json=dpo), 400)
    assert "holds chat examples, but DPO needs preference pairs" in error["message"]


def test_a_deleted_file_starts_no_new_job(client: TestClient) -> None:
    file_id = uploaded(client, CHAT)["id"]
    client.delete(f"/v1/files/{file_id}")
    error = error_of(
        client.post("/v1/fine_tuning/jobs", json={**SFT, "training_file": file_id}), 400
    )
    assert "training_file: no file" in error["message"]


BAD_LINE = b'{"messages": [{"role": "user", "content": "hi"}]}\n'
GOOD_LINE = CHAT.split(b"\n", 1)[0] + b"\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no examples"),
        (b"\n\n", "no examples"),
        (GOOD_LINE + b"{not json\n", "line 2"),
        (GOOD_LINE * 3 + BAD_LINE, "line 4"),
        (GOOD_LINE + b"[1, 2]\n", "line 2"),
        (b"\xff\xfe" + GOOD_LINE, "line 1"),
        (json.dumps({"prompt": "a", "chosen": "b"}).encode(), "line 1"),
    ],
)
def test_a_bad_file_is_a_400_that_names_the_line_and_stores_nothing(
    client: TestClient, services: Services, data: bytes, message: str
) -> None:
    error = error_of(upload(client, data), 400)
    assert message in error["message"] and error["param"] == "file"
    assert error["code"] == "invalid_file"
    assert num_files(services) == 0


def test_an_unsupported_purpose_is_refused(client: TestClient, services: Services) -> None:
    error = error_of(upload(client, CHAT, purpose="assistants"), 400)
    assert error["param"] == "purpose" and "fine-tune" in error["message"]
    assert num_files(services) == 0


def test_an_oversize_upload_is_refused_before_it_is_read(
    client: TestClient, services: Services
) -> None:
    big = GOOD_LINE * (MAX_DATASET_BYTES // len(GOOD_LINE) + 1)
    error = error_of(upload(client, big), 413)
    assert error["code"] == "file_too_large" and f"{MAX_DATASET_BYTES:,}" in error["message"]
    assert num_files(services) == 0


def test_a_request_without_a_file_is_a_400(client: TestClient) -> None:
    error = error_of(client.post("/v1/files", data={"purpose": "fine-tune"}), 400)
    assert "file" in error["message"]


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 10_001}, {"order": "sideways"}])
def test_bad_list_parameters_are_400s(client: TestClient, params: dict[str, Any]) -> None:
    error_of(client.get("/v1/files", params=params), 400)


def test_listing_after_an_unknown_file_is_a_404(client: TestClient) -> None:
    error_of(client.get("/v1/files", params={"after": "file-nope"}), 404)


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("train.jsonl", "train.jsonl"),
        ("../../etc/passwd", "passwd"),
        ("C:\\data\\x.jsonl", "x.jsonl"),
        ("a\x00b\nc.jsonl", "abc.jsonl"),
        ("", "upload.jsonl"),
        ("x" * 300, "x" * 255),
    ],
)
def test_file_names_are_cleaned(name: str, clean: str) -> None:
    assert clean_filename(name) == clean


def test_check_dataset_counts_examples_and_refuses_oversize_data() -> None:
    assert check_dataset(CHAT) == ("chat", 480)
    assert check_dataset(PREFS) == ("preference", 320)
    with pytest.raises(ConfigError, match="over the limit"):
        check_dataset(b" " * (MAX_DATASET_BYTES + 1))
