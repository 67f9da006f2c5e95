"""Placement: which running job each online worker trains for.

A pure function of what the coordinator knows: each worker's memory, measured speed, the blobs
it holds and the job it is on now; each job's memory need, worker range and the blobs its
workers download. Rules, in order:

1. A worker only goes to a job whose tasks fit its memory.
2. A worker stays on its job while the job wants it (moving costs a download of the new job's
   weights and data).
3. Jobs are filled to their minimum in queue order, taking the workers that already hold the
   most of a job's blobs, then the fastest (compute, then download rate); a job short of its
   minimum may take workers from a later job that has more than its own minimum, or from a
   research job (which yields).
4. The remaining workers spread over the jobs below their maximum, fewest workers first,
   preferring the job whose blobs the worker holds.

Rules 3 and 4 repeat until nothing moves: spreading can leave a later job a worker to spare
for an earlier one still short of its minimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    id: str
    memory_bytes: int
    """0 when unknown: assumed to fit."""
    speed: float | None = None
    """Effective training FLOP/s (see `swarm.scheduler.work.effective_flops_per_s`)."""
    download_bytes_per_s: float | None = None
    """Measured on its downloads; a tie-breaker between equally fast workers."""
    cached: frozenset[str] = frozenset()
    assigned: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobDemand:
    id: str
    memory_bytes: int
    min_workers: int
    max_workers: int
    blobs: frozenset[str] = frozenset()
    """What a worker downloads to work on the job: base weights and data shards."""
    yields: bool = False
    """A research job: gives up workers, even below its minimum, to any other job."""


def fits(worker: WorkerInfo, job: JobDemand) -> bool:
    return worker.memory_bytes == 0 or job.memory_bytes <= worker.memory_bytes


def affinity(worker: WorkerInfo, job: JobDemand) -> float:
    """The share of the job's blobs the worker already holds."""
    return len(worker.cached & job.blobs) / len(job.blobs) if job.blobs else 0.0


def assign_workers(
    workers: Sequence[WorkerInfo], jobs: Sequence[JobDemand]
) -> dict[str, str | None]:
    """Worker id -> job id (None: no running job fits it). `jobs` come in queue order."""
    order = {job.id: i for i, job in enumerate(jobs)}
    by_id = {job.id: job for job in jobs}
    members: dict[str, list[WorkerInfo]] = {job.id: [] for job in jobs}
    free: list[WorkerInfo] = []

    def rank(worker: WorkerInfo, job: JobDemand) -> tuple[float, float, float]:
        return (
            -affinity(worker, job),
            -(worker.speed or 0.0),
            -(worker.download_bytes_per_s or 0.0),
        )

    def can_give(donor: JobDemand, job: JobDemand) -> bool:
        """Whether `donor` gives up a worker so that `job` reaches its minimum."""
        if donor.yields and not job.yields:
            return True
        return order[donor.id] > order[job.id] and len(members[donor.id]) > donor.min_workers

    # Rule 2: stay, up to the job's maximum (the fastest stay).
    for worker in sorted(workers, key=lambda w: -(w.speed or 0.0)):
        current = by_id.get(worker.assigned or "")
        if (
            current is not None
            and fits(worker, current)
            and len(members[current.id]) < current.max_workers
        ):
            members[current.id].append(worker)
        else:
            free.append(worker)

    def fill_minimums() -> None:
        """Rule 3: minimums in queue order, from free workers, then from donors."""
        for job in jobs:
            while len(members[job.id]) < job.min_workers:
                candidates = [w for w in free if fits(w, job)]
                if candidates:
                    chosen = min(candidates, key=lambda w: rank(w, job))
                    free.remove(chosen)
                else:
                    donors = [
                        (w, other)
                        for other in jobs
                        if can_give(other, job)
                        for w in members[other.id]
                        if fits(w, job)
                    ]
                    if not donors:
                        break
                    chosen, donor = min(donors, key=lambda pair: rank(pair[0], job))
                    members[donor.id].remove(chosen)
                members[job.id].append(chosen)

    def spread() -> None:
        """Rule 4: spread the free workers over the jobs below their maximum."""
        for worker in sorted(free, key=lambda w: -(w.speed or 0.0)):
            open_jobs = [
                job for job in jobs if fits(worker, job) and len(members[job.id]) < job.max_workers
            ]
            if open_jobs:
                job = min(
                    open_jobs,
                    key=lambda j: (len(members[j.id]), -affinity(worker, j), order[j.id]),
                )
                members[job.id].append(worker)
                free.remove(worker)

    # Spreading can give a later job a worker to spare for an earlier one still short, and
    # taking it can open a place for a worker left free: repeat until nothing moves.
    for _ in range(len(workers) + 1):
        before = {job_id: list(ids) for job_id, ids in members.items()}
        fill_minimums()
        spread()
        if members == before:
            break
    assignment: dict[str, str | None] = {worker.id: None for worker in free}
    for job_id, assigned in members.items():
        for worker in assigned:
            assignment[worker.id] = job_id
    return assignment
