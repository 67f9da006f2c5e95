"""The scheduler on the real services and SQLite: the queue, placement, work sizing, lease
limits, rounds that close at their quorum, late results, checkpoints, job control and credits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from swarm.compression import encode_payload
from swarm.coordinator.server import Services
from swarm.coordinator.storage import Job, Lease, Round, Task, Worker
from swarm.coordinator.workers import WorkerRegistry
from swarm.models import state_from_bytes
from swarm.protocol import messages as m
from swarm.protocol.errors import ConfigError, SchedulingError
from swarm.scheduler import MICRO_PER_CREDIT, RESEARCH_POOL, JobSpec, user_account
from swarm.scheduler.work import LEASE_ALLOWANCE_S, LEASE_SLACK
from tests.conftest import MICRO_SPEC, signed_registration, start_job, wire_services

SPEC = replace(MICRO_SPEC, seq_len=32, batch_size=4, inner_steps=4, warmup_steps=1)


@dataclass
class Swarm:
    services: Services
    offset: float = 0.0

    @property
    def now(self) -> float:
        return time.time() + self.offset

    def register(self, name: str, *, memory_gb: float = 1.0, flops: float = 0.0) -> str:
        request = signed_registration(
            name=name,
            hardware=m.HardwareProfile(memory_bytes=int(memory_gb * 2**30), flops_per_s=flops),
        )
        return WorkerRegistry(self.services.db).register(request, "ipv4:127.0.0.1:1")[0].id

    def start(self, spec: JobSpec = SPEC, **create: Any) -> Job:
        return start_job(self.services, spec, **create)

    def create(self, spec: JobSpec = SPEC, **create: Any) -> Job:
        """Create and prepare a job; the scheduler decides when it starts."""
        job = self.services.jobs.create_job(spec, **create)
        assert self.services.jobs.prepare_next() == job.id
        return self.services.jobs.get_job(job.id)

    def job(self, job_id: str) -> Job:
        return self.services.jobs.get_job(job_id)

    def tick(self) -> None:
        """One housekeeping pass at the test's clock."""
        self.services.tasks.expire_leases(now=self.now)
        for round_id in self.services.rounds.rounds_ready(now=self.now):
            self.services.rounds.close_round(round_id)
        self.services.scheduler.admit_jobs(now=self.now)
        self.services.scheduler.place_workers(now=self.now)

    def lease(self, worker_id: str, cached: list[str] | None = None) -> m.Task | None:
        with self.services.db.transaction() as session:  # as the servicer does on every call
            session.get_one(Worker, worker_id).last_seen_at = self.now
        return self.services.tasks.lease(worker_id, cached or [], now=self.now).task

    def submit(self, worker_id: str, task: m.Task) -> m.SubmitResultResponse:
        tasks = self.services.tasks
        header = self.header(worker_id, task)
        submission = tasks.check_submission(worker_id, header)
        if submission.decided is not None:
            return m.SubmitResultResponse(accepted=False, message=submission.decided)
        return tasks.accept_result(worker_id, header, header.payload_sha256)

    def header(self, worker_id: str, task: m.Task) -> m.ResultHeader:
        session = m.Session(worker_id=worker_id, token=b"")
        blobs = self.services.blobs
        if task.evaluate is not None:
            return m.ResultHeader(
                session=session,
                task_id=task.task_id,
                metrics=m.TaskMetrics(eval_loss=5.0, examples=4, compute_s=0.1),
                payload_sha256=blobs.put_bytes(b""),
                payload_size=0,
            )
        assert task.train is not None
        job = self.job(task.job_id)
        payload = encode_payload(
            {n: torch.full(tuple(s), 0.01) for n, s in job.param_shapes.items()},
            JobSpec(**job.spec).update_policy(),
        )
        return m.ResultHeader(
            session=session,
            task_id=task.task_id,
            metrics=m.TaskMetrics(
                loss_first=5.5,
                loss_last=5.0,
                loss_mean=5.2,
                tokens=len(task.train.sample_indices) * JobSpec(**job.spec).seq_len,
                compute_s=0.5,
                steps=task.train.inner_steps,
            ),
            payload_sha256=blobs.put_bytes(payload),
            payload_size=len(payload),
        )

    def run(self, worker_id: str) -> m.Task | None:
        """Lease one task and finish it at once."""
        task = self.lease(worker_id)
        if task is not None:
            assert self.submit(worker_id, task).accepted
        return task

    def rounds(self, job_id: str) -> list[Round]:
        return self.services.jobs.list_rounds(job_id)

    def finish_job(self, job_id: str, workers: list[str], max_steps: int = 200) -> Job:
        for _ in range(max_steps):
            for worker in workers:
                self.run(worker)
            self.tick()
            if self.job(job_id).status in ("succeeded", "failed", "cancelled"):
                return self.job(job_id)
        raise AssertionError(f"job {job_id} is still {self.job(job_id).status}")

    def balance(self, account: str) -> int:
        with self.services.db.transaction() as session:
            return self.services.ledger.balance(session, account)


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    services = wire_services(tmp_path, lease_ttl_s=10.0, max_task_s=600.0, solo_wait_s=5.0)
    try:
        yield Swarm(services)
    finally:
        services.db.dispose()


# -- the queue -------------------------------------------------------------------------------


def test_a_job_waits_in_the_queue_until_the_workers_can_take_it(swarm: Swarm) -> None:
    workers = [swarm.register(f"w{i}") for i in range(2)]
    first = swarm.start()
    second = swarm.create(replace(SPEC, seed=1))
    swarm.tick()
    assert swarm.job(second.id).status == "queued"
    [entry] = swarm.services.scheduler.queue(now=swarm.now)
    assert (entry.job_id, entry.position) == (second.id, 1)
    assert entry.reason == "waiting for workers: 2 needed, 0 free of 2 online"
    swarm.finish_job(first.id, workers)
    swarm.tick()
    assert swarm.job(second.id).status == "running"
    assert swarm.services.scheduler.queue(now=swarm.now) == []


def test_the_queue_serves_priority_then_the_richer_owner_then_age(swarm: Swarm) -> None:
    swarm.register("w0")
    running = swarm.start()  # holds the only worker, so everything else queues
    old = swarm.create(replace(SPEC, seed=1), owner="user:poor")
    rich = swarm.create(replace(SPEC, seed=2), owner="user:rich")
    urgent = swarm.create(replace(SPEC, seed=3, priority=5), owner="user:poor")
    with swarm.services.db.transaction() as session:
        swarm.services.ledger.issue(session, "user:rich", 10 * MICRO_PER_CREDIT)
    order = [e.job_id for e in swarm.services.scheduler.queue(now=swarm.now)]
    assert order == [urgent.id, rich.id, old.id]
    assert running.status == "running"


def test_with_credits_required_a_job_waits_for_its_owner_to_afford_it(tmp_path: Path) -> None:
    services = wire_services(tmp_path, require_credits=True)
    swarm = Swarm(services)
    try:
        swarm.register("w0")
        swarm.register("w1")
        job = swarm.create(owner="user:alice")
        swarm.tick()
        assert swarm.job(job.id).status == "queued"
        [entry] = services.scheduler.queue(now=swarm.now)
        assert entry.reason.startswith("waiting for credits")
        with services.db.transaction() as session:
            services.ledger.issue(session, "user:alice", job.estimated_credits)
        swarm.tick()
        assert swarm.job(job.id).status == "running"
    finally:
        services.db.dispose()


def test_a_research_job_runs_only_on_an_idle_swarm_and_yields_its_workers(swarm: Swarm) -> None:
    workers = [swarm.register(f"w{i}") for i in range(2)]
    research = swarm.start(owner=RESEARCH_POOL)
    swarm.tick()
    assert {swarm.worker(w).assigned_job_id for w in workers} == {research.id}
    paid = swarm.create(replace(SPEC, seed=1))
    swarm.tick()
    # The paying job starts although the research job holds both workers, and takes them.
    assert swarm.job(paid.id).status == "running"
    assert {swarm.worker(w).assigned_job_id for w in workers} == {paid.id}


# -- placement and leasing -------------------------------------------------------------------


def worker_row(swarm: Swarm, worker_id: str) -> Worker:
    with swarm.services.db.transaction() as session:
        return session.get_one(Worker, worker_id)


Swarm.worker = worker_row  # type: ignore[attr-defined]


def test_workers_are_spread_over_running_jobs_and_lease_their_own_jobs_tasks(
    swarm: Swarm,
) -> None:
    workers = [swarm.register(f"w{i}") for i in range(4)]
    first = swarm.start()
    second = swarm.start(replace(SPEC, seed=1))
    swarm.tick()
    placed = {w: swarm.worker(w).assigned_job_id for w in workers}
    assert sorted(placed.values()) == sorted([first.id, first.id, second.id, second.id])
    for worker in workers:
        task = swarm.lease(worker)
        assert task is not None and task.job_id == placed[worker]


def test_a_worker_never_gets_a_task_that_does_not_fit_its_memory(swarm: Swarm) -> None:
    small = swarm.register("small", memory_gb=0.001)
    big = swarm.register("big")
    job = swarm.start(replace(SPEC, min_clients=1))
    assert swarm.job(job.id).memory_bytes > 2**20  # micro-llama's estimate is over a megabyte
    swarm.tick()
    assert swarm.worker(small).assigned_job_id is None
    assert swarm.worker(big).assigned_job_id == job.id
    assert swarm.lease(small) is None
    swarm.offset += 60.0  # long past any wait for the job's own workers
    assert swarm.lease(small) is None
    assert swarm.lease(big) is not None


def test_placement_prefers_the_worker_that_already_holds_the_jobs_blobs(swarm: Swarm) -> None:
    job = swarm.create()
    holder = swarm.register("holder")
    stranger = swarm.register("stranger")
    # Both report what they hold; only the holder has the job's shards.
    assert swarm.lease(holder, cached=list(job.shard_sha256s)) is None  # not started yet
    assert swarm.lease(stranger, cached=["0" * 64]) is None
    narrow = replace(SPEC, max_clients=1, min_clients=1)
    with swarm.services.db.transaction() as session:
        session.get_one(Job, job.id).spec = narrow.to_dict()
    swarm.tick()
    assert swarm.worker(holder).assigned_job_id == job.id
    assert swarm.worker(stranger).assigned_job_id is None


# tiny-llama: a round of the median worker's task takes seconds, so the few milliseconds between
# two leases in a test do not shorten the second task.
SIZED = replace(SPEC, model="tiny-llama", inner_steps=8, warmup_steps=1, num_shards=2)


def measured(swarm: Swarm, speeds: dict[str, float]) -> None:
    """Give workers a measured training speed, as their accepted tasks would."""
    with swarm.services.db.transaction() as session:
        for worker_id, speed in speeds.items():
            session.get_one(Worker, worker_id).flops_per_s = speed


def test_a_faster_worker_gets_proportionally_more_inner_steps(swarm: Swarm) -> None:
    spec = SIZED
    slow = swarm.register("slow")
    fast = swarm.register("fast")
    swarm.start(spec)
    swarm.tick()
    measured(swarm, {slow: 1e9, fast: 3e9})
    slow_task, fast_task = swarm.lease(slow), swarm.lease(fast)
    assert slow_task is not None and slow_task.train is not None
    assert fast_task is not None and fast_task.train is not None
    # The median worker (2e9 FLOP/s here) trains inner_steps; the others in proportion.
    # (A worker not measured yet trains inner_steps: join benchmarks are only a guess.)
    assert (slow_task.train.inner_steps, fast_task.train.inner_steps) == (4, 12)
    assert len(slow_task.train.sample_indices) == 4 * spec.batch_size
    assert len(fast_task.train.sample_indices) == 12 * spec.batch_size


def test_a_worker_that_starts_late_in_the_round_gets_the_share_left(swarm: Swarm) -> None:
    early = swarm.register("early", flops=2e9)
    late = swarm.register("late", flops=2e9)
    job = swarm.start(replace(SIZED, num_rounds=2, work_sizing="adaptive"))
    swarm.tick()
    for worker in (early, late, early):  # round 0: two train tasks and the evaluation
        swarm.run(worker)
    with swarm.services.db.transaction() as session:
        round_0 = session.scalars(select(Round).where(Round.job_id == job.id)).one()
        round_0.opened_at -= 100.0  # round 0 took about 100 s
    swarm.tick()
    with swarm.services.db.transaction() as session:
        # Both measured the same speed in round 0; round 1 opens now.
        round_1 = session.scalars(
            select(Round).where(Round.job_id == job.id, Round.index == 1)
        ).one()
        round_1.opened_at = swarm.now
    first = swarm.lease(early)
    assert first is not None and first.train is not None
    assert first.train.inner_steps == 8
    swarm.offset += 60.0  # the late worker arrives when 40% of a round is left
    second = swarm.lease(late)
    assert second is not None and second.train is not None
    assert second.train.inner_steps == 3  # 40% of 8, rounded


def test_with_fixed_sizing_every_task_trains_inner_steps(swarm: Swarm) -> None:
    spec = replace(SIZED, work_sizing="fixed")
    slow = swarm.register("slow")
    fast = swarm.register("fast")
    swarm.start(spec)
    swarm.tick()
    measured(swarm, {slow: 1e9, fast: 3e9})
    tasks = [swarm.lease(slow), swarm.lease(fast)]
    assert [t.train.inner_steps for t in tasks if t and t.train] == [8, 8]


def test_a_lease_lasts_a_few_times_what_the_task_should_take_the_worker(swarm: Swarm) -> None:
    known = swarm.register("known", flops=1e9)
    unknown = swarm.register("unknown")
    job = swarm.start()
    swarm.tick()
    # Download rates are measured on real transfers; give both one so the limit is known.
    with swarm.services.db.transaction() as session:
        for worker_id in (known, unknown):
            session.get_one(Worker, worker_id).download_bytes_per_s = 1e9
    for worker_id in (known, unknown):
        assert swarm.lease(worker_id) is not None
    with swarm.services.db.transaction() as session:
        leases = {
            lease.worker_id: lease.expires_by - lease.leased_at
            for lease in session.scalars(select(Lease).where(Lease.outcome == "active"))
        }
    assert leases[unknown] == pytest.approx(600.0)  # no measured speed: max_task_s
    assert LEASE_ALLOWANCE_S < leases[known] < LEASE_ALLOWANCE_S + LEASE_SLACK * 10
    assert job.tokens_per_sample == SPEC.seq_len


# -- rounds, quorum and late results ---------------------------------------------------------


def three_worker_round(swarm: Swarm, spec: JobSpec) -> tuple[Job, list[str], m.Task]:
    """Three workers start round 0 (opened 40 s ago, so its grace after the quorum is 10 s);
    two finish with the evaluation, the third holds on."""
    workers = [swarm.register(f"w{i}") for i in range(3)]
    job = swarm.start(spec)
    swarm.tick()
    with swarm.services.db.transaction() as session:
        round_0 = session.scalars(select(Round).where(Round.job_id == job.id)).one()
        round_0.opened_at -= 40.0
    held = [swarm.lease(w) for w in workers]
    assert all(t is not None and t.train is not None for t in held)
    for worker, task in zip(workers[:2], held[:2], strict=True):
        assert task is not None
        assert swarm.submit(worker, task).accepted
    evaluation = swarm.lease(workers[0])
    assert evaluation is not None and evaluation.evaluate is not None
    assert swarm.submit(workers[0], evaluation).accepted
    straggler = held[2]
    assert straggler is not None
    return job, workers, straggler


QUORUM = replace(SPEC, min_clients=3, round_quorum=0.5, round_timeout_s=3600.0, round_grace=0.25)


def wait_out_the_grace(swarm: Swarm, worker: str, task: m.Task) -> None:
    """Let 12 s pass while the straggler keeps its lease alive with heartbeats."""
    for _ in range(3):
        swarm.offset += 4.0
        swarm.services.tasks.heartbeat(worker, [task.task_id], now=swarm.now)
        swarm.tick()


def test_a_round_closes_without_a_straggler_a_grace_after_its_quorum(swarm: Swarm) -> None:
    job, workers, straggler = three_worker_round(swarm, QUORUM)
    swarm.tick()
    assert [r.status for r in swarm.rounds(job.id)] == ["open"]  # the grace has not passed
    wait_out_the_grace(swarm, workers[2], straggler)
    round_0, round_1 = swarm.rounds(job.id)
    assert round_0.status == "closed" and round_1.status == "open"
    assert round_0.tokens == 2 * 4 * 4 * 32  # the two results that made it
    assert swarm.services.tasks.heartbeat(workers[2], [straggler.task_id], now=swarm.now) == (
        [straggler.task_id],
        [],
    )  # stale mode: the straggler keeps its lease


def test_a_late_result_is_applied_in_the_next_round_weighted_by_its_staleness(
    swarm: Swarm,
) -> None:
    job, workers, straggler = three_worker_round(swarm, QUORUM)
    wait_out_the_grace(swarm, workers[2], straggler)
    assert swarm.rounds(job.id)[0].status == "closed"
    assert swarm.submit(workers[2], straggler).accepted  # after its round closed
    assert not swarm.submit(workers[2], straggler).accepted  # a duplicate is ignored
    for worker in workers:
        swarm.run(worker)
    swarm.run(workers[0])  # round 1's evaluation
    swarm.tick()
    _round_0, round_1, _ = swarm.rounds(job.id)
    assert round_1.num_late == 1
    with swarm.services.db.transaction() as session:
        late = session.get_one(Task, straggler.task_id)
        assert (late.round_index, late.applied_round) == (0, 1)


def test_with_late_updates_dropped_the_straggler_is_revoked_and_its_data_reused(
    swarm: Swarm,
) -> None:
    _job, workers, straggler = three_worker_round(swarm, replace(QUORUM, late_updates="drop"))
    wait_out_the_grace(swarm, workers[2], straggler)
    extended, revoked = swarm.services.tasks.heartbeat(
        workers[2], [straggler.task_id], now=swarm.now
    )
    assert (extended, revoked) == ([], [straggler.task_id])
    response = swarm.submit(workers[2], straggler)
    assert not response.accepted and "cancelled" in response.message
    # The straggler's samples go first to the next task cut from its shard.
    assert straggler.train is not None
    dropped = straggler.train.sample_indices
    next_tasks = [swarm.lease(w) for w in workers]
    reused = [
        t
        for t in next_tasks
        if t and t.train and t.train.sample_indices == dropped[: len(t.train.sample_indices)]
    ]
    assert reused, "the dropped span was not handed out again"


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoints_are_kept_every_n_rounds_and_a_job_can_start_from_one(swarm: Swarm) -> None:
    workers = [swarm.register(f"w{i}") for i in range(2)]
    job = swarm.start(replace(SPEC, num_rounds=4, checkpoint_every=2))
    done = swarm.finish_job(job.id, workers)
    assert done.status == "succeeded"
    checkpoints, has_more = swarm.services.jobs.list_checkpoints(job.id)
    assert [c.version for c in checkpoints] == [4, 2]  # newest first; the last always kept
    assert not has_more
    assert all(c.metrics["step"] == c.version and "valid_loss" in c.metrics for c in checkpoints)
    assert "train_loss" in checkpoints[0].metrics
    # A new job from the version-2 checkpoint: its model is that version's weights.
    chosen = checkpoints[1]
    resumed = swarm.start(replace(SPEC, model=chosen.id, seed=5))
    assert resumed.model == chosen.id
    merged = swarm.services.catalog.resolve(chosen.id, seed=0, chat=False).model.state_dict()
    version_2 = state_from_bytes(swarm.services.blobs.read(chosen.params_sha256))
    for name, tensor in version_2.items():
        torch.testing.assert_close(merged[name], tensor)


def test_an_unknown_checkpoint_is_refused_at_creation(swarm: Swarm) -> None:
    with pytest.raises(ConfigError, match="unknown model 'ftckpt-nope-1'"):
        swarm.services.jobs.create_job(replace(SPEC, model="ftckpt-nope-1"))


# -- pause, resume, cancel -------------------------------------------------------------------


def test_pausing_revokes_running_tasks_and_resuming_hands_them_out_again(swarm: Swarm) -> None:
    worker = swarm.register("w0")
    job = swarm.start()
    task = swarm.lease(worker)
    assert task is not None and task.train is not None
    paused = swarm.services.jobs.pause(job.id)
    assert paused.status == "paused"
    assert swarm.services.tasks.heartbeat(worker, [task.task_id], now=swarm.now)[1] == [
        task.task_id
    ]
    assert swarm.lease(worker) is None
    assert not swarm.submit(worker, task).accepted  # a result for a paused job is ignored
    with pytest.raises(SchedulingError, match="a paused job cannot become paused"):
        swarm.services.jobs.pause(job.id)
    assert swarm.services.jobs.resume(job.id).status == "running"
    again = swarm.lease(worker)
    assert again is not None and again.train is not None
    # The same task, with the same samples: nothing was consumed while paused.
    assert (again.task_id, again.train.sample_indices) == (task.task_id, task.train.sample_indices)


def test_a_queued_job_resumes_into_the_queue(swarm: Swarm) -> None:
    swarm.register("w0")
    swarm.start()
    queued = swarm.create(replace(SPEC, seed=1))
    assert swarm.services.jobs.pause(queued.id).status == "paused"
    assert swarm.services.jobs.resume(queued.id).status == "queued"


def test_cancelling_stops_every_task_and_pays_for_accepted_work(swarm: Swarm) -> None:
    workers = [swarm.register(f"w{i}") for i in range(2)]
    job = swarm.start(owner="user:alice")
    swarm.run(workers[0])
    held = swarm.lease(workers[1])
    assert held is not None
    cancelled = swarm.services.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with swarm.services.db.transaction() as session:
        statuses = {t.status for t in session.scalars(select(Task).where(Task.job_id == job.id))}
        accepted = list(
            session.scalars(select(Task).where(Task.job_id == job.id, Task.status == "accepted"))
        )
    assert statuses == {"accepted", "cancelled"}
    assert not swarm.submit(workers[1], held).accepted
    paid = sum(t.credits or 0 for t in accepted)
    assert paid > 0
    assert swarm.balance(f"worker:{workers[0]}") == paid
    assert swarm.balance("user:alice") == -paid
    with pytest.raises(SchedulingError):
        swarm.services.jobs.resume(job.id)


# -- credits ----------------------------------------------------------------------------------


def test_a_finished_job_pays_its_workers_once_and_the_ledger_balances(swarm: Swarm) -> None:
    workers = [swarm.register(f"w{i}") for i in range(2)]
    job = swarm.start(owner=user_account("bob"))
    done = swarm.finish_job(job.id, workers)
    with swarm.services.db.transaction() as session:
        tasks = list(
            session.scalars(select(Task).where(Task.job_id == job.id, Task.status == "accepted"))
        )
        totals = swarm.services.ledger.totals(session)
        spending = swarm.services.ledger.job_spending(session, job.id)
    total = sum(t.credits or 0 for t in tasks)
    earned = {
        w: sum(t.credits or 0 for t in tasks if (t.metrics or {}).get("worker_id") == w)
        for w in workers
    }
    assert done.status == "succeeded"
    assert all(swarm.balance(f"worker:{w}") == earned[w] for w in workers)
    assert all(swarm.balance(f"pending:worker:{w}") == 0 for w in workers)
    share = swarm.services.ledger.share
    assert swarm.balance(RESEARCH_POOL) == sum(share.of(t.credits or 0) for t in tasks)
    assert swarm.balance("user:bob") == -total
    assert totals.balanced and totals.minted == total
    assert spending == {"consumed": total, "pending": 0}


def test_the_estimate_made_before_a_job_starts_is_close_to_what_it_costs(swarm: Swarm) -> None:
    workers = [swarm.register(f"w{i}") for i in range(2)]
    spec = replace(SPEC, model="tiny-llama", seq_len=128, batch_size=8, inner_steps=4)
    job = swarm.start(spec)
    swarm.finish_job(job.id, workers)
    with swarm.services.db.transaction() as session:
        cost = swarm.services.ledger.job_spending(session, job.id)["consumed"]
    assert job.estimated_credits > 50  # enough micro-credits that rounding does not matter
    # The estimate assumes full-size tasks; adaptive sizing may cut some short.
    assert 0.6 < cost / job.estimated_credits < 1.25


def test_a_restarted_coordinator_gives_running_leases_time_to_report(swarm: Swarm) -> None:
    worker = swarm.register("w0")
    swarm.start()
    task = swarm.lease(worker)
    assert task is not None
    swarm.offset += 9.0  # the coordinator was down for almost a whole ttl
    assert swarm.services.tasks.forgive_leases(now=swarm.now) == 1
    swarm.offset += 9.0
    assert swarm.services.tasks.expire_leases(now=swarm.now) == 0
    assert swarm.submit(worker, task).accepted


def test_a_job_too_big_for_every_online_worker_waits_and_says_why(swarm: Swarm) -> None:
    swarm.register("small", memory_gb=0.001)
    job = swarm.create()
    swarm.tick()
    assert swarm.job(job.id).status == "queued"
    [entry] = swarm.services.scheduler.queue(now=swarm.now)
    assert entry.reason.startswith("waiting for a worker with ")
    swarm.register("big", memory_gb=8.0)
    swarm.tick()
    assert swarm.job(job.id).status == "running"
