"""`swarm jobs watch` against the real app (a TestClient is an httpx client)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from swarm.coordinator.server import Services
from swarm.coordinator.watch import WatchError, describe_loss, estimate_eta, watch_job
from tests.unit.coordinator.test_http import HYPERPARAMETERS


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, force_terminal=False), out


def test_watching_a_cancelled_job_prints_its_events_and_fails(
    client: TestClient, services: Services
) -> None:
    body = {"model": "micro-llama", "hyperparameters": HYPERPARAMETERS}
    job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    services.jobs.prepare_next()
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    screen, out = console()
    assert watch_job(client, job_id, interval_s=0.01, console=screen) == 1
    printed = out.getvalue()
    assert f"watching {job_id}: micro-llama, lm (full), user:default" in printed
    for line in ("validating builtin:tiny_corpus", "queued, estimated", "cancelled"):
        assert line in printed
    assert printed.rstrip().endswith("cancelled")


def test_watching_an_unknown_job_says_so(client: TestClient) -> None:
    with pytest.raises(WatchError, match="no job 'ftjob-nope'"):
        watch_job(client, "ftjob-nope", console=console()[0])


def job(status: str, done: int, total: int | None, started: float | None) -> dict[str, Any]:
    swarm = {"rounds_completed": done, "total_rounds": total, "started_at": started}
    return {"status": status, "swarm": swarm}


@pytest.mark.parametrize(
    ("state", "eta"),
    [
        (job("running", 2, 10, 1000.0), "00:02:40"),  # 20 s a round, 8 rounds left
        (job("running", 0, 10, 1000.0), "-"),  # no pace yet
        (job("running", 3, None, 1000.0), "-"),  # an epoch-based job: total unknown
        (job("queued", 0, 10, None), "-"),
        (job("succeeded", 10, 10, 1000.0), "0:00:00"),
    ],
)
def test_the_eta_follows_the_pace_of_the_rounds_done(state: dict[str, Any], eta: str) -> None:
    assert estimate_eta(state, now=1040.0) == eta


def test_losses_are_described_as_they_are_known() -> None:
    assert describe_loss(None) == ""
    assert describe_loss({"train_loss": 1.23456, "valid_loss": None}) == "loss 1.2346"
    assert describe_loss({"train_loss": 2.0, "valid_loss": 1.5}) == "loss 2.0000 · held-out 1.5000"


def test_watch_rides_out_a_restarting_proxy_and_names_other_replies() -> None:
    replies = [httpx.Response(503, text="<html>restarting</html>")] * 2 + [
        httpx.Response(500, text="Internal Server Error")
    ]
    transport = httpx.MockTransport(lambda request: replies.pop(0))
    with (
        httpx.Client(transport=transport, base_url="http://coordinator") as http,
        pytest.raises(WatchError, match="HTTP 500: Internal Server Error"),
    ):
        watch_job(http, "ftjob-x", console=console()[0])
    assert replies == []  # the two 503s were retried


def test_event_text_is_printed_as_is(client: TestClient, services: Services) -> None:
    body = {"model": "micro-llama", "hyperparameters": HYPERPARAMETERS}
    job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    services.jobs._fail(job_id, "user_error", "shape [batch, seq] mismatch [/]")
    screen, out = console()
    assert watch_job(client, job_id, interval_s=0.01, console=screen) == 1
    assert out.getvalue().count("shape [batch, seq] mismatch [/]") == 2  # the event, the reason
