"""The `swarm jobs` and `swarm credits` commands against a real coordinator process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm.coordinator.demo import start_coordinator, stop_process
from swarm.models.corpus import load_builtin_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with (tmp_path / "coordinator.log").open("w") as log:
        process, ready = start_coordinator(tmp_path / "coordinator", log)
        try:
            yield f"http://127.0.0.1:{ready['http_port']}"
        finally:
            stop_process(process, signal.SIGTERM)


def swarm(url: str, *args: str, expect: int = 0) -> Any:
    """Run `swarm ARGS --url URL` (the flag goes after the command group); parse its JSON."""
    group, *rest = args
    result = subprocess.run(
        [sys.executable, "-m", "swarm.coordinator", group, "--url", url, *rest],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == expect, result.stderr
    return json.loads(result.stdout) if expect == 0 else result.stderr


def test_a_job_is_created_watched_paused_resumed_and_cancelled_from_the_cli(url: str) -> None:
    created = swarm(
        url,
        "jobs",
        "create",
        "--model",
        "micro-llama",
        "--owner",
        "user:dana",
        "--priority",
        "3",
        "--set",
        "num_rounds=2",
        "--set",
        "seq_len=32",
    )
    assert created["status"] == "validating_files"
    assert created["swarm"]["owner"] == "user:dana" and created["swarm"]["priority"] == 3
    job_id = created["id"]
    deadline = time.monotonic() + 60
    while swarm(url, "jobs", "get", job_id)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert swarm(url, "jobs", "queue") == {"object": "list", "data": []}
    assert swarm(url, "jobs", "pause", job_id)["status"] == "paused"
    assert "paused job cannot become paused" in swarm(url, "jobs", "pause", job_id, expect=1)
    assert swarm(url, "jobs", "resume", job_id)["status"] == "running"
    assert swarm(url, "jobs", "checkpoints", job_id)["data"] == []
    assert swarm(url, "jobs", "cancel", job_id)["status"] == "cancelled"


def test_credits_are_issued_donated_and_checked_from_the_cli(url: str) -> None:
    assert swarm(url, "credits", "issue", "user:eve", "4")["balance"] == 4.0
    assert swarm(url, "credits", "donate", "user:eve", "1.5")["balance"] == 2.5
    shown = swarm(url, "credits", "show", "user:eve")
    assert [h["kind"] for h in shown["history"]] == ["donate", "issue"]
    assert swarm(url, "credits", "leaderboard")["research_pool"] == 1.5
    ledger = swarm(url, "credits", "ledger")
    assert ledger["balanced"] and ledger["minted"] == 4.0
    assert "fewer than the" in swarm(url, "credits", "donate", "user:eve", "99", expect=1)


def test_a_dataset_is_checked_uploaded_and_trained_on_from_the_cli(
    url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    refused = swarm(url, "files", "upload", str(bad), expect=1)
    assert "line 1" in refused and "line 2" in refused
    assert swarm(url, "files", "list")["data"] == []  # refused before it was sent

    data = tmp_path / "train.jsonl"
    data.write_bytes(load_builtin_bytes("builtin:smol_instruct"))
    file = swarm(url, "files", "upload", str(data))
    assert file["filename"] == "train.jsonl" and file["swarm"]["num_examples"] == 480
    assert [f["id"] for f in swarm(url, "files", "list")["data"]] == [file["id"]]
    job = swarm(
        url,
        "jobs",
        "create",
        "--model",
        "micro-llama",
        "--method",
        "sft",
        "--training-file",
        file["id"],
        "--set",
        "seq_len=200",
    )
    assert job["training_file"] == file["id"]
    assert swarm(url, "files", "delete", file["id"])["deleted"] is True
    assert "no file" in swarm(url, "files", "get", file["id"], expect=1)


def test_keys_are_made_in_setup_mode_then_required(url: str, tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "swarm.coordinator", "keys", "create", "root", "--role", "operator"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SWARM_URL": url},
    )
    assert made.returncode == 0, made.stderr
    admin = json.loads(made.stdout)["key"]
    assert f"export SWARM_API_KEY={admin}" in made.stderr  # how to use it, said once
    refused = swarm(url, "jobs", "list", expect=1)
    assert "no API key given" in refused and "SWARM_API_KEY" in refused

    alice = swarm(url, "keys", "create", "alice", "--api-key", admin)["key"]
    assert swarm(url, "jobs", "list", "--api-key", alice)["data"] == []
    swarm(url, "credits", "issue", "user:alice", "2", "--api-key", admin)
    mine = swarm(url, "credits", "--api-key", alice)
    assert (mine["account"], mine["balance"]) == ("user:alice", 2.0)
    assert "only an operator" in swarm(url, "keys", "create", "eve", "--api-key", alice, expect=1)

    # Every operator key lost: one is written straight into the coordinator's database.
    offline = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarm.coordinator",
            "keys",
            "create",
            "rescue",
            "--role",
            "operator",
            "--data-dir",
            str(tmp_path / "coordinator"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 0, offline.stderr
    rescue = json.loads(offline.stdout)["key"]
    listed = swarm(url, "keys", "list", "--api-key", rescue)["data"]
    assert sorted(k["user"] for k in listed) == ["user:alice", "user:rescue", "user:root"]
    alice_key = next(k["id"] for k in listed if k["user"] == "user:alice")
    assert swarm(url, "keys", "revoke", alice_key, "--api-key", rescue)["revoked"] is True
    assert "revoked" in swarm(url, "jobs", "list", "--api-key", alice, expect=1)


def test_the_coordinator_logs_json_lines_with_ids(tmp_path: Path) -> None:
    log_path = tmp_path / "json.log"
    with log_path.open("w") as log:
        process, ready = start_coordinator(
            tmp_path / "json-coordinator", log, extra_env={"SWARM_LOG_FORMAT": "json"}
        )
        try:
            url = f"http://127.0.0.1:{ready['http_port']}"
            job = swarm(url, "jobs", "create", "--model", "micro-llama", "--set", "seq_len=32")
        finally:
            stop_process(process, signal.SIGTERM)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    about_job = [line for line in lines if line.get("job_id") == job["id"]]
    assert any("created" in line["message"] for line in about_job), lines
