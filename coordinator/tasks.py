"""Leasing tasks, keeping leases alive, and accepting, handing back or expiring them.

Invariants, each enforced inside one transaction:
- a task has at most one active lease, and a worker at most one;
- a result is accepted at most once per task, and only while its round is open, or, for a
  train task the round kept running past its close (`late_updates=stale`), while that task is
  still leased; any other late or duplicate result is acknowledged and ignored;
- a task whose lease expires or is handed back becomes pending again at once, with the same
  data span; if its round has closed, it is cancelled and its span returns to the free list;
- a train task's data span is cut at its first lease, sized for the worker that took it, and
  consumed when its result is accepted (see `swarm.coordinator.spans`);
- accepting a result accrues its credit in the same transaction (see `swarm.coordinator.ledger`).

A lease lives `ttl_s` past each heartbeat, but never longer than its limit: several times the
time the task should take this worker, from its measured training speed and download rate.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from swarm.compression import CompressionPolicy, payload_size_bound
from swarm.coordinator import spans
from swarm.coordinator.blobs import BlobStore, check_sha256
from swarm.coordinator.ledger import Ledger
from swarm.coordinator.storage import Database, Job, Lease, Round, Task, Worker
from swarm.coordinator.storage import online as is_online
from swarm.protocol import messages as m
from swarm.protocol.errors import (
    MessageTooLargeError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    SchedulingError,
)
from swarm.scheduler import (
    JobSpec,
    JobStatus,
    LeaseOutcome,
    LeasePolicy,
    RoundStatus,
    TaskStatus,
    max_tokens_per_task,
    micro_credits,
    worker_account,
)
from swarm.scheduler.work import (
    effective_flops_per_s,
    expected_task_s,
    inner_steps_for,
    lease_limit_s,
    reference_speed,
    round_time_left,
    task_flops,
    update_ema,
)

logger = logging.getLogger(__name__)

NO_TASKS = "no tasks are waiting"
"""The answer to a lease when no task is there at all (not one held back for a moment)."""

CANDIDATES_PER_LEASE = 64
MAX_CACHED_REPORTED = 256
# Downloads smaller than this say more about latency than about bandwidth.
MIN_RATE_SAMPLE_BYTES = 1 << 20
# How many versions back a worker may be and still catch up from deltas, not full parameters.
MAX_PARAM_DELTAS = 8


@dataclass(frozen=True, kw_only=True)
class Submission:
    """What a checked result header refers to."""

    task_id: str
    kind: str
    job_id: str
    param_shapes: dict[str, tuple[int, ...]]
    policy: CompressionPolicy
    max_bytes: int
    decided: str | None = None
    """Why the result will be ignored (already accepted, round closed), if it will."""


class TaskService:
    def __init__(
        self,
        db: Database,
        policy: LeasePolicy,
        blobs: BlobStore,
        ledger: Ledger,
        *,
        worker_online_s: float = 30.0,
        on_result_accepted: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._policy = policy
        self._blobs = blobs
        self._ledger = ledger
        self._worker_online_s = worker_online_s
        self._on_result_accepted = on_result_accepted

    # -- leasing ---------------------------------------------------------------------------

    def lease(
        self, worker_id: str, cached: Sequence[str] = (), now: float | None = None
    ) -> m.LeaseTaskResponse:
        now = time.time() if now is None else now
        with self._db.transaction() as session:
            held = session.scalars(
                select(Lease).where(
                    Lease.worker_id == worker_id, Lease.outcome == LeaseOutcome.ACTIVE.value
                )
            ).first()
            if held is not None:  # the worker lost our answer: hand out the same task again
                held.deadline = self._policy.deadline(
                    held.leased_at, now, _limit(held.leased_at, held.expires_by)
                )
                task = session.get_one(Task, held.task_id)
                task.lease_deadline = held.deadline
                return m.LeaseTaskResponse(task=self._describe(session, task, held.deadline))

            worker = session.get_one(Worker, worker_id)
            holds = sorted({check_sha256(sha) for sha in cached[:MAX_CACHED_REPORTED]})
            if cached and holds != (worker.cached_sha256s or []):
                worker.cached_sha256s = holds
            in_rounds = set(
                session.scalars(
                    select(Lease.round_id)
                    .join(Task, Task.id == Lease.task_id)
                    .where(
                        Lease.worker_id == worker_id,
                        Task.kind == "train",
                        Lease.outcome.in_(
                            [LeaseOutcome.ACTIVE.value, LeaseOutcome.SUBMITTED.value]
                        ),
                    )
                )
            )
            assigned = worker.assigned_job_id
            candidates = session.scalars(
                select(Task)
                .join(Round, Round.id == Task.round_id)
                .join(Job, Job.id == Task.job_id)
                .where(
                    Task.status == TaskStatus.PENDING.value,
                    Round.status == RoundStatus.OPEN.value,
                    Job.status == JobStatus.RUNNING.value,
                )
                .order_by(
                    case((Task.job_id == (assigned or ""), 0), else_=1),
                    Job.created_at,
                    Task.round_index,
                    Task.index,
                )
                .limit(CANDIDATES_PER_LEASE)
                .with_for_update(skip_locked=True, of=Task)
            )
            waiting = False
            for task in candidates:
                job = session.get_one(Job, task.job_id)
                if job.memory_bytes > worker.hardware.get("memory_bytes", 0) > 0:
                    continue  # the task would not fit this worker's memory
                # A worker's own job comes first; another job's task is open to it only once
                # that job's workers have left it alone (the same rule as a second task).
                foreign = assigned is not None and task.job_id != assigned
                if not self._policy.may_take(
                    attempts=task.attempts,
                    available_since=task.available_since,
                    now=now,
                    # Evaluations are open to anyone: they add no update to the round.
                    worker_in_round=foreign
                    or (task.kind == "train" and task.round_id in in_rounds),
                ):
                    waiting = True
                    continue
                if task.kind == "train" and task.inner_steps is None:
                    ready = self._assign_data(session, task, worker, now)
                    if ready is None:
                        waiting = True
                        continue
                    if not ready:
                        continue
                limit_s = self._lease_limit_s(session, task, job, worker)
                deadline = self._policy.deadline(now, now, limit_s)
                task.status = TaskStatus.LEASED.value
                task.worker_id = worker_id
                task.lease_deadline = deadline
                session.add(
                    Lease(
                        task_id=task.id,
                        round_id=task.round_id,
                        worker_id=worker_id,
                        leased_at=now,
                        deadline=deadline,
                        expires_by=now + min(limit_s, self._policy.max_task_s),
                        outcome=LeaseOutcome.ACTIVE.value,
                        bytes_down=0,
                        bytes_up=0,
                    )
                )
                logger.info(
                    "task %s (job %s round %d) leased to worker %s, attempt %d, %s",
                    task.id,
                    task.job_id,
                    task.round_index,
                    worker_id,
                    task.attempts + 1,
                    f"{task.inner_steps} inner steps" if task.kind == "train" else "evaluation",
                )
                return m.LeaseTaskResponse(task=self._describe(session, task, deadline))
        if waiting:
            return m.LeaseTaskResponse(
                retry_after_s=1.0, reason="waiting for other workers to take the rest of this round"
            )
        return m.LeaseTaskResponse(retry_after_s=2.0, reason=NO_TASKS)

    def _assign_data(self, session: Session, task: Task, worker: Worker, now: float) -> bool | None:
        """Size a train task for `worker` and cut its data span.

        True when the task is ready; None when no data is free right now (other tasks hold
        the rest, which may come back); False when the job's data is used up, and the task,
        which will never have any, is cancelled.
        """
        job = session.get_one(Job, task.job_id, with_for_update=True, populate_existing=True)
        spec = JobSpec(**job.spec)
        # Sizing compares measured speeds only: a join benchmark can be off by several times
        # from training throughput, so a worker not measured yet gets `inner_steps`.
        reference = self._reference_speed(session, job, now)
        round_ = session.get_one(Round, task.round_id)
        previous = session.scalars(
            select(Round).where(Round.job_id == job.id, Round.index == round_.index - 1)
        ).first()
        left = round_time_left(
            elapsed_s=now - round_.opened_at,
            round_s=(previous.closed_at or 0.0) - previous.opened_at if previous else None,
        )
        steps = inner_steps_for(spec, worker.flops_per_s, reference, time_left=left)
        held = set(worker.cached_sha256s or [])
        prefer = frozenset(i for i, sha in enumerate(job.shard_sha256s) if sha in held)
        rows = spans.cut(session, job, self._blobs, task.id, steps * spec.batch_size, prefer)
        if rows:
            task.shard_index = rows[0].shard
            task.inner_steps = -(-sum(r.stop - r.start for r in rows) // spec.batch_size)
            return True
        if spans.data_done(session, job, self._blobs):
            task.status = TaskStatus.CANCELLED.value
            logger.info("task %s (job %s): the job's data is used up; cancelled", task.id, job.id)
            return False
        return None

    def _reference_speed(self, session: Session, job: Job, now: float) -> float | None:
        """The median measured training speed of the job's online workers."""
        return reference_speed(
            session.scalars(
                select(Worker.flops_per_s).where(
                    Worker.assigned_job_id == job.id,
                    is_online(now, self._worker_online_s),
                )
            )
        )

    def _lease_limit_s(self, session: Session, task: Task, job: Job, worker: Worker) -> float:
        """How long this worker may hold this task at most: from its speed and download rate."""
        spec = JobSpec(**job.spec)
        tokens = round(_task_samples(task, spec, session) * (job.tokens_per_sample or 0.0))
        flops = task_flops(spec, job.num_model_params, tokens, kind=task.kind)
        held = set(worker.cached_sha256s or [])
        needed = [*(job.base_sha256s or []), job.model_config_sha256]
        needed.append(
            job.shard_sha256s[task.shard_index] if task.kind == "train" else job.heldout_sha256
        )
        round_ = session.get_one(Round, task.round_id)
        needed.append(round_.worker_params_sha256)
        download = sum(self._size(sha) for sha in needed if sha not in held)
        expected = expected_task_s(
            flops,
            effective_flops_per_s(worker.flops_per_s, worker.hardware.get("flops_per_s", 0)),
            download_bytes=download,
            download_bytes_per_s=worker.download_bytes_per_s,
        )
        return lease_limit_s(expected, self._policy.max_task_s)

    def _size(self, sha256: str) -> int:
        try:
            return self._blobs.size(sha256)
        except NotFoundError:
            return 0

    def _describe(self, session: Session, task: Task, deadline: float) -> m.Task:
        job = session.get_one(Job, task.job_id)
        round_ = session.get_one(Round, task.round_id)
        spec = JobSpec(**job.spec)
        header = {
            "task_id": task.id,
            "job_id": job.id,
            "round": task.round_index,
            "version": round_.index,
            "lease_deadline_unix_s": deadline,
        }
        recipe = _recipe(spec)
        broadcast_policy = m.CompressionPolicy(**spec.broadcast_policy().to_dict())
        if task.kind == "evaluate":
            return m.Task(
                **header,
                max_result_bytes=0,
                evaluate=m.EvaluateTask(
                    model_config_sha256=job.model_config_sha256,
                    # The workers' copy of the version (rebuilt from broadcast deltas, so the
                    # evaluating worker downloads little): the job's result is built from it too.
                    params_sha256=round_.worker_params_sha256,
                    base_sha256s=list(job.base_sha256s or []),
                    data_sha256=job.heldout_sha256,
                    recipe=recipe,
                    batch_size=spec.eval_batch_size,
                    max_examples=spec.eval_examples,
                    seq_len=spec.seq_len,
                    broadcast_policy=broadcast_policy,
                    param_deltas=_param_deltas(session, round_),
                ),
            )
        rows = spans.of_task(session, task.id)
        steps = task.inner_steps or spec.inner_steps
        return m.Task(
            **header,
            max_result_bytes=_max_result_bytes(job, spec),
            train=m.TrainTask(
                model_config_sha256=job.model_config_sha256,
                params_sha256=round_.worker_params_sha256,
                tokens_sha256=job.shard_sha256s[rows[0].shard],
                inner_steps=steps,
                batch_size=spec.batch_size,
                seq_len=spec.seq_len,
                learning_rate=float(spec.inner_lr or 0.0),
                weight_decay=spec.weight_decay,
                max_grad_norm=spec.max_grad_norm,
                warmup_steps=min(spec.warmup_steps, steps),
                seed=task.seed,
                update_policy=m.CompressionPolicy(**spec.update_policy().to_dict()),
                broadcast_policy=broadcast_policy,
                param_deltas=_param_deltas(session, round_),
                base_sha256s=list(job.base_sha256s or []),
                recipe=recipe,
                sample_indices=spans.indices(job, self._blobs, rows),
                keep_inner_state=spec.inner_state == "worker",
                peer_averaging=m.PeerAveraging(
                    group_size=round_.num_train_tasks or spec.min_clients,
                    timeout_s=spec.peer_timeout_s,
                    group_key=_group_key(job, round_),
                )
                if spec.data_plane == "hivemind"
                else None,
            ),
        )

    # -- peer averaging --------------------------------------------------------------------

    def find_peers(self, worker_id: str, task_id: str, addrs: Sequence[str]) -> list[str]:
        """Record where the worker holding `task_id` listens for peer averaging (when `addrs`
        is not empty) and return where the other workers of its round said they listen."""
        _check_peer_addrs(addrs)
        with self._db.transaction() as session:
            task = session.get(Task, task_id)
            if task is None:
                raise NotFoundError(f"no task {task_id!r}")
            if _active_lease(session, task.id, worker_id) is None:
                raise PermissionDeniedError(f"task {task.id} is not leased to you")
            data_plane = JobSpec(**session.get_one(Job, task.job_id).spec).data_plane
            if task.kind != "train" or data_plane != "hivemind":
                raise ProtocolError(
                    f"task {task.id} does not average with peers (a {task.kind} task of a job "
                    f"whose data_plane is {data_plane!r})"
                )
            if addrs:
                task.peer_addrs = list(addrs)
            others = session.scalars(
                select(Task.peer_addrs).where(
                    Task.round_id == task.round_id,
                    Task.id != task.id,
                    Task.status == TaskStatus.LEASED.value,
                    Task.peer_addrs.is_not(None),
                )
            )
            return [addr for listed in others for addr in listed or []]

    # -- keeping leases alive --------------------------------------------------------------

    def heartbeat(
        self, worker_id: str, task_ids: list[str], now: float | None = None
    ) -> tuple[list[str], list[str]]:
        """Extend the worker's active leases named in `task_ids`; return (extended, revoked)."""
        now = time.time() if now is None else now
        extended, revoked = [], []
        with self._db.transaction() as session:
            for task_id in task_ids[:16]:
                lease = _active_lease(session, task_id, worker_id)
                if lease is None:
                    revoked.append(task_id)
                    continue
                lease.deadline = self._policy.deadline(
                    lease.leased_at, now, _limit(lease.leased_at, lease.expires_by)
                )
                session.get_one(Task, task_id).lease_deadline = lease.deadline
                extended.append(task_id)
        return extended, revoked

    def record_download(self, worker_id: str, num_bytes: int, seconds: float) -> None:
        """Charge downloaded bytes to the worker's active lease, and measure its download rate."""
        with self._db.transaction() as session:
            session.execute(
                update(Lease)
                .where(
                    Lease.worker_id == worker_id,
                    Lease.outcome == LeaseOutcome.ACTIVE.value,
                )
                .values(bytes_down=Lease.bytes_down + num_bytes)
            )
            if num_bytes >= MIN_RATE_SAMPLE_BYTES and seconds > 0:
                worker = session.get(Worker, worker_id)
                if worker is not None:
                    worker.download_bytes_per_s = update_ema(
                        worker.download_bytes_per_s, num_bytes / seconds
                    )

    def forgive_leases(self, now: float | None = None) -> int:
        """At start-up: give every active lease a fresh `ttl_s`, so that workers who kept
        computing while the coordinator was down can heartbeat and submit instead of losing
        their work to an expiry they could not prevent. Returns how many leases."""
        now = time.time() if now is None else now
        with self._db.transaction() as session:
            leases = list(
                session.scalars(select(Lease).where(Lease.outcome == LeaseOutcome.ACTIVE.value))
            )
            for lease in leases:
                lease.deadline = max(
                    lease.deadline,
                    self._policy.deadline(
                        lease.leased_at, now, _limit(lease.leased_at, lease.expires_by)
                    ),
                )
                session.get_one(Task, lease.task_id).lease_deadline = lease.deadline
        return len(leases)

    def expire_leases(self, now: float | None = None) -> int:
        """Return tasks whose lease deadline passed to the pending pool; returns how many."""
        now = time.time() if now is None else now
        with self._db.transaction() as session:
            expired = list(
                session.scalars(
                    select(Lease)
                    .where(
                        Lease.outcome == LeaseOutcome.ACTIVE.value,
                        Lease.deadline < now,
                    )
                    .with_for_update(skip_locked=True)
                )
            )
            for lease in expired:
                self._end_lease(session, lease, LeaseOutcome.EXPIRED, now)
                logger.warning(
                    "lease of task %s by worker %s expired; the task is pending again",
                    lease.task_id,
                    lease.worker_id,
                )
        return len(expired)

    def hand_back(self, worker_id: str, request: m.ReportFailureRequest) -> None:
        """The worker gives its task back; it becomes pending again at once."""
        with self._db.transaction() as session:
            if session.get(Task, request.task_id) is None:
                raise NotFoundError(f"no task {request.task_id!r}")
            lease = _active_lease(session, request.task_id, worker_id)
            if lease is None:
                raise PermissionDeniedError(
                    f"task {request.task_id} is not leased to you (it may have expired)"
                )
            self._end_lease(session, lease, LeaseOutcome.HANDED_BACK, time.time())
            if request.kind is m.FailureKind.OUT_OF_MEMORY:
                self._offer_smaller_work(session, worker_id, request.task_id)
        logger.info(
            "worker %s handed back task %s (%s): %s",
            worker_id,
            request.task_id,
            request.kind.name.lower(),
            request.message[:200],
        )

    @staticmethod
    def _offer_smaller_work(session: Session, worker_id: str, task_id: str) -> None:
        """A worker ran out of memory on a task: count it as having less than that job needs,
        so placement gives it smaller jobs from now on (until it registers again)."""
        worker = session.get(Worker, worker_id, with_for_update=True)
        job = session.get(Job, session.get_one(Task, task_id).job_id)
        if worker is None or job is None or not job.memory_bytes:
            return
        hardware = dict(worker.hardware or {})
        offered = int(hardware.get("memory_bytes", 0))
        if offered == 0 or offered >= job.memory_bytes:
            hardware["memory_bytes"] = max(1, int(job.memory_bytes) - 1)
            worker.hardware = hardware
            logger.warning(
                "worker %s ran out of memory on job %s (needs about %.1f GB): it gets only "
                "smaller jobs until it registers again",
                worker_id,
                job.id,
                job.memory_bytes / 1e9,
            )

    def _end_lease(self, session: Session, lease: Lease, outcome: LeaseOutcome, now: float) -> None:
        lease.outcome = outcome.value
        lease.ended_at = now
        task = session.get_one(Task, lease.task_id, with_for_update=True)
        if task.status == TaskStatus.LEASED.value and task.worker_id == lease.worker_id:
            round_ = session.get_one(Round, task.round_id)
            if round_.status == RoundStatus.OPEN.value:
                task.status = TaskStatus.PENDING.value
                task.available_since = now
            else:  # a late task of a closed round: nobody else will run it
                task.status = TaskStatus.CANCELLED.value
                spans.release(session, task.id)
            task.worker_id = None
            task.lease_deadline = None
            task.peer_addrs = None  # where the worker that left listened
            task.attempts += 1
        worker = session.get(Worker, lease.worker_id)
        if worker is not None and outcome is not LeaseOutcome.HANDED_BACK:
            worker.tasks_failed += 1

    # -- results ---------------------------------------------------------------------------

    def check_submission(self, worker_id: str, header: m.ResultHeader) -> Submission:
        """Reject a result before its payload is read: unknown task, not yours, too large."""
        with self._db.read() as session:
            task = session.get(Task, header.task_id)
            if task is None:
                raise NotFoundError(f"no task {header.task_id!r}")
            ever_leased = session.scalars(
                select(Lease.id).where(Lease.task_id == task.id, Lease.worker_id == worker_id)
            ).first()
            if ever_leased is None:
                raise PermissionDeniedError(f"task {task.id} was never leased to you")
            job = session.get_one(Job, task.job_id)
            spec = JobSpec(**job.spec)
            limit = 0 if task.kind == "evaluate" else _max_result_bytes(job, spec)
            if header.payload_size > limit:
                raise MessageTooLargeError(
                    f"result of {header.payload_size} bytes exceeds this task's limit of {limit}"
                )
            decided = _ignore_reason(task, session.get_one(Round, task.round_id), job)
            if decided is None:  # an ignored result's metrics need not match a task that ended
                _check_metrics(task, spec, header.metrics, _task_samples(task, spec, session))
                _check_group(session, task, spec, header)
            return Submission(
                task_id=task.id,
                kind=task.kind,
                job_id=job.id,
                param_shapes={n: tuple(s) for n, s in job.param_shapes.items()},
                policy=spec.update_policy(),
                # A group member deferring to its leader's payload sends metrics only, as an
                # evaluation does (`_check_group` saw to its size).
                max_bytes=0 if header.group_payload_task_id else limit,
                decided=decided,
            )

    def accept_result(
        self, worker_id: str, header: m.ResultHeader, result_sha256: str
    ) -> m.SubmitResultResponse:
        """Record a verified result once; late and duplicate results are acknowledged, ignored."""
        now = time.time()
        with self._db.transaction() as session:
            task = session.get_one(Task, header.task_id, with_for_update=True)
            leases = list(
                session.scalars(select(Lease).where(Lease.task_id == task.id).order_by(Lease.id))
            )
            mine = [lease for lease in leases if lease.worker_id == worker_id]
            mine[-1].bytes_up += header.payload_size
            round_ = session.get_one(Round, task.round_id)
            job = session.get_one(Job, task.job_id)
            reason = _ignore_reason(task, round_, job)
            if reason is not None:
                return m.SubmitResultResponse(accepted=False, message=reason)
            spec = JobSpec(**job.spec)
            group: dict[str, Any] = {}
            if header.group_payload_task_id:
                _check_group_payload(session, task, header.group_payload_task_id)
                group = {"covered_by": header.group_payload_task_id}
            elif header.group_task_ids:
                group = {"group": list(header.group_task_ids)}
            task.status = TaskStatus.ACCEPTED.value
            task.result_sha256 = None if header.group_payload_task_id else result_sha256
            task.metrics = {**asdict(header.metrics), "worker_id": worker_id, **group}
            task.accepted_at = now
            task.worker_id = worker_id
            task.lease_deadline = None
            for lease in leases:
                if lease.outcome == LeaseOutcome.ACTIVE.value or lease is mine[-1]:
                    lease.outcome = (
                        LeaseOutcome.SUBMITTED if lease is mine[-1] else LeaseOutcome.SUPERSEDED
                    ).value
                    lease.ended_at = now
            spans.consume(session, task.id)
            worker = session.get_one(Worker, worker_id)
            worker.tasks_accepted += 1
            worker.valid_streak += 1
            tokens = header.metrics.tokens
            if task.kind == "evaluate":
                tokens = round(header.metrics.examples * (job.tokens_per_sample or 0.0))
            flops = task_flops(spec, job.num_model_params, tokens, kind=task.kind)
            task.credits = micro_credits(flops)
            self._ledger.accrue(
                session, task, worker.account_id or worker_account(worker.id), task.credits
            )
            if task.kind == "train" and header.metrics.compute_s > 0:
                speed = flops / max(header.metrics.compute_s, 1e-3)
                worker.flops_per_s = update_ema(worker.flops_per_s, speed)
        metrics = header.metrics
        logger.info(
            "task %s (job %s round %d) accepted from worker %s%s: %s",
            task.id,
            task.job_id,
            task.round_index,
            worker_id,
            " after its round closed" if round_.status != RoundStatus.OPEN.value else "",
            f"held-out loss {metrics.eval_loss:.4f}"
            if task.kind == "evaluate"
            else f"loss {metrics.loss_first:.4f} -> {metrics.loss_last:.4f}",
        )
        self._on_result_accepted()
        return m.SubmitResultResponse(accepted=True, message="result accepted")


def _limit(leased_at: float, expires_by: float | None) -> float | None:
    return None if expires_by is None else expires_by - leased_at


def _task_samples(task: Task, spec: JobSpec, session: Session) -> int:
    """Samples a task covers: its span for train tasks, the evaluation size otherwise."""
    if task.kind == "evaluate":
        return spec.eval_examples
    if task.inner_steps is None:
        return spec.inner_steps * spec.batch_size
    return sum(r.stop - r.start for r in spans.of_task(session, task.id))


def _recipe(spec: JobSpec) -> m.Recipe:
    adapter = spec.adapter_config()
    return m.Recipe(
        objective=spec.method,
        dpo_beta=spec.dpo_beta,
        adapter=m.Adapter(
            kind=adapter.kind,
            rank=adapter.rank,
            alpha=adapter.alpha,
            dropout=adapter.dropout,
            target_modules=list(adapter.target_modules),
        ),
    )


def _check_metrics(task: Task, spec: JobSpec, metrics: m.TaskMetrics, num_samples: int) -> None:
    """Metrics must describe the work the task asked for."""
    if task.kind == "evaluate":
        if metrics.steps != 0 or not 1 <= metrics.examples <= spec.eval_examples:
            raise ProtocolError(
                f"an evaluation reports 0 steps and 1 to {spec.eval_examples} examples; got "
                f"{metrics.steps} steps and {metrics.examples} examples"
            )
        if not (
            math.isfinite(metrics.eval_loss)
            and metrics.eval_loss >= 0
            and math.isfinite(metrics.reward_margin)
            and 0 <= metrics.token_accuracy <= 1
            and 0 <= metrics.reward_accuracy <= 1
        ):
            raise ProtocolError(
                "evaluation metrics must be finite, the loss non-negative and accuracies in [0, 1]"
            )
        return
    bound = max_tokens_per_task(spec, num_samples)
    exact = spec.method == "lm"
    steps = task.inner_steps or spec.inner_steps
    if metrics.steps != steps or not (
        metrics.tokens == bound if exact else 0 < metrics.tokens <= bound
    ):
        raise ProtocolError(
            f"metrics claim {metrics.tokens} tokens in {metrics.steps} steps; task {task.id} "
            f"trains {'exactly' if exact else 'at most'} {bound} tokens in {steps} steps"
        )


def _group_key(job: Job, round_: Round) -> str:
    """The round's matchmaking name for peer averaging: derived from the version the round
    trains, which only workers handed one of its tasks are told, so outsiders who know the job id
    cannot find the group (every coordinator derives the same one)."""
    seed = f"swarm.v1/group\x00{job.id}\x00{round_.index}\x00{round_.worker_params_sha256}"
    return hashlib.sha256(seed.encode()).hexdigest()[:32]


MAX_PEER_ADDRS = 8
MAX_PEER_ADDR_CHARS = 256


_MULTIADDR = re.compile(r"(/[\w.:\-\[\]]+)+/p2p/[1-9A-HJ-NP-Za-km-z]{32,64}")
"""A transport multiaddr ending in a peer id (base58), as hivemind prints them."""


def _check_peer_addrs(addrs: Sequence[str]) -> None:
    if len(addrs) > MAX_PEER_ADDRS:
        raise ProtocolError(f"at most {MAX_PEER_ADDRS} peer addresses, got {len(addrs)}")
    for addr in addrs:
        if not (len(addr) <= MAX_PEER_ADDR_CHARS and _MULTIADDR.fullmatch(addr)):
            raise ProtocolError(
                f"a peer address is a multiaddr of at most {MAX_PEER_ADDR_CHARS} characters such "
                f"as /ip4/203.0.113.7/tcp/31337/p2p/Qm...; got {addr[:80]!r}"
            )


def _check_group(session: Session, task: Task, spec: JobSpec, header: m.ResultHeader) -> None:
    """A result that speaks for a peer group: the job averages with peers, and the group is
    tasks of this task's round (its own among them) or names one such task as its payload."""
    if not (header.group_task_ids or header.group_payload_task_id):
        return
    if task.kind != "train" or spec.data_plane != "hivemind":
        raise ProtocolError(
            f"task {task.id} does not average with peers; send its result without group fields"
        )
    if header.group_payload_task_id:
        if header.group_task_ids or header.payload_size:
            raise ProtocolError(
                "a result that defers to its group's payload carries no payload and no group"
            )
        if header.group_payload_task_id == task.id:
            raise ProtocolError("a result cannot defer to itself")
        return
    ids = header.group_task_ids
    round_size = session.get_one(Round, task.round_id).num_train_tasks or spec.max_clients
    if len(ids) > round_size:
        raise ProtocolError(f"a group of {len(ids)} tasks in a round of {round_size}")
    if len(set(ids)) != len(ids) or task.id not in ids:
        raise ProtocolError("group_task_ids lists each task of the group once, this one among them")
    found = session.scalar(
        select(func.count())
        .select_from(Task)
        .where(Task.id.in_(ids), Task.round_id == task.round_id, Task.kind == "train")
    )
    if found != len(ids):
        raise ProtocolError(
            f"group_task_ids names {len(ids) - (found or 0)} task(s) that are not train tasks of "
            f"round {task.round_index}"
        )


def _check_group_payload(session: Session, task: Task, leader_id: str) -> None:
    """The group's payload is in and speaks for `task`.

    Raises:
        NotFoundError: not yet, while the leader's worker still holds its task (it may be
            uploading): the member asks again.
        SchedulingError: it will not come (the leader's task is gone, elsewhere, or its result
            does not list `task`): the member submits its own update.
    """
    leader = session.get(Task, leader_id)
    if leader is not None and leader.round_id == task.round_id:
        if leader.status == TaskStatus.LEASED.value:
            raise NotFoundError(
                f"task {leader_id}'s result, which averages task {task.id}, is not in yet; "
                "its worker is still on it: ask again"
            )
        if (
            leader.status == TaskStatus.ACCEPTED.value
            and leader.result_sha256 is not None
            and task.id in (leader.metrics or {}).get("group", [])
        ):
            return
    raise SchedulingError(
        f"no result of task {leader_id} will speak for task {task.id} (it is not a task of "
        "this round held by a worker, or its result does not list this one): submit this "
        "task's own update"
    )


def _ignore_reason(task: Task, round_: Round, job: Job) -> str | None:
    """Why a result for `task` would be acknowledged but ignored, or None if it would count."""
    if task.status == TaskStatus.ACCEPTED.value:
        return f"task {task.id} already has an accepted result; yours was ignored"
    if task.status == TaskStatus.CANCELLED.value:
        return f"task {task.id} was cancelled (its round closed without it); result ignored"
    if job.status != JobStatus.RUNNING.value:
        return f"job {job.id} is {job.status}; result ignored"
    if round_.status != RoundStatus.OPEN.value:
        late_kept = (
            task.kind == "train"
            and task.status == TaskStatus.LEASED.value
            and JobSpec(**job.spec).late_updates == "stale"
        )
        if not late_kept:
            return f"round {round_.index} of job {job.id} is no longer open; result ignored"
    return None


def _active_lease(session: Session, task_id: str, worker_id: str) -> Lease | None:
    return session.scalars(
        select(Lease).where(
            Lease.task_id == task_id,
            Lease.worker_id == worker_id,
            Lease.outcome == LeaseOutcome.ACTIVE.value,
        )
    ).first()


def _max_result_bytes(job: Job, spec: JobSpec) -> int:
    return payload_size_bound(
        {n: tuple(s) for n, s in job.param_shapes.items()}, spec.update_policy()
    )


def _param_deltas(session: Session, round_: Round) -> list[m.ParamDelta]:
    """The deltas of the last `MAX_PARAM_DELTAS` versions up to this round's, oldest first.

    Every round but the first of a job has a delta (rounds from before deltas existed come
    first), so the run is unbroken and ends at this version.
    """
    rounds = session.scalars(
        select(Round)
        .where(
            Round.job_id == round_.job_id,
            Round.index > round_.index - MAX_PARAM_DELTAS,
            Round.index <= round_.index,
            Round.delta_sha256.is_not(None),
        )
        .order_by(Round.index)
    )
    return [
        m.ParamDelta(
            version=r.index,
            delta_sha256=r.delta_sha256 or "",
            size_bytes=r.delta_bytes or 0,
            params_sha256=r.worker_params_sha256,
        )
        for r in rounds
    ]
