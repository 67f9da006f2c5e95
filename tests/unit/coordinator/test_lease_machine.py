"""The lease state machine under random churn, on the real services and a real SQLite database.

Hypothesis drives workers that lease, finish, hand back, vanish (their leases expire) and send
late or duplicate results, while the clock jumps and rounds close at their quorum and deadline.
After every step: no task or worker holds two leases, no result counts twice, the data spans
never overlap and the ledger balances. At the end the job runs to success, and every epoch of
every shard it finished was consumed exactly once.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import func, select

from swarm.compression import encode_payload
from swarm.coordinator import spans
from swarm.coordinator.server import Services
from swarm.coordinator.storage import DataSpan, Job, Lease, LedgerTransaction, Task, Worker
from swarm.coordinator.workers import WorkerRegistry
from swarm.protocol import messages as m
from swarm.protocol.errors import PermissionDeniedError, SwarmError
from swarm.scheduler import JobSpec, covers_exactly
from tests.conftest import MICRO_SPEC, signed_registration, wire_services

SPEC = replace(
    MICRO_SPEC,
    seq_len=64,
    batch_size=8,
    inner_steps=16,  # about 17 train tasks for two epochs of the corpus
    num_epochs=2,
    num_rounds=1,
    num_shards=2,
    min_clients=2,
    max_clients=3,
    round_timeout_s=30.0,
    round_quorum=0.5,
)
SETTINGS = {"lease_ttl_s": 10.0, "max_task_s": 120.0, "solo_wait_s": 5.0}
NUM_WORKERS = 3


@functools.cache
def template(late_updates: str) -> tuple[Path, str]:
    """A database with the job queued and started, built once per mode and copied per run."""
    root = Path(tempfile.mkdtemp(prefix="lease-machine-"))
    services = wire_services(root, **SETTINGS)
    job = services.jobs.create_job(replace(SPEC, late_updates=late_updates))
    assert services.jobs.prepare_next() == job.id
    services.scheduler.admit_jobs()
    services.db.dispose()
    return root, job.id


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="lease-run-"))
        self.offset = 0.0
        self.services: Services | None = None
        self.workers: list[str] = []
        self.held: dict[str, m.Task] = {}
        self.done: dict[str, list[m.Task]] = {}
        """Tasks each worker finished or lost, to send again later (late and duplicate)."""

    @initialize(late_updates=st.sampled_from(["stale", "drop"]))
    def start(self, late_updates: str) -> None:
        source, self.job_id = template(late_updates)
        shutil.copytree(source, self.root, dirs_exist_ok=True)
        self.services = wire_services(self.root, **SETTINGS)
        registry = WorkerRegistry(self.services.db)
        for i in range(NUM_WORKERS):
            worker, _ = registry.register(
                signed_registration(
                    name=f"w{i}",
                    hardware=m.HardwareProfile(memory_bytes=1 << 30, flops_per_s=1e9 * (i + 1)),
                ),
                "ipv4:127.0.0.1:1",
            )
            self.workers.append(worker.id)
            self.done[worker.id] = []

    def teardown(self) -> None:
        if self.services is not None:
            self.services.db.dispose()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def now(self) -> float:
        return time.time() + self.offset

    @property
    def s(self) -> Services:
        assert self.services is not None
        return self.services

    # -- what workers do -------------------------------------------------------------------

    @rule(worker=st.integers(0, NUM_WORKERS - 1))
    def lease(self, worker: int) -> None:
        worker_id = self.workers[worker]
        response = self.s.tasks.lease(worker_id, now=self.now)
        if response.task is not None:
            held = self.held.get(worker_id)
            if held is not None and held.task_id != response.task.task_id:
                self.done[worker_id].append(held)  # its lease expired or was revoked
            self.held[worker_id] = response.task

    @rule(worker=st.integers(0, NUM_WORKERS - 1))
    def finish(self, worker: int) -> None:
        worker_id = self.workers[worker]
        task = self.held.pop(worker_id, None)
        if task is not None:
            self.submit(worker_id, task)
            self.done[worker_id].append(task)

    @rule(worker=st.integers(0, NUM_WORKERS - 1))
    def hand_back(self, worker: int) -> None:
        worker_id = self.workers[worker]
        task = self.held.pop(worker_id, None)
        if task is not None:
            # Revoked meanwhile (its round closed), there is nothing to hand back.
            with contextlib.suppress(PermissionDeniedError):
                self.s.tasks.hand_back(
                    worker_id,
                    m.ReportFailureRequest(
                        session=m.Session(worker_id=worker_id, token=b""),
                        task_id=task.task_id,
                        kind=m.FailureKind.HANDBACK,
                        message="stopping",
                    ),
                )

    @rule(worker=st.integers(0, NUM_WORKERS - 1))
    def vanish(self, worker: int) -> None:
        """The worker dies holding its task: only the lease's expiry frees it."""
        worker_id = self.workers[worker]
        task = self.held.pop(worker_id, None)
        if task is not None:
            self.done[worker_id].append(task)

    @precondition(lambda self: any(self.done.values()))
    @rule(worker=st.integers(0, NUM_WORKERS - 1), data=st.data())
    def resend(self, worker: int, data: st.DataObject) -> None:
        """A late or duplicate result: acknowledged, never counted twice."""
        worker_id = self.workers[worker]
        if self.done[worker_id]:
            self.submit(worker_id, data.draw(st.sampled_from(self.done[worker_id])))

    # -- what time and the coordinator do --------------------------------------------------

    @rule(seconds=st.sampled_from([1.0, 6.0, 11.0, 40.0]))
    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self.s.tasks.expire_leases(now=self.now)

    @rule()
    def close_rounds(self) -> None:
        for round_id in self.s.rounds.rounds_ready(now=self.now):
            self.s.rounds.close_round(round_id)

    def submit(self, worker_id: str, task: m.Task) -> None:
        header = self.header(worker_id, task)
        try:
            decided = self.s.tasks.check_submission(worker_id, header).decided
        except SwarmError:  # a clean refusal of a task that is no longer this worker's
            return
        response = self.s.tasks.accept_result(worker_id, header, header.payload_sha256)
        assert decided is None or not response.accepted

    def header(self, worker_id: str, task: m.Task) -> m.ResultHeader:
        session = m.Session(worker_id=worker_id, token=b"")
        if task.evaluate is not None:
            empty = self.s.blobs.put_bytes(b"")
            metrics = m.TaskMetrics(eval_loss=5.0, examples=4, compute_s=0.1)
            return m.ResultHeader(
                session=session,
                task_id=task.task_id,
                metrics=metrics,
                payload_sha256=empty,
                payload_size=0,
            )
        assert task.train is not None
        with self.s.db.transaction() as db:
            shapes = db.get_one(Job, self.job_id).param_shapes
        payload = encode_payload(
            {n: torch.full(tuple(s), 0.01) for n, s in shapes.items()},
            JobSpec(**{**SPEC.to_dict()}).update_policy(),
        )
        samples = len(task.train.sample_indices)
        return m.ResultHeader(
            session=session,
            task_id=task.task_id,
            metrics=m.TaskMetrics(
                loss_first=5.5,
                loss_last=5.0,
                loss_mean=5.2,
                tokens=samples * SPEC.seq_len,
                compute_s=0.1,
                steps=task.train.inner_steps,
            ),
            payload_sha256=self.s.blobs.put_bytes(payload),
            payload_size=len(payload),
        )

    # -- what must always hold -------------------------------------------------------------

    @invariant()
    def one_lease_per_task_and_per_worker(self) -> None:
        if self.services is None:
            return
        with self.s.db.transaction() as db:
            active = db.execute(
                select(Lease.task_id, Lease.worker_id).where(Lease.outcome == "active")
            ).all()
        assert max(Counter(t for t, _ in active).values(), default=0) <= 1
        assert max(Counter(w for _, w in active).values(), default=0) <= 1

    @invariant()
    def each_result_counts_once(self) -> None:
        if self.services is None:
            return
        with self.s.db.transaction() as db:
            accrued = db.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(LedgerTransaction.kind == "accrue")
            )
            accepted = db.scalar(
                select(func.count()).select_from(Task).where(Task.status == "accepted")
            )
            credited = db.scalar(select(func.sum(Worker.tasks_accepted)))
            submitted = db.execute(
                select(Lease.task_id, func.count())
                .where(Lease.outcome == "submitted")
                .group_by(Lease.task_id)
            ).all()
        assert accrued == accepted == (credited or 0) == len(submitted)
        assert all(count == 1 for _, count in submitted)

    @invariant()
    def spans_never_overlap(self) -> None:
        if self.services is None:
            return
        with self.s.db.transaction() as db:
            rows = list(db.scalars(select(DataSpan).where(DataSpan.job_id == self.job_id)))
            statuses = dict(db.execute(select(Task.id, Task.status)).all())
        taken: set[tuple[int, int, int]] = set()
        for row in rows:
            for position in range(row.start, row.stop):
                key = (row.shard, row.epoch, position)
                assert key not in taken, key
                taken.add(key)
            if row.state == "consumed":
                assert statuses[row.task_id] == "accepted"
            elif row.state == "assigned":
                assert statuses[row.task_id] in ("pending", "leased"), (row.task_id, statuses)
            else:
                assert row.task_id is None

    @invariant()
    def the_ledger_balances(self) -> None:
        if self.services is None:
            return
        with self.s.db.transaction() as db:
            totals = self.s.ledger.totals(db)
            assert totals.balanced, totals
            assert self.s.ledger.check_balances(db) == []


LeaseMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_lease_machine = LeaseMachine.TestCase


def test_a_churned_job_still_consumes_each_epoch_exactly_once(tmp_path: Path) -> None:
    """A deterministic run of the machine's moves to the end of the job."""
    machine = LeaseMachine()
    try:
        machine.start("stale")
        for step in range(400):
            worker = step % NUM_WORKERS
            move = (step * 7) % 5
            if move == 0:
                machine.vanish(worker)
            elif move == 1:
                machine.hand_back(worker)
            else:
                machine.finish(worker)
            machine.lease(worker)
            machine.advance(11.0 if step % 3 == 0 else 1.0)
            machine.close_rounds()
            machine.spans_never_overlap()
            machine.the_ledger_balances()
            if machine.s.jobs.get_job(machine.job_id).status == "succeeded":
                break
        job = machine.s.jobs.get_job(machine.job_id)
        assert job.status == "succeeded", job.status
        with machine.s.db.transaction() as db:
            consumed = spans.consumed_spans(db, machine.job_id)
            sizes = list(db.get_one(Job, machine.job_id).shard_samples or [])
        for epoch in range(SPEC.num_epochs):
            assert covers_exactly(consumed, sizes, epoch), epoch
        with machine.s.db.transaction() as db:
            totals = machine.s.ledger.totals(db)
            granted = db.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(LedgerTransaction.kind == "grant")
            )
            accepted = db.scalar(
                select(func.count()).select_from(Task).where(Task.status == "accepted")
            )
        assert totals.balanced and totals.minted > 0
        assert granted == accepted  # every accepted result was paid once the job ended
    finally:
        machine.teardown()
