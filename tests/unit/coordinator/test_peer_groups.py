"""Peer averaging on the coordinator's side: peer addresses, group results and their weights."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from swarm.coordinator.rounds import _payload_weights
from swarm.coordinator.storage import Round, Task
from swarm.protocol import messages as m
from swarm.protocol.errors import (
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SchedulingError,
)
from tests.conftest import MICRO_SPEC, start_job, wire_services
from tests.unit.coordinator import test_tasks
from tests.unit.coordinator.test_tasks import SETTINGS, Coordinator, coordinator_over

SPEC = replace(MICRO_SPEC, data_plane="hivemind", peer_timeout_s=12.0)
# test_tasks's fixtures, building their job from this module's SPEC.
template = test_tasks.template
coordinator = test_tasks.coordinator

ADDR = "/ip4/127.0.0.1/tcp/{}/p2p/12D3KooWRm6fLMx2CSWmyTmYBDjkNBYhpJqaFvvzDF2XXQBwUF{}"


def two_leases(coordinator: Coordinator) -> tuple[tuple[str, str], tuple[str, str]]:
    w1, w2 = coordinator.register("a"), coordinator.register("b")
    return (w1, coordinator.lease_id(w1)), (w2, coordinator.lease_id(w2))


def defer(coordinator: Coordinator, worker: str, task: str, leader: str) -> m.SubmitResultResponse:
    """A member's result: no payload, the leader's task named."""
    empty = coordinator.blobs.put_bytes(b"")
    header = m.ResultHeader(
        session=m.Session(worker_id=worker, token=b""),
        task_id=task,
        metrics=m.TaskMetrics(
            loss_first=5.5, loss_last=5.0, loss_mean=5.2, tokens=64, compute_s=0.1, steps=2
        ),
        payload_sha256=empty,
        payload_size=0,
        group_payload_task_id=leader,
    )
    coordinator.tasks.check_submission(worker, header)
    return coordinator.tasks.accept_result(worker, header, empty)


def lead(
    coordinator: Coordinator, worker: str, task: str, group: list[str]
) -> m.SubmitResultResponse:
    """The leader's result: the group's payload, the group listed."""
    header = replace(coordinator.header(worker, task), group_task_ids=group)
    coordinator.tasks.check_submission(worker, header)
    return coordinator.tasks.accept_result(worker, header, header.payload_sha256)


def test_a_hivemind_jobs_train_tasks_say_how_to_average(coordinator: Coordinator) -> None:
    first, second = (coordinator.tasks.lease(coordinator.register()).task for _ in range(2))
    assert first is not None and first.train is not None and first.train.peer_averaging
    assert second is not None and second.train is not None and second.train.peer_averaging
    plan = first.train.peer_averaging
    assert (plan.group_size, plan.timeout_s) == (2, 12.0)
    # The round's workers share a group name that the job id alone does not give away.
    assert plan.group_key == second.train.peer_averaging.group_key
    assert len(plan.group_key) == 32 and coordinator.job.id not in plan.group_key


def test_workers_of_a_round_learn_where_the_others_listen(coordinator: Coordinator) -> None:
    (w1, t1), (w2, t2) = two_leases(coordinator)
    assert coordinator.tasks.find_peers(w1, t1, [ADDR.format(1, "A")]) == []
    assert coordinator.tasks.find_peers(w2, t2, [ADDR.format(2, "B")]) == [ADDR.format(1, "A")]
    # Asking again without addresses keeps the ones given before.
    assert coordinator.tasks.find_peers(w1, t1, []) == [ADDR.format(2, "B")]


def test_find_peers_refuses_other_workers_tasks_and_bad_addresses(
    coordinator: Coordinator,
) -> None:
    (w1, t1), (w2, _t2) = two_leases(coordinator)
    with pytest.raises(PermissionDeniedError, match="not leased to you"):
        coordinator.tasks.find_peers(w2, t1, [])
    with pytest.raises(NotFoundError):
        coordinator.tasks.find_peers(w1, "task-nope", [])
    with pytest.raises(ProtocolError, match="multiaddr"):
        coordinator.tasks.find_peers(w1, t1, ["127.0.0.1:4000"])
    with pytest.raises(ProtocolError, match="multiaddr"):
        coordinator.tasks.find_peers(w1, t1, ["/" + "x" * 300])
    with pytest.raises(ProtocolError, match="multiaddr"):  # no peer id, or not base58
        coordinator.tasks.find_peers(w1, t1, ["/ip4/1.2.3.4/tcp/1/p2p/0000"])
    with pytest.raises(ProtocolError, match="at most 8"):
        coordinator.tasks.find_peers(w1, t1, [ADDR.format(i, "A") for i in range(9)])
    assert coordinator.task(t1).peer_addrs is None  # nothing bad was stored


def test_a_member_defers_to_the_leaders_result_once_it_is_in(coordinator: Coordinator) -> None:
    (w1, t1), (w2, t2) = two_leases(coordinator)
    leader, member = sorted([(t1, w1), (t2, w2)])
    with pytest.raises(NotFoundError, match="ask again"):  # too early: the worker retries
        defer(coordinator, member[1], member[0], leader[0])
    assert lead(coordinator, leader[1], leader[0], sorted([t1, t2])).accepted
    assert defer(coordinator, member[1], member[0], leader[0]).accepted
    stored = coordinator.task(member[0])
    assert stored.status == "accepted" and stored.result_sha256 is None
    assert stored.metrics is not None and stored.metrics["covered_by"] == leader[0]
    assert stored.credits and stored.credits > 0  # the member is paid for its own work
    assert coordinator.worker(member[1]).tasks_accepted == 1
    assert coordinator.task(leader[0]).metrics["group"] == sorted([t1, t2])  # type: ignore[index]


def test_a_member_cannot_defer_to_a_result_that_does_not_list_it(
    coordinator: Coordinator,
) -> None:
    (w1, t1), (w2, t2) = two_leases(coordinator)
    assert lead(coordinator, w1, t1, [t1]).accepted  # a "group" of one: itself
    with pytest.raises(SchedulingError, match="own update"):  # it never will: submit alone
        defer(coordinator, w2, t2, t1)
    with pytest.raises(SchedulingError):  # no such task
        defer(coordinator, w2, t2, "task-made-up")
    assert coordinator.task(t2).status == "leased"


def test_group_fields_are_checked_before_the_payload_is_read(coordinator: Coordinator) -> None:
    (w1, t1), (w2, t2) = two_leases(coordinator)
    header = coordinator.header(w1, t1)
    bad_groups = {
        "this one among them": [t2],
        "once": [t1, t1],
        "not train tasks": [t1, "task-elsewhere"],
        "in a round of 2": [t1, t2, "task-3"],
    }
    for message, group in bad_groups.items():
        with pytest.raises(ProtocolError, match=message):
            coordinator.tasks.check_submission(w1, replace(header, group_task_ids=group))
    with pytest.raises(ProtocolError, match="no payload"):
        coordinator.tasks.check_submission(
            w2, replace(header, task_id=t2, group_payload_task_id=t1)
        )
    empty = replace(header, payload_size=0, payload_sha256=hashlib.sha256(b"").hexdigest())
    with pytest.raises(ProtocolError, match="itself"):
        coordinator.tasks.check_submission(w1, replace(empty, group_payload_task_id=t1))


def test_group_fields_are_refused_for_a_job_without_peer_averaging(tmp_path: Path) -> None:
    services = wire_services(tmp_path, **SETTINGS)
    try:
        coordinator = coordinator_over(services, start_job(services, MICRO_SPEC))
        (w1, t1), (_w2, t2) = two_leases(coordinator)
        task = coordinator.tasks.lease(w1).task
        assert task is not None and task.train is not None and task.train.peer_averaging is None
        with pytest.raises(ProtocolError, match="does not average with peers"):
            coordinator.tasks.find_peers(w1, t1, [])
        header = replace(coordinator.header(w1, t1), group_task_ids=[t1, t2])
        with pytest.raises(ProtocolError, match="does not average with peers"):
            coordinator.tasks.check_submission(w1, header)
    finally:
        services.db.dispose()


def _task(task_id: str, tokens: int, *, sha: str | None = None, **metrics: str) -> Task:
    return Task(
        id=task_id,
        round_index=3,
        result_sha256=sha,
        metrics={"tokens": tokens, **metrics},
    )


def test_a_groups_payload_weighs_the_tokens_of_every_member_that_confirmed() -> None:
    round_ = Round(index=3)
    tasks = [
        _task("a", 100, sha="s-a", group="a,b,c"),
        _task("b", 50, covered_by="a"),
        _task("c", 30, covered_by="a"),
        _task("d", 70, sha="s-d"),  # a worker that submitted its own update
        _task("e", 40, covered_by="gone"),  # its group's payload was applied earlier
    ]
    payloads, weights, total = _payload_weights(round_, tasks)
    assert [t.id for t in payloads] == ["a", "d"]
    assert weights == [180.0, 70.0]
    assert total == 250.0


def test_signing_bytes_change_with_the_group_and_not_without_it() -> None:
    metrics = m.TaskMetrics(tokens=64, steps=2)
    plain = m.result_signing_bytes("t1", "ab" * 32, metrics)
    assert m.result_signing_bytes("t1", "ab" * 32, metrics, [], "") == plain
    grouped = m.result_signing_bytes("t1", "ab" * 32, metrics, ["t1", "t2"])
    deferred = m.result_signing_bytes("t1", "ab" * 32, metrics, [], "t2")
    assert len({plain, grouped, deferred}) == 3
