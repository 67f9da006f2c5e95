"""Coordinators sharing one database: ids, presence, and rounds taken over from one that died.

Two `RoundService`s over the same database and blob store stand for two coordinator
processes (real SQLite; the PostgreSQL integration test kills a real process instead).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from swarm.coordinator.presence import ID_FILE, Presence, load_coordinator_id
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.storage import Coordinator as CoordinatorRow
from swarm.coordinator.storage import Job, Round
from tests.unit.coordinator.test_jobs import SPEC, Coordinator, gradient_like

pytest_plugins = ["tests.unit.coordinator.test_jobs"]  # its `coordinator` fixture

TIMEOUT_S = 30.0


def test_a_data_directory_keeps_its_coordinator_id(tmp_path: Path) -> None:
    first = load_coordinator_id(tmp_path / "a")
    assert first.startswith("co-")
    assert load_coordinator_id(tmp_path / "a") == first  # a restart is the same coordinator
    assert load_coordinator_id(tmp_path / "b") != first
    (tmp_path / "a" / ID_FILE).write_text("garbage; rm -rf /\n")
    replaced = load_coordinator_id(tmp_path / "a")
    assert replaced.startswith("co-") and replaced != first
    assert (tmp_path / "a" / ID_FILE).read_text().strip() == replaced


def test_presence_tells_live_coordinators_from_gone_ones(coordinator: Coordinator) -> None:
    here = Presence(coordinator.db, "co-here", timeout_s=TIMEOUT_S)
    there = Presence(coordinator.db, "co-there", timeout_s=TIMEOUT_S)
    here.announce("127.0.0.1", 50051, 8000)
    there.announce("10.0.0.2", 50051, 8000)
    later = time.time() + TIMEOUT_S + 5
    here.touch(now=later)
    listed = {row["id"]: row for row in here.coordinators(now=later)}
    assert listed["co-here"]["alive"] and listed["co-here"]["this"]
    assert not listed["co-there"]["alive"] and not listed["co-there"]["this"]
    assert listed["co-there"]["host"] == "10.0.0.2"


def second_coordinator(coordinator: Coordinator, coordinator_id: str) -> RoundService:
    """Another coordinator process's round service over the same database and blobs."""
    return RoundService(
        coordinator.db,
        coordinator.blobs,
        coordinator.catalog,
        coordinator.services.ledger,
        worker_online_s=30.0,
        coordinator_id=coordinator_id,
        coordinator_timeout_s=TIMEOUT_S,
    )


def ready_round(coordinator: Coordinator) -> tuple[Job, Round]:
    """A started job whose round 0 has all its results and may close."""
    job = coordinator.start(SPEC)
    first, second = coordinator.register(), coordinator.register()
    assert coordinator.train(job, first, gradient_like(job, 0.25), tokens=64).accepted
    assert coordinator.train(job, second, gradient_like(job, -0.5), tokens=64).accepted
    assert coordinator.evaluate(first, eval_loss=5.5).accepted
    [round_0] = coordinator.rounds_of(job.id)
    assert coordinator.rounds.rounds_ready() == [round_0.id]
    return job, round_0


def claim(coordinator: Coordinator, round_id: int, coordinator_id: str) -> None:
    """What `close_round` records before aggregating, as if that coordinator then died."""
    with coordinator.db.transaction() as session:
        session.execute(
            update(Round)
            .where(Round.id == round_id)
            .values(status="aggregating", aggregator=coordinator_id)
        )


def last_seen(coordinator: Coordinator, coordinator_id: str, seconds_ago: float) -> None:
    presence = Presence(coordinator.db, coordinator_id, timeout_s=TIMEOUT_S)
    presence.announce("127.0.0.1", 1, 1)
    with coordinator.db.transaction() as session:
        session.execute(
            update(CoordinatorRow)
            .where(CoordinatorRow.id == coordinator_id)
            .values(last_seen_at=time.time() - seconds_ago)
        )


def test_a_round_a_live_coordinator_aggregates_is_left_to_it(coordinator: Coordinator) -> None:
    _, round_0 = ready_round(coordinator)
    other = second_coordinator(coordinator, "co-other")
    last_seen(coordinator, "co-other", seconds_ago=1.0)
    claim(coordinator, round_0.id, "co-other")
    assert coordinator.rounds.recover() == 0
    assert coordinator.rounds.recover(startup=True) == 0  # starting up takes only its own
    assert not coordinator.rounds.close_round(round_0.id)  # it is the other's to close
    assert other.close_round(round_0.id) is False  # claimed already: not open any more
    assert coordinator.rounds_of(round_0.job_id)[0].status == "aggregating"


def test_a_round_left_by_a_dead_coordinator_is_reopened_and_closed_once(
    coordinator: Coordinator,
) -> None:
    job, round_0 = ready_round(coordinator)
    last_seen(coordinator, "co-dead", seconds_ago=TIMEOUT_S + 1)
    claim(coordinator, round_0.id, "co-dead")
    assert coordinator.rounds.rounds_ready() == []  # aggregating: not ready for anyone

    assert coordinator.rounds.recover() == 1
    assert coordinator.rounds.recover() == 0
    reopened = coordinator.rounds_of(job.id)[0]
    assert (reopened.status, reopened.aggregator) == ("open", None)
    assert coordinator.rounds.rounds_ready() == [round_0.id]
    assert coordinator.rounds.close_round(round_0.id)
    round_0_closed, round_1 = coordinator.rounds_of(job.id)
    assert round_0_closed.status == "closed" and round_1.status == "open"
    assert coordinator.jobs.get_job(job.id).trained_tokens == 128


def test_own_rounds_are_reopened_after_a_restart_but_not_while_running(
    coordinator: Coordinator,
) -> None:
    _, round_0 = ready_round(coordinator)
    claim(coordinator, round_0.id, coordinator.rounds.coordinator_id)
    assert coordinator.rounds.recover() == 0  # still at work on it
    assert coordinator.rounds.recover(startup=True) == 1  # a restart: that work died with it


def test_a_coordinator_thought_gone_drops_the_aggregation_another_took_over(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow coordinator is taken for dead mid-aggregation; the other reopens and closes the
    round; when the slow one finishes, it finds the round no longer its own and commits
    nothing: the round is stepped, counted and paid once."""
    job, round_0 = ready_round(coordinator)
    slow = coordinator.rounds
    last_seen(coordinator, slow.coordinator_id, seconds_ago=0.0)
    other = second_coordinator(coordinator, "co-other")
    outer_step = slow._outer_step

    def stalled_step(*args: object) -> object:
        last_seen(coordinator, slow.coordinator_id, seconds_ago=TIMEOUT_S + 1)  # it stalls
        assert other.recover() == 1
        assert other.close_round(round_0.id)
        return outer_step(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(slow, "_outer_step", stalled_step)
    assert slow.close_round(round_0.id) is False

    rounds = coordinator.rounds_of(job.id)
    assert [r.index for r in rounds] == [0, 1]  # one next round, not two
    assert rounds[0].aggregator == "co-other"
    assert coordinator.jobs.get_job(job.id).trained_tokens == 128
    assert coordinator.jobs.get_job(job.id).rounds_completed == 1
    with coordinator.db.transaction() as session:
        assert coordinator.services.ledger.totals(session).balanced
        published = session.scalars(select(Round.params_sha256).where(Round.job_id == job.id))
        assert len(set(published)) == 2  # version 0 and the one step taken


def test_the_operator_sees_which_coordinators_serve_the_database(client: TestClient) -> None:
    response = client.get("/v1/swarm/coordinators")
    assert response.status_code == 200, response.text
    [this] = response.json()["data"]
    assert this["this"] and this["alive"] and this["id"].startswith("co-")
    assert this["grpc_port"] > 0
