"""Leasing tasks, heartbeats, expiry, hand-back and results, on a real SQLite database."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from swarm.compression import encode_payload
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.jobs import JobService
from swarm.coordinator.ledger import Ledger
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.server import Services
from swarm.coordinator.storage import Database, Job, Lease, Round, Task, Worker
from swarm.coordinator.tasks import TaskService
from swarm.coordinator.workers import WorkerRegistry
from swarm.protocol import messages as m
from swarm.protocol.errors import (
    MessageTooLargeError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
)
from swarm.scheduler import JobSpec, LeasePolicy
from tests.conftest import MICRO_SPEC, signed_registration, start_job, wire_services

SPEC = MICRO_SPEC
POLICY = LeasePolicy(ttl_s=5.0, max_task_s=60.0, solo_wait_s=3.0)


@dataclass
class Coordinator:
    db: Database
    blobs: BlobStore
    rounds: RoundService
    jobs: JobService
    tasks: TaskService
    workers: WorkerRegistry
    job: Job

    def register(self, name: str = "worker") -> str:
        request = signed_registration(name=name)
        worker, _token = self.workers.register(request, "ipv4:127.0.0.1:1234")
        return worker.id

    def lease_id(self, worker_id: str, now: float | None = None) -> str:
        response = self.tasks.lease(worker_id, now=now)
        assert response.task is not None, response.reason
        return response.task.task_id

    def task(self, task_id: str) -> Task:
        with self.db.transaction() as session:
            return session.get_one(Task, task_id)

    def leases(self, task_id: str) -> list[Lease]:
        with self.db.transaction() as session:
            return list(
                session.scalars(select(Lease).where(Lease.task_id == task_id).order_by(Lease.id))
            )

    def worker(self, worker_id: str) -> Worker:
        with self.db.transaction() as session:
            return session.get_one(Worker, worker_id)

    def round(self, index: int) -> Round:
        with self.db.transaction() as session:
            return session.scalars(
                select(Round).where(Round.job_id == self.job.id, Round.index == index)
            ).one()

    def header(
        self, worker_id: str, task_id: str, *, tokens: int = 64, fill: float = 0.01
    ) -> m.ResultHeader:
        """Store a valid fp16 pseudo-gradient for the job and describe it."""
        payload = encode_payload(
            {n: torch.full(tuple(s), fill) for n, s in self.job.param_shapes.items()},
            JobSpec(**self.job.spec).update_policy(),
        )
        sha = self.blobs.put_bytes(payload)
        return m.ResultHeader(
            session=m.Session(worker_id=worker_id, token=b""),
            task_id=task_id,
            metrics=m.TaskMetrics(
                loss_first=5.5, loss_last=5.0, loss_mean=5.2, tokens=tokens, compute_s=0.1, steps=2
            ),
            payload_sha256=sha,
            payload_size=len(payload),
        )

    def submit(
        self, worker_id: str, task_id: str, *, tokens: int = 64, fill: float = 0.01
    ) -> m.SubmitResultResponse:
        header = self.header(worker_id, task_id, tokens=tokens, fill=fill)
        self.tasks.check_submission(worker_id, header)
        return self.tasks.accept_result(worker_id, header, header.payload_sha256)

    def submit_evaluation(
        self, worker_id: str, task_id: str, *, eval_loss: float = 5.4
    ) -> m.SubmitResultResponse:
        """Report held-out metrics for an evaluate task: no payload, as workers send it."""
        empty = self.blobs.put_bytes(b"")
        header = m.ResultHeader(
            session=m.Session(worker_id=worker_id, token=b""),
            task_id=task_id,
            metrics=m.TaskMetrics(eval_loss=eval_loss, examples=8, compute_s=0.1),
            payload_sha256=empty,
            payload_size=0,
        )
        self.tasks.check_submission(worker_id, header)
        return self.tasks.accept_result(worker_id, header, empty)


SETTINGS = {"lease_ttl_s": POLICY.ttl_s, "max_task_s": POLICY.max_task_s, "solo_wait_s": 3.0}


@pytest.fixture(scope="module")
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Job]:
    """A migrated database with one job (round 0 open) of the test module's `SPEC`, built once
    and copied per test."""
    root = tmp_path_factory.mktemp("template")
    services = wire_services(root, **SETTINGS)
    job = start_job(services, request.module.SPEC)
    services.db.dispose()
    return root, job


@pytest.fixture
def coordinator(template: tuple[Path, Job], tmp_path: Path) -> Iterator[Coordinator]:
    source, job = template
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    services = wire_services(tmp_path, **SETTINGS)
    try:
        yield coordinator_over(services, job)
    finally:
        services.db.dispose()


def coordinator_over(services: Services, job: Job) -> Coordinator:
    return Coordinator(
        db=services.db,
        blobs=services.blobs,
        rounds=services.rounds,
        jobs=services.jobs,
        tasks=services.tasks,
        workers=WorkerRegistry(services.db),
        job=job,
    )


# -- leasing -------------------------------------------------------------------------------


def test_two_workers_get_distinct_tasks_of_round_zero(coordinator: Coordinator) -> None:
    w1, w2 = coordinator.register("a"), coordinator.register("b")
    first = coordinator.tasks.lease(w1).task
    second = coordinator.tasks.lease(w2).task
    assert first is not None and second is not None
    assert first.task_id != second.task_id
    assert first.job_id == second.job_id == coordinator.job.id
    assert first.round == second.round == 0
    assert first.train is not None and second.train is not None
    assert first.train.tokens_sha256 != second.train.tokens_sha256
    assert first.train.params_sha256 == coordinator.round(0).worker_params_sha256
    assert first.train.tokens_sha256 in coordinator.job.shard_sha256s
    assert first.train.model_config_sha256 == coordinator.job.model_config_sha256
    assert (first.train.inner_steps, first.train.batch_size, first.train.seq_len) == (2, 2, 16)
    assert first.train.update_policy == m.CompressionPolicy(
        chain="fp16", small_chain="fp16", small_elements=4096
    )
    assert first.train.param_deltas == []  # version 0 has no predecessor
    assert not first.train.keep_inner_state  # the default: AdamW afresh in every task
    assert first.max_result_bytes > 0
    assert coordinator.task(first.task_id).status == "leased"
    assert coordinator.task(first.task_id).worker_id == w1


def test_asking_again_returns_the_same_task_with_a_fresh_deadline(
    coordinator: Coordinator,
) -> None:
    w1 = coordinator.register()
    t0 = time.time()
    first = coordinator.tasks.lease(w1, now=t0).task
    again = coordinator.tasks.lease(w1, now=t0 + 2).task
    assert first is not None and again is not None
    assert again.task_id == first.task_id
    assert first.lease_deadline_unix_s == pytest.approx(t0 + POLICY.ttl_s)
    assert again.lease_deadline_unix_s == pytest.approx(t0 + 2 + POLICY.ttl_s)
    assert len(coordinator.leases(first.task_id)) == 1
    assert coordinator.task(first.task_id).lease_deadline == pytest.approx(t0 + 2 + POLICY.ttl_s)


def test_round_zero_ends_with_an_evaluation_of_version_zero(coordinator: Coordinator) -> None:
    w1, w2, w3 = (coordinator.register() for _ in range(3))
    coordinator.lease_id(w1)
    coordinator.lease_id(w2)
    task = coordinator.tasks.lease(w3).task
    assert task is not None
    assert task.train is None and task.evaluate is not None
    assert (task.round, task.version) == (0, 0)
    assert task.max_result_bytes == 0
    assert task.evaluate.params_sha256 == coordinator.round(0).worker_params_sha256
    assert task.evaluate.data_sha256 == coordinator.job.heldout_sha256
    assert task.evaluate.model_config_sha256 == coordinator.job.model_config_sha256
    assert task.evaluate.seq_len == SPEC.seq_len
    assert task.evaluate.max_examples == SPEC.eval_examples
    assert task.evaluate.recipe.objective == "lm"
    assert task.evaluate.param_deltas == []
    assert coordinator.task(task.task_id).kind == "evaluate"


def test_no_task_when_all_are_taken(coordinator: Coordinator) -> None:
    w1, w2, w3, w4 = (coordinator.register() for _ in range(4))
    coordinator.lease_id(w1)
    coordinator.lease_id(w2)
    coordinator.lease_id(w3)  # the evaluation
    response = coordinator.tasks.lease(w4)
    assert response.task is None
    assert response.retry_after_s > 0
    assert "no tasks" in response.reason


def test_worker_that_contributed_waits_before_taking_a_fresh_task_of_the_same_round(
    coordinator: Coordinator,
) -> None:
    w1 = coordinator.register()
    t0 = time.time()
    task_id = coordinator.lease_id(w1, now=t0)
    assert coordinator.submit(w1, task_id).accepted
    # It may measure version 0 meanwhile (see below); only the other train task is left.
    assert coordinator.submit_evaluation(w1, coordinator.lease_id(w1, now=t0)).accepted
    [other] = [t.id for t in _pending_tasks(coordinator)]
    assert coordinator.task(other).kind == "train"
    available_since = coordinator.task(other).available_since

    refused = coordinator.tasks.lease(w1, now=available_since + POLICY.solo_wait_s - 0.5)
    assert refused.task is None
    assert "waiting" in refused.reason
    assert coordinator.task(other).status == "pending"

    allowed = coordinator.tasks.lease(w1, now=available_since + POLICY.solo_wait_s)
    assert allowed.task is not None
    assert allowed.task.task_id == other


def test_worker_that_contributed_may_take_the_evaluation_at_once(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    t0 = time.time()
    assert coordinator.submit(w1, coordinator.lease_id(w1, now=t0)).accepted
    # The other train task waits for another worker, but the evaluation adds no update.
    response = coordinator.tasks.lease(w1, now=t0 + 0.1)
    assert response.task is not None and response.task.evaluate is not None
    assert coordinator.task(response.task.task_id).status == "leased"
    assert coordinator.submit_evaluation(w1, response.task.task_id).accepted
    assert coordinator.task(response.task.task_id).status == "accepted"


def test_worker_that_contributed_may_take_a_retried_task_at_once(
    coordinator: Coordinator,
) -> None:
    w1, w2 = coordinator.register(), coordinator.register()
    t0 = time.time()
    done = coordinator.lease_id(w1, now=t0)
    assert coordinator.submit(w1, done).accepted
    retried = coordinator.lease_id(w2, now=t0)
    coordinator.tasks.hand_back(
        w2, m.ReportFailureRequest(session=_session(w2), task_id=retried, kind=m.FailureKind.ERROR)
    )
    response = coordinator.tasks.lease(w1, now=t0 + 0.1)
    assert response.task is not None
    assert response.task.task_id == retried


def test_a_new_worker_takes_a_fresh_task_without_waiting(coordinator: Coordinator) -> None:
    w1, w2 = coordinator.register(), coordinator.register()
    t0 = time.time()
    assert coordinator.submit(w1, coordinator.lease_id(w1, now=t0)).accepted
    assert coordinator.tasks.lease(w2, now=t0).task is not None


# -- heartbeats and expiry -----------------------------------------------------------------


def test_heartbeat_extends_held_lease_and_revokes_others(coordinator: Coordinator) -> None:
    w1, w2 = coordinator.register(), coordinator.register()
    t0 = time.time()
    mine = coordinator.lease_id(w1, now=t0)
    theirs = coordinator.lease_id(w2, now=t0)
    extended, revoked = coordinator.tasks.heartbeat(w1, [mine, theirs, "task-unknown"], now=t0 + 4)
    assert extended == [mine]
    assert revoked == [theirs, "task-unknown"]
    assert coordinator.task(mine).lease_deadline == pytest.approx(t0 + 4 + POLICY.ttl_s)
    assert coordinator.leases(mine)[-1].deadline == pytest.approx(t0 + 4 + POLICY.ttl_s)
    # The other worker's lease is untouched.
    assert coordinator.task(theirs).lease_deadline == pytest.approx(t0 + POLICY.ttl_s)

    # Kept alive by the heartbeat, the lease survives its original deadline.
    assert coordinator.tasks.expire_leases(now=t0 + POLICY.ttl_s + 1) == 1
    assert coordinator.task(mine).status == "leased"
    assert coordinator.task(theirs).status == "pending"


def test_heartbeat_cannot_extend_a_lease_past_max_task_s(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    t0 = time.time()
    task_id = coordinator.lease_id(w1, now=t0)
    late = t0 + POLICY.max_task_s - 1
    assert coordinator.tasks.heartbeat(w1, [task_id], now=late) == ([task_id], [])
    assert coordinator.task(task_id).lease_deadline == pytest.approx(t0 + POLICY.max_task_s)


def test_expired_lease_returns_task_to_pending_with_one_more_attempt(
    coordinator: Coordinator,
) -> None:
    w1 = coordinator.register()
    t0 = time.time()
    task_id = coordinator.lease_id(w1, now=t0)
    assert coordinator.tasks.expire_leases(now=t0 + POLICY.ttl_s - 1) == 0
    assert coordinator.task(task_id).status == "leased"

    assert coordinator.tasks.expire_leases(now=t0 + POLICY.ttl_s + 1) == 1
    task = coordinator.task(task_id)
    assert task.status == "pending"
    assert task.attempts == 1
    assert task.worker_id is None
    assert task.lease_deadline is None
    assert task.available_since == pytest.approx(t0 + POLICY.ttl_s + 1)
    assert coordinator.leases(task_id)[-1].outcome == "expired"
    assert coordinator.worker(w1).tasks_failed == 1
    # Expiring again finds nothing, and the worker's heartbeat learns it lost the task.
    assert coordinator.tasks.expire_leases(now=t0 + POLICY.ttl_s + 2) == 0
    assert coordinator.tasks.heartbeat(w1, [task_id]) == ([], [task_id])


def test_expired_task_is_leased_again(coordinator: Coordinator) -> None:
    w1, w2 = coordinator.register(), coordinator.register()
    t0 = time.time()
    first = coordinator.lease_id(w1, now=t0)
    coordinator.lease_id(w2, now=t0)
    coordinator.tasks.expire_leases(now=t0 + POLICY.ttl_s + 1)
    w3 = coordinator.register()
    assert coordinator.lease_id(w3, now=t0 + POLICY.ttl_s + 2) == first
    assert coordinator.task(first).worker_id == w3


# -- hand back -----------------------------------------------------------------------------


def _session(worker_id: str) -> m.Session:
    return m.Session(worker_id=worker_id, token=b"")


def _pending_tasks(coordinator: Coordinator, index: int = 0) -> list[Task]:
    with coordinator.db.transaction() as session:
        return list(
            session.scalars(
                select(Task)
                .where(Task.job_id == coordinator.job.id, Task.round_index == index)
                .where(Task.status == "pending")
                .order_by(Task.index)
            )
        )


def test_hand_back_makes_task_pending_again(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    task_id = coordinator.lease_id(w1)
    coordinator.tasks.hand_back(
        w1,
        m.ReportFailureRequest(
            session=_session(w1), task_id=task_id, kind=m.FailureKind.HANDBACK, message="bye"
        ),
    )
    task = coordinator.task(task_id)
    assert task.status == "pending"
    assert task.attempts == 1
    assert task.worker_id is None
    assert coordinator.leases(task_id)[-1].outcome == "handed_back"
    # Handing back is polite, not a failure.
    assert coordinator.worker(w1).tasks_failed == 0


def test_hand_back_by_a_worker_not_holding_the_task_is_denied(coordinator: Coordinator) -> None:
    w1, w2 = coordinator.register(), coordinator.register()
    task_id = coordinator.lease_id(w1)
    with pytest.raises(PermissionDeniedError, match="not leased to you"):
        coordinator.tasks.hand_back(
            w2,
            m.ReportFailureRequest(
                session=_session(w2), task_id=task_id, kind=m.FailureKind.HANDBACK
            ),
        )
    assert coordinator.task(task_id).status == "leased"
    assert coordinator.task(task_id).worker_id == w1


def test_hand_back_of_an_unknown_task_is_not_found(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    with pytest.raises(NotFoundError):
        coordinator.tasks.hand_back(
            w1,
            m.ReportFailureRequest(
                session=_session(w1), task_id="task-nope", kind=m.FailureKind.ERROR
            ),
        )


# -- results -------------------------------------------------------------------------------


def test_first_result_is_accepted_and_a_duplicate_is_ignored(coordinator: Coordinator) -> None:
    calls = []
    coordinator.tasks = TaskService(
        coordinator.db,
        POLICY,
        coordinator.blobs,
        Ledger(),
        on_result_accepted=lambda: calls.append(1),
    )
    w1 = coordinator.register()
    task_id = coordinator.lease_id(w1)
    first = coordinator.submit(w1, task_id, tokens=64)
    assert first.accepted
    task = coordinator.task(task_id)
    assert task.status == "accepted"
    assert task.metrics is not None
    assert task.metrics["tokens"] == 64
    assert task.metrics["worker_id"] == w1
    assert task.result_sha256 is not None and coordinator.blobs.exists(task.result_sha256)
    assert coordinator.leases(task_id)[-1].outcome == "submitted"
    assert coordinator.worker(w1).tasks_accepted == 1
    assert calls == [1]

    duplicate = coordinator.submit(w1, task_id, tokens=64, fill=0.02)
    assert not duplicate.accepted
    assert "already" in duplicate.message
    again = coordinator.task(task_id)
    assert again.result_sha256 == task.result_sha256
    assert again.metrics == task.metrics
    assert coordinator.worker(w1).tasks_accepted == 1
    assert calls == [1]


def test_late_result_of_an_expired_lease_is_accepted_and_supersedes_new_holder(
    coordinator: Coordinator,
) -> None:
    w1, w2 = coordinator.register(), coordinator.register()
    t0 = time.time()
    task_id = coordinator.lease_id(w1, now=t0)
    coordinator.tasks.expire_leases(now=t0 + POLICY.ttl_s + 1)
    assert coordinator.lease_id(w2, now=t0 + POLICY.ttl_s + 2) == task_id

    late = coordinator.submit(w1, task_id)
    assert late.accepted
    task = coordinator.task(task_id)
    assert task.status == "accepted"
    assert task.worker_id == w1
    assert task.metrics is not None and task.metrics["worker_id"] == w1
    outcomes = {lease.worker_id: lease.outcome for lease in coordinator.leases(task_id)}
    assert outcomes == {w1: "submitted", w2: "superseded"}
    # The new holder learns at its next heartbeat, and its own result is ignored.
    assert coordinator.tasks.heartbeat(w2, [task_id]) == ([], [task_id])
    assert not coordinator.submit(w2, task_id).accepted
    # It is free to take other work.
    assert coordinator.tasks.lease(w2).task is not None


def test_late_result_of_an_expired_lease_before_anyone_else_takes_it(
    coordinator: Coordinator,
) -> None:
    w1 = coordinator.register()
    t0 = time.time()
    task_id = coordinator.lease_id(w1, now=t0)
    coordinator.tasks.expire_leases(now=t0 + POLICY.ttl_s + 1)
    assert coordinator.submit(w1, task_id).accepted
    assert coordinator.task(task_id).status == "accepted"
    # An accepted task is never leased again.
    w2 = coordinator.register()
    response = coordinator.tasks.lease(w2)
    assert response.task is None or response.task.task_id != task_id


def test_check_submission_describes_the_task(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    task_id = coordinator.lease_id(w1)
    header = coordinator.header(w1, task_id)
    submission = coordinator.tasks.check_submission(w1, header)
    assert submission.task_id == task_id
    assert submission.job_id == coordinator.job.id
    assert submission.policy.chain == "fp16"
    assert submission.param_shapes == {n: tuple(s) for n, s in coordinator.job.param_shapes.items()}
    assert header.payload_size <= submission.max_bytes
    assert submission.decided is None


def test_check_submission_says_when_a_result_will_be_ignored(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    task_id = coordinator.lease_id(w1)
    assert coordinator.submit(w1, task_id).accepted
    submission = coordinator.tasks.check_submission(w1, coordinator.header(w1, task_id))
    assert submission.decided is not None
    assert "already" in submission.decided


def test_check_submission_rejects_payload_over_the_limit(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    task_id = coordinator.lease_id(w1)
    limit = coordinator.tasks.check_submission(w1, coordinator.header(w1, task_id)).max_bytes
    header = coordinator.header(w1, task_id)
    oversized = m.ResultHeader(
        session=header.session,
        task_id=task_id,
        metrics=header.metrics,
        payload_sha256=header.payload_sha256,
        payload_size=limit + 1,
    )
    with pytest.raises(MessageTooLargeError, match=str(limit)):
        coordinator.tasks.check_submission(w1, oversized)


def test_check_submission_rejects_unknown_task(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    coordinator.lease_id(w1)
    with pytest.raises(NotFoundError):
        coordinator.tasks.check_submission(w1, coordinator.header(w1, "task-unknown"))


def test_check_submission_rejects_task_never_leased_to_the_worker(
    coordinator: Coordinator,
) -> None:
    w1, w2 = coordinator.register(), coordinator.register()
    task_id = coordinator.lease_id(w1)
    with pytest.raises(PermissionDeniedError, match="never leased"):
        coordinator.tasks.check_submission(w2, coordinator.header(w2, task_id))


def test_check_submission_rejects_implausible_token_counts(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    task_id = coordinator.lease_id(w1)
    with pytest.raises(ProtocolError, match="tokens"):
        coordinator.tasks.check_submission(w1, coordinator.header(w1, task_id, tokens=10**9))


def test_check_submission_rejects_a_result_claiming_no_tokens(coordinator: Coordinator) -> None:
    w1 = coordinator.register()
    task_id = coordinator.lease_id(w1)
    with pytest.raises(ProtocolError, match="tokens"):
        coordinator.tasks.check_submission(w1, coordinator.header(w1, task_id, tokens=0))


def _evaluation_id(coordinator: Coordinator) -> tuple[str, str]:
    """A worker holding round 0's evaluate task, and the task's id."""
    w1, w2, w3 = (coordinator.register() for _ in range(3))
    coordinator.lease_id(w1)
    coordinator.lease_id(w2)
    task_id = coordinator.lease_id(w3)
    assert coordinator.task(task_id).kind == "evaluate"
    return w3, task_id


def test_an_evaluation_result_is_metrics_only(coordinator: Coordinator) -> None:
    worker, task_id = _evaluation_id(coordinator)
    assert coordinator.submit_evaluation(worker, task_id, eval_loss=5.4).accepted
    task = coordinator.task(task_id)
    assert task.status == "accepted"
    assert task.metrics is not None
    assert (task.metrics["eval_loss"], task.metrics["examples"]) == (5.4, 8)


def test_check_submission_rejects_an_evaluation_with_a_payload(coordinator: Coordinator) -> None:
    worker, task_id = _evaluation_id(coordinator)
    with pytest.raises(MessageTooLargeError, match="limit of 0"):
        coordinator.tasks.check_submission(worker, coordinator.header(worker, task_id))


@pytest.mark.parametrize(
    ("metrics", "match"),
    [
        ({"eval_loss": 5.0, "examples": 8, "steps": 2}, "0 steps"),
        ({"eval_loss": 5.0, "examples": 0}, "examples"),
        ({"eval_loss": 5.0, "examples": SPEC.eval_examples + 1}, "examples"),
        ({"eval_loss": float("nan"), "examples": 8}, "finite"),
        # An infinite margin would poison every JSON answer that shows the job's metrics.
        ({"eval_loss": 0.7, "reward_margin": float("inf"), "examples": 8}, "finite"),
        ({"eval_loss": -1.0, "examples": 8}, "non-negative"),
        ({"eval_loss": 0.7, "reward_accuracy": 1.5, "examples": 8}, r"\[0, 1\]"),
        ({"eval_loss": 0.7, "token_accuracy": -0.1, "examples": 8}, r"\[0, 1\]"),
    ],
)
def test_check_submission_rejects_implausible_evaluations(
    coordinator: Coordinator, metrics: dict[str, float], match: str
) -> None:
    worker, task_id = _evaluation_id(coordinator)
    header = m.ResultHeader(
        session=_session(worker),
        task_id=task_id,
        metrics=m.TaskMetrics(**metrics),  # type: ignore[arg-type]
        payload_sha256=coordinator.blobs.put_bytes(b""),
        payload_size=0,
    )
    with pytest.raises(ProtocolError, match=match):
        coordinator.tasks.check_submission(worker, header)


def test_running_out_of_memory_gets_a_worker_only_smaller_jobs(coordinator: Coordinator) -> None:
    key = Ed25519PrivateKey.generate()
    w1, _ = coordinator.workers.register(signed_registration(key), "ipv4:127.0.0.1:1")
    w1 = w1.id
    task_id = coordinator.lease_id(w1)
    needs = coordinator.job.memory_bytes
    assert needs > 0 and coordinator.worker(w1).hardware["memory_bytes"] >= needs
    coordinator.tasks.hand_back(
        w1,
        m.ReportFailureRequest(
            session=_session(w1),
            task_id=task_id,
            kind=m.FailureKind.OUT_OF_MEMORY,
            message="CUDA out of memory",
        ),
    )
    assert coordinator.worker(w1).hardware["memory_bytes"] == needs - 1
    assert coordinator.task(task_id).status == "pending"  # someone else runs it
    # Registering again (a restart, perhaps with --max-memory-gb) reports its memory afresh.
    again, _ = coordinator.workers.register(signed_registration(key), "ipv4:127.0.0.1:2")
    assert again.id == w1 and coordinator.worker(w1).hardware["memory_bytes"] >= needs
