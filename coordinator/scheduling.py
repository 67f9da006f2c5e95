"""The scheduler at work: start queued jobs, and place online workers on running ones.

Both are pure decisions (`swarm.scheduler.queue`, `swarm.scheduler.placement`) over a snapshot
read from the database, applied in one transaction. The housekeeper runs them every few
seconds; with several coordinators on one database, whichever runs them last wins, and every
decision is one a single coordinator could have made.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from swarm.coordinator.jobs import add_event
from swarm.coordinator.ledger import Ledger
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.storage import Database, Job, Worker
from swarm.coordinator.storage import online as is_online
from swarm.scheduler import (
    RESEARCH_POOL,
    Admission,
    JobDemand,
    JobSpec,
    JobStatus,
    QueuedJob,
    RunningJob,
    WorkerInfo,
    admit,
    assign_workers,
    format_credits,
    queue_order,
)
from swarm.scheduler.work import effective_flops_per_s

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class QueueEntry:
    job_id: str
    position: int
    """1 for the job that starts next."""
    reason: str


class Scheduler:
    def __init__(
        self,
        db: Database,
        rounds: RoundService,
        ledger: Ledger,
        *,
        worker_online_s: float,
        require_credits: bool = False,
    ) -> None:
        self._db = db
        self._rounds = rounds
        self._ledger = ledger
        self._worker_online_s = worker_online_s
        self._require_credits = require_credits

    def admit_jobs(self, now: float | None = None) -> list[str]:
        """Start the queued jobs that may start now; returns their ids."""
        now = time.time() if now is None else now
        with self._db.transaction() as session:
            queued, running, num_workers, largest = self._queue_state(session, now)
            if not queued:
                return []
            decision = admit(
                queued,
                running,
                num_workers,
                require_credits=self._require_credits,
                largest_memory_bytes=largest,
            )
            for job_id in decision.start:
                job = session.get_one(Job, job_id, with_for_update=True)
                if job.status != JobStatus.QUEUED.value:
                    continue
                self._rounds.start_job(session, job, now)
                add_event(
                    session,
                    job.id,
                    f"started: {num_workers} workers online; estimated "
                    f"{format_credits(job.estimated_credits)} credits",
                )
                logger.info("job %s started (%d workers online)", job.id, num_workers)
        return decision.start

    def queue(self, now: float | None = None) -> list[QueueEntry]:
        """The queued jobs in the order they will start, with why each is waiting."""
        now = time.time() if now is None else now
        with self._db.transaction() as session:
            queued, running, num_workers, largest = self._queue_state(session, now)
        decision: Admission = admit(
            queued,
            running,
            num_workers,
            require_credits=self._require_credits,
            largest_memory_bytes=largest,
        )
        return [
            QueueEntry(
                job_id=job.id,
                position=i + 1,
                reason="starting" if job.id in decision.start else decision.waiting[job.id],
            )
            for i, job in enumerate(queue_order(queued))
        ]

    def place_workers(self, now: float | None = None) -> dict[str, str | None]:
        """Assign every online worker to a running job (or none); returns the changes."""
        now = time.time() if now is None else now
        with self._db.transaction() as session:
            workers = list(
                session.scalars(select(Worker).where(is_online(now, self._worker_online_s)))
            )
            running = list(
                session.scalars(select(Job).where(Job.status == JobStatus.RUNNING.value))
            )
            if not workers:
                return {}
            balances = self._balances(session, running)
            ordered = queue_order([self._queued_view(j, balances) for j in running])
            by_id = {job.id: job for job in running}
            demands = [self._demand(by_id[q.id]) for q in ordered]
            assignment = assign_workers(
                [
                    WorkerInfo(
                        id=w.id,
                        memory_bytes=int(w.hardware.get("memory_bytes", 0)),
                        speed=effective_flops_per_s(
                            w.flops_per_s, float(w.hardware.get("flops_per_s", 0.0))
                        ),
                        download_bytes_per_s=w.download_bytes_per_s,
                        cached=frozenset(w.cached_sha256s or []),
                        assigned=w.assigned_job_id,
                    )
                    for w in workers
                ],
                demands,
            )
            changes = {
                w.id: assignment[w.id] for w in workers if assignment[w.id] != w.assigned_job_id
            }
            for worker_id, job_id in changes.items():
                session.execute(
                    update(Worker).where(Worker.id == worker_id).values(assigned_job_id=job_id)
                )
                logger.info("worker %s placed on %s", worker_id, job_id or "no job")
            # Workers that went offline (or were banned) hold no place.
            session.execute(
                update(Worker)
                .where(
                    ~is_online(now, self._worker_online_s),
                    Worker.assigned_job_id.is_not(None),
                )
                .values(assigned_job_id=None)
            )
        return changes

    # -- snapshots -------------------------------------------------------------------------

    def _queue_state(
        self, session: Session, now: float
    ) -> tuple[list[QueuedJob], list[RunningJob], int, int | None]:
        """Queued and running jobs, how many workers are online and the most memory one has
        (None when none is online, or one does not say: it might fit anything)."""
        jobs = list(
            session.scalars(
                select(Job).where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            )
        )
        balances = self._balances(session, jobs)
        queued = [
            self._queued_view(j, balances) for j in jobs if j.status == JobStatus.QUEUED.value
        ]
        running = [
            RunningJob(
                id=j.id,
                min_workers=JobSpec(**j.spec).min_clients,
                research=j.owner == RESEARCH_POOL,
            )
            for j in jobs
            if j.status == JobStatus.RUNNING.value
        ]
        memories = [
            int(hardware.get("memory_bytes", 0))
            for hardware in session.scalars(
                select(Worker.hardware).where(is_online(now, self._worker_online_s))
            )
        ]
        largest = None if not memories or 0 in memories else max(memories)
        return queued, running, len(memories), largest

    def _balances(self, session: Session, jobs: list[Job]) -> dict[str, int]:
        return {owner: self._ledger.balance(session, owner) for owner in {j.owner for j in jobs}}

    @staticmethod
    def _queued_view(job: Job, balances: dict[str, int]) -> QueuedJob:
        spec = JobSpec(**job.spec)
        return QueuedJob(
            id=job.id,
            priority=spec.priority,
            research=job.owner == RESEARCH_POOL,
            owner_balance=balances.get(job.owner, 0),
            queued_at=job.queued_at or job.created_at,
            min_workers=spec.min_clients,
            estimated_credits=job.estimated_credits,
            memory_bytes=job.memory_bytes,
        )

    @staticmethod
    def _demand(job: Job) -> JobDemand:
        spec = JobSpec(**job.spec)
        return JobDemand(
            id=job.id,
            memory_bytes=job.memory_bytes,
            min_workers=spec.min_clients,
            max_workers=spec.max_clients,
            blobs=frozenset([*(job.base_sha256s or []), *job.shard_sha256s]),
            yields=job.owner == RESEARCH_POOL,
        )
