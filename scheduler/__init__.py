"""Pure scheduling logic: job/round/task states, job specs, lease policy and round planning."""

from swarm.scheduler.jobs import (
    JobSpec,
    JobStatus,
    LeaseOutcome,
    RoundStatus,
    TaskStatus,
    check_job_move,
)
from swarm.scheduler.leases import LeasePolicy
from swarm.scheduler.rounds import (
    max_tokens_per_task,
    num_tasks_for_round,
    shard_for_task,
    task_seed,
)

__all__ = [
    "JobSpec",
    "JobStatus",
    "LeaseOutcome",
    "LeasePolicy",
    "RoundStatus",
    "TaskStatus",
    "check_job_move",
    "max_tokens_per_task",
    "num_tasks_for_round",
    "shard_for_task",
    "task_seed",
]
