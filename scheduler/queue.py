"""The job queue: who goes first, and when a queued job starts.

Queued jobs are ordered by priority, then by their owner's credit balance (fair share: owners
who have spent less of what they earned or were given go first), then by age. Research jobs,
paid from the research pool, come after every other job and start only when the swarm would
otherwise idle. A job starts when the online workers cover the minimums of the running jobs and
its own; the head of the queue starts on an idle swarm however few workers there are, and waits
for them there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class QueuedJob:
    id: str
    priority: int
    research: bool
    owner_balance: int
    queued_at: float
    min_workers: int
    estimated_credits: int
    memory_bytes: int = 0
    """What one of its tasks needs; a job no online worker can hold does not start."""


@dataclass(frozen=True, kw_only=True)
class RunningJob:
    id: str
    min_workers: int
    research: bool


@dataclass(frozen=True, kw_only=True)
class Admission:
    start: list[str]
    """Jobs to start now, in order."""
    waiting: dict[str, str]
    """Queued job id -> why it has not started."""


def queue_order(jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    return sorted(
        jobs, key=lambda j: (j.research, -j.priority, -j.owner_balance, j.queued_at, j.id)
    )


def admit(
    queued: Sequence[QueuedJob],
    running: Sequence[RunningJob],
    num_workers: int,
    *,
    require_credits: bool = False,
    largest_memory_bytes: int | None = None,
) -> Admission:
    """Which queued jobs start now, given the running ones and the online workers.

    `largest_memory_bytes` is the most memory any online worker has (None: unknown); a job
    that needs more waits, without holding back the jobs behind it.

    Research jobs do not hold workers against other jobs (placement takes theirs first), so
    only the minimums of other running jobs count against a non-research job.
    """
    reserved = sum(job.min_workers for job in running if not job.research)
    reserved_research = sum(job.min_workers for job in running if job.research)
    start: list[str] = []
    waiting: dict[str, str] = {}
    blocked = False
    for job in queue_order(queued):
        if require_credits and job.owner_balance < job.estimated_credits:
            waiting[job.id] = "waiting for credits: the owner's balance is below the estimate"
            continue
        if largest_memory_bytes is not None and job.memory_bytes > largest_memory_bytes:
            waiting[job.id] = (
                f"waiting for a worker with {job.memory_bytes / 2**30:.1f} GiB of memory: the "
                f"largest online has {largest_memory_bytes / 2**30:.1f} GiB"
            )
            continue
        if blocked:
            waiting[job.id] = "waiting for the jobs ahead of it"
            continue
        free = num_workers - reserved - (reserved_research if job.research else 0)
        # The head of the queue starts on an idle swarm, however few workers are online (it
        # waits for them there); running research jobs leave the swarm idle for other jobs.
        idle = not start and all(r.research and not job.research for r in running)
        if idle or free >= job.min_workers:
            start.append(job.id)
            if job.research:
                reserved_research += job.min_workers
            else:
                reserved += job.min_workers
            continue
        waiting[job.id] = (
            "research job: waits for idle workers"
            if job.research
            else f"waiting for workers: {job.min_workers} needed, {max(free, 0)} free of "
            f"{num_workers} online"
        )
        blocked = True
    return Admission(start=start, waiting=waiting)
